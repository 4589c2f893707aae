"""Graded checks for exercises/12_performance_evaluation.ipynb.

References are the library's own functions: ``tinyllm.evaluate.perplexity_windows`` (the windows of strided
perplexity), ``time_calls`` (the timing harness) and ``measure_speed`` (medians and latency percentiles).

The harness is graded with a fake clock, never with real timings: ``fn``, ``clock`` and ``sync`` are
``functools.partial(next, it)`` over ONE shared iterator of increasing "times", so every call of any of them
consumes the next value. What the learner's harness returns then shows exactly which calls it made, in which
order; the reference runs the library's harness on an identical copy. A message names a mistake only when the
learner's results equal what that mistake gives on every call.

End to end: ``tinyllm.evaluate.perplexity`` of a small random Llama, with the learner's windows plugged in, must
equal the library's for three (window, stride) pairs.
"""
from __future__ import annotations

import functools

import numpy as np

from tinyllm.evaluate import measure_speed as lib_measure_speed
from tinyllm.evaluate import perplexity_windows as lib_windows
from tinyllm.evaluate import time_calls as lib_time_calls
from tinyllm.grading.core import Exercise, Fail, call, close, diagnose_cases, matches, value

rng = np.random.default_rng(1212)
EXERCISES: list[Exercise] = []

# --- the windows of strided perplexity ---------------------------------------------------------
ex = Exercise("perplexity_windows", "The windows of strided perplexity")


def _windows(n, window, stride, *, first_rule="new", last="stop", clip=True, start=1):
    """The library's windows, or a typical mistake's: ``first_rule`` "all" scores every target of each window,
    ``last`` "drop" leaves out a last window that would be cut short, "more" goes on past the end of the text,
    ``clip=False`` does not cut ``end`` at n, ``start=0`` scores token 0 too."""
    out, scored_to, begin = [], start, 0
    while scored_to < n and (last != "drop" or begin + window <= n or not out):
        end = min(begin + window, n) if clip else begin + window
        out.append((begin, end, begin + 1 if first_rule == "all" else max(scored_to, begin + (1 if start else 0))))
        scored_to = end
        begin += stride
    if last == "more":
        while begin < n - 1:
            out.append((begin, min(begin + window, n), max(scored_to, begin + 1)))
            begin += stride
    return out


WIN_MISTAKES = [
    ("the stride is ignored: window k starts at k * stride, so windows overlap when stride < window",
     lambda n, w, s: _windows(n, w, w)),
    ("every window scores all its tokens, so tokens in the overlap are scored twice: score only tokens no earlier "
     "window scored (first = the end of the previous window)", lambda n, w, s: _windows(n, w, s, first_rule="all")),
    ("the last window is missing when it would be shorter than `window`: cut it at n_tokens instead of leaving "
     "it out", lambda n, w, s: _windows(n, w, s, last="drop")),
    ("windows go on after one has reached the end of the text: stop once the last token is scored",
     lambda n, w, s: _windows(n, w, s, last="more")),
    ("a window ends past the text: end = min(begin + window, n_tokens)", lambda n, w, s: _windows(n, w, s, clip=False)),
    ("token 0 is scored: it has no context, scoring starts at token 1 (first >= begin + 1)",
     lambda n, w, s: _windows(n, w, s, start=0)),
]


def _as_triples(r, what):
    r = value(r, what)
    try:
        a = np.asarray(r)
    except (TypeError, ValueError):
        raise Fail(f"{what} returned {type(r).__name__}, expected a list of (begin, end, first) triples") from None
    if a.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if a.ndim != 2 or a.shape[1] != 3 or not (np.issubdtype(a.dtype, np.integer)
                                              or (np.issubdtype(a.dtype, np.floating) and np.all(a == np.round(a)))):
        raise Fail(f"{what} returned {type(r).__name__} of shape {a.shape}, expected a list of (begin, end, first) "
                   "triples of ints")
    return a.astype(np.int64)


def _judge_windows(cases):
    def judge(rs):
        gots = [_as_triples(r, f"perplexity_windows{c}") for c, r in zip(cases, rs)]
        wants = [np.asarray(lib_windows(*c), dtype=np.int64).reshape(-1, 3) for c in cases]
        bad = next((k for k, (g, w) in enumerate(zip(gots, wants)) if g.shape != w.shape or not np.array_equal(g, w)),
                   None)
        if bad is None:
            return
        what = f"perplexity_windows{cases[bad]}"
        for message, fn in WIN_MISTAKES:
            wrongs = [np.asarray(fn(*c), dtype=np.int64).reshape(-1, 3) for c in cases]
            if (any(x.shape != w.shape or not np.array_equal(x, w) for x, w in zip(wrongs, wants))
                    and all(x.shape == g.shape and np.array_equal(x, g) for x, g in zip(wrongs, gots))):
                raise Fail(f"{what}: {message}")
        g, w = gots[bad], wants[bad]
        if len(g) != len(w):
            raise Fail(f"{what} gives {len(g)} windows, expected {len(w)}: {w[:4].tolist()}"
                       + (" ..." if len(w) > 4 else ""))
        k = int(np.argmax(np.any(g != w, axis=1)))
        n, _, _ = cases[bad]
        scored = np.zeros(n, dtype=int)
        for b, e, f in g:
            scored[max(f, 0):max(min(e, n), 0)] += 1
        twice, never = np.flatnonzero(scored > 1), np.flatnonzero(scored[1:] == 0) + 1
        extra = (f"; token {int(twice[0])} is scored twice" if twice.size else
                 f"; token {int(never[0])} is never scored" if never.size else "")
        raise Fail(f"{what}: window {k} is {tuple(int(v) for v in g[k])}, expected {tuple(int(v) for v in w[k])}"
                   f"{extra}")
    return judge


WIN_DISJOINT = [(37, 8, 8), (64, 16, 16), (5, 8, 8)]
WIN_STRIDED = [(37, 8, 3), (100, 12, 7), (23, 16, 5), (41, 10, 4)]
WIN_EDGE = [(50, 10, 1), (2, 2, 1), (9, 4, 4), (6, 8, 2)]
ex.test("disjoint windows (stride = window), also a text shorter than a window", 1,
        [call(*c) for c in WIN_DISJOINT], _judge_windows(WIN_DISJOINT))
ex.test("overlapping windows score every token once", 3, [call(*c) for c in WIN_STRIDED], _judge_windows(WIN_STRIDED))
ex.test("stride 1, two tokens, an exact fit, a text shorter than the window", 1, [call(*c) for c in WIN_EDGE],
        _judge_windows(WIN_EDGE))
EXERCISES.append(ex)


# --- the timing harness -------------------------------------------------------------------------
def _fake(n_values: int, seed: int, spread: float = 1.0):
    """(fn, clock, sync) sharing one iterator of increasing times: each call of any of them takes the next value."""
    r = np.random.default_rng(seed)
    gaps = r.lognormal(np.log(2e-3), spread, n_values)                  # very different gaps: medians != means
    it = iter([float(t) for t in np.cumsum(gaps)])
    step = functools.partial(next, it)
    return step, step, step


def _time_variant(fn, repeat=5, warmup=1, *, clock, sync, mistake):
    """What the library's harness would return with one typical mistake."""
    if mistake == "warmup timed":
        return lib_time_calls(fn, repeat + warmup, 0, clock=clock, sync=sync)
    if mistake != "no warmup":
        for _ in range(warmup):
            sync(fn()) if mistake != "no sync" else fn()
    times = []
    t0 = clock() if mistake == "one start" else None
    for _ in range(repeat):
        if mistake != "one start":
            t0 = clock()
        r = fn()
        if mistake == "sync after clock":
            t1 = clock()
            sync(r)
        else:
            if mistake != "no sync":
                sync(r)
            t1 = clock()
        times.append(t1 - t0)
    return np.asarray(times)


TIME_MISTAKES = [
    ("no warmup", "the warm-up calls are missing: call sync(fn()) `warmup` times, untimed, before the timed calls"),
    ("warmup timed", "the warm-up calls were timed too: they pay one-off costs and must not be in the result; "
                     "return `repeat` times"),
    ("no sync", "the clock is read without waiting for fn's work: call sync(fn()) (on a GPU fn() returns before "
                "the work is done)"),
    ("sync after clock", "sync is called after the clock is read: the wait for the GPU must be inside the timed "
                         "interval, clock() - t0 after sync(fn())"),
    ("one start", "the times are cumulative (every one measured from the first start): read the clock before each call"),
]

TIME_CASES = [(dict(repeat=5, warmup=1), 11), (dict(repeat=3, warmup=2), 12), (dict(repeat=7, warmup=0), 13),
              (dict(repeat=1, warmup=3), 14)]


def _time_call(kw, seed):
    fn, clock, sync = _fake(200, seed)
    return call(fn, kw["repeat"], kw["warmup"], clock=clock, sync=sync)


def _judge_time(cases):
    def judge(rs):
        gots, wants, variants = [], [], {m: [] for m, _ in TIME_MISTAKES}
        for (kw, seed), r in zip(cases, rs):
            what = f"time_calls(fn, repeat={kw['repeat']}, warmup={kw['warmup']}, clock=..., sync=...)"
            got = value(r, what)
            try:
                out = np.asarray(got, dtype=np.float64)
            except (TypeError, ValueError):
                raise Fail(f"{what} returned {type(got).__name__}, expected a NumPy array of times") from None
            if out.ndim != 1:
                raise Fail(f"{what} returned shape {out.shape}, expected ({kw['repeat']},): one time per timed call")
            fn, clock, sync = _fake(200, seed)
            want = lib_time_calls(fn, kw["repeat"], kw["warmup"], clock=clock, sync=sync)
            for m, _ in TIME_MISTAKES:
                fn, clock, sync = _fake(200, seed)
                variants[m].append(_time_variant(fn, kw["repeat"], kw["warmup"], clock=clock, sync=sync, mistake=m))
            gots.append(out)
            wants.append(want)
        for (kw, seed), out, want in zip(cases, gots, wants):
            what = f"time_calls(fn, repeat={kw['repeat']}, warmup={kw['warmup']}, clock=..., sync=...)"
            if out.shape == want.shape and matches(out, want, rtol=1e-9, atol=1e-12):
                continue
            diagnose_cases(gots, wants, [(msg, variants[m]) for m, msg in TIME_MISTAKES], what=what,
                           rtol=1e-9, atol=1e-12)
            if out.size and np.all(np.abs(out) < 1e-4):
                raise Fail(f"{what}: these look like real timings: read the time with the `clock` argument "
                           "(the grader passes a fake clock), not time.perf_counter")
            if out.shape != want.shape:
                raise Fail(f"{what} returned {out.size} times, expected {want.size} (one per timed call, "
                           "the warm-up calls untimed)")
            close(out, want, what, rtol=1e-9, atol=1e-12,
                  hint="each time is clock() after sync(fn()) minus clock() just before fn(), after `warmup` "
                       "untimed calls sync(fn())")
    return judge


ex = Exercise("time_calls", "A timing harness with warm-up")
ex.test("warm-up, then one clock interval around each sync(fn())", 3, [_time_call(kw, s) for kw, s in TIME_CASES[:2]],
        _judge_time(TIME_CASES[:2]))
ex.test("other repeat and warm-up counts (no warm-up, one repeat)", 1, [_time_call(kw, s) for kw, s in TIME_CASES[2:]],
        _judge_time(TIME_CASES[2:]))
EXERCISES.append(ex)


# --- medians and percentiles ---------------------------------------------------------------------
ex = Exercise("measure_speed", "Prefill and decode speed: medians and latency percentiles")
DEC_KEYS = ("decode_tok_s", "decode_p50_ms", "decode_p90_ms", "decode_p99_ms")


def _speed_args(seed, n_prompt, decode, **kw):
    fn, clock, sync = _fake(400, seed, spread=1.2)
    return (fn, n_prompt, fn if decode else None), dict(kw, clock=clock, sync=sync)


SPEED_CASES = [(21, 37, True, dict(repeat=5, decode_steps=16, warmup=1)),
               (22, 128, True, dict(repeat=4, decode_steps=9, warmup=2)),
               (23, 16, False, dict(repeat=3, decode_steps=16, warmup=0)),
               (24, 5, True, dict(repeat=1, decode_steps=4, warmup=1))]


def _speed_variant(args, kw, mistake):
    """measure_speed with one typical mistake, on the fake clock of ``args``/``kw``."""
    prefill_fn, n_prompt, decode_fn = args
    clock, sync = kw["clock"], kw["sync"]
    warm = 1 if mistake == "default warmup" else kw["warmup"]
    pre = lib_time_calls(prefill_fn, kw["repeat"], warm, clock=clock, sync=sync)
    agg = np.mean if mistake == "mean" else np.median
    out = {"prefill_tok_s": (1.0 if mistake == "per call" else n_prompt) / float(agg(pre))}
    if decode_fn is not None:
        dec = lib_time_calls(decode_fn, kw["decode_steps"], warm, clock=clock, sync=sync)
        out["decode_tok_s"] = 1.0 / float(agg(dec))
        scale = 1.0 if mistake == "seconds" else 1e3
        for q in (50, 90, 99):
            p = np.percentile(dec, q, method="nearest" if mistake == "nearest" else "linear")
            out[f"decode_p{q}_ms"] = scale * float(p)
    return out


SPEED_MISTAKES = [
    ("mean", "that is the mean time per call: report the median (np.median), which a few slow calls do not move"),
    ("per call", "prefill_tok_s is calls per second: a prefill call processes n_prompt tokens, so tokens/s = "
                 "n_prompt / median time"),
    ("seconds", "the percentiles are in seconds: the keys say milliseconds (multiply by 1e3)"),
    ("nearest", "the percentiles are single samples: interpolate linearly between them (np.percentile's default)"),
    ("default warmup", "the warmup argument does not reach time_calls: pass warmup=warmup (and clock, sync) on"),
]


def _flat(d, keys):
    return [d.get(k, np.nan) for k in keys]


def _judge_speed(cases):
    def judge(rs):
        gots, wants, variants = [], [], {m: [] for m, _ in SPEED_MISTAKES}
        for (seed, n, dec, kw), r in zip(cases, rs):
            what = f"measure_speed(prefill_fn, {n}, {'decode_fn' if dec else 'None'}, {', '.join(f'{k}={v}' for k, v in kw.items())})"
            got = value(r, what)
            if not isinstance(got, dict):
                raise Fail(f"{what} returned {type(got).__name__}, expected a dict")
            keys = ("prefill_tok_s",) + (DEC_KEYS if dec else ())
            missing = [k for k in keys if k not in got]
            if missing:
                raise Fail(f"{what} lacks the keys {missing}")
            if not dec and set(got) - {"prefill_tok_s"}:
                raise Fail(f"{what}: without decode_fn return only prefill_tok_s, got also {sorted(map(str, set(got) - {'prefill_tok_s'}))}")
            for k in keys:
                try:
                    float(got[k])
                except (TypeError, ValueError):
                    raise Fail(f"{what}[{k!r}] is {type(got[k]).__name__}, expected a number") from None
            args, kwargs = _speed_args(seed, n, dec, **kw)
            wants.append(_flat(lib_measure_speed(*args, **kwargs), keys))
            gots.append([float(got[k]) for k in keys])
            for m, _ in SPEED_MISTAKES:
                args, kwargs = _speed_args(seed, n, dec, **kw)
                variants[m].append(_flat(_speed_variant(args, kwargs, m), keys))
        for (seed, n, dec, kw), g, w in zip(cases, gots, wants):
            if matches(g, w, rtol=1e-9, atol=0):
                continue
            keys = ("prefill_tok_s",) + (DEC_KEYS if dec else ())
            k = next(i for i, (a, b) in enumerate(zip(g, w)) if not np.isclose(a, b, rtol=1e-9, atol=0))
            what = f"measure_speed(..., n_prompt={n}, {', '.join(f'{a}={b}' for a, b in kw.items())}): " \
                   f"{keys[k]} = {g[k]:.6g}, expected {w[k]:.6g}"
            diagnose_cases(gots, wants, [(msg, variants[m]) for m, msg in SPEED_MISTAKES], what=what, rtol=1e-9, atol=0)
            raise Fail(f"{what} (prefill: n_prompt / median of time_calls; decode: 1 / median step time and "
                       "np.percentile of the step times in ms)")
    return judge


for name, pts, cases in (("prefill and decode: medians and percentiles in ms", 3, SPEED_CASES[:2]),
                         ("no decode_fn, no warm-up, a single repeat", 1, SPEED_CASES[2:])):
    ex.test(name, pts, [call(*a, **k) for a, k in (_speed_args(s, n, d, **kw) for s, n, d, kw in cases)],
            _judge_speed(cases))
EXERCISES.append(ex)


# --- end to end: the library's perplexity of a Llama, read in the learner's windows -------------------------
def _tiny_llama():
    from tinyllm.models.llama import Llama, LlamaConfig

    return Llama(LlamaConfig(vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64,
                             context_length=64), rng=120)


TINY = _tiny_llama()
TEXT = np.random.default_rng(121).integers(0, 96, 83)                  # (83,) token ids
PPL_RUNS = [(16, 5), (24, 24), (12, 1)]                                 # (window, stride)


def _e2e_perplexity(learner):
    from tinyllm import evaluate, plug

    for window, stride in PPL_RUNS:
        want = evaluate.perplexity(TINY, TEXT, window, stride, return_details=True)
        with plug.use(perplexity_windows=learner.perplexity_windows):
            got = evaluate.perplexity(TINY, TEXT, window, stride, return_details=True)
        what = f"the perplexity of a Llama on 83 tokens, window {window}, stride {stride}, with your windows"
        if got["n_tokens"] != want["n_tokens"]:
            raise Fail(f"{what} scores {got['n_tokens']} tokens, the library {want['n_tokens']}")
        close(got["perplexity"], want["perplexity"], what, rtol=1e-9, atol=0)


next(e for e in EXERCISES if e.function == "perplexity_windows").end_to_end(
    "tinyllm.evaluate.perplexity of a Llama with your windows", 2, _e2e_perplexity)
