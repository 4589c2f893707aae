"""Graded checks for exercises/09_inference.ipynb.

References: ``tinyllm.generate.sample_next`` (the library's sampler: repetition penalty -> temperature -> top-k
-> top-p -> one draw ``u = rng.random((B, 1))`` per call, inverse CDF) and ``tinyllm.generate.generate`` (the
plain loop), both run here on identical copies of the random generators the learner's calls receive; the
KV-cache attention is checked against its definition, causal attention over the filled slots
(Vaswani et al., 2017), computed here in float64.

``generate`` is graded on models that are plain NumPy callables (they travel to the sandbox): a bigram table,
``model(idx) = TABLE[idx]``, and a causal linear model whose logits depend on the whole context and that only
accepts exactly ``block_size`` tokens, so that the context crop is visible. A message names a mistake only
when the learner's results equal what that mistake gives on every call.

End to end: a small random Llama generates with the library's ``generate_batch`` (left padding, KV cache,
penalty, a seed) and the learner's ``sample_next`` plugged in, and must give the library's tokens; and one
pair of cache arrays, kept in the grader, carries a whole generation through the learner's ``cached_attention``.
"""
from __future__ import annotations

import copy
import functools

import numpy as np

from tinyllm.generate import generate as lib_generate
from tinyllm.generate import sample_next as lib_sample
from tinyllm.grading.core import (CallError, Exercise, Fail, array, call, call_seeing_args, close, diagnose_cases,
                                  matches, unchanged, value, with_args)

rng = np.random.default_rng(909)
EXERCISES: list[Exercise] = []


# --- the sampler ----------------------------------------------------------------------------------
def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sample(logits, *, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0, previous=None, rng=None,
            mistake=None):
    """The library's sampler re-written with switches for typical mistakes (``mistake=None`` is the right one)."""
    z = np.asarray(logits, dtype=np.float64).copy()
    B, V = z.shape
    if previous is not None and repetition_penalty != 1.0:
        for b, seen in enumerate(previous):
            ids = np.asarray(seen, dtype=np.int64) if mistake == "penalty per occurrence" else np.unique(seen)
            for i in (ids if mistake == "penalty per occurrence" else [ids]):
                v = z[b, i]
                if mistake == "penalty inverted":
                    z[b, i] = np.where(v > 0, v * repetition_penalty, v / repetition_penalty)
                elif mistake == "penalty divides all":
                    z[b, i] = v / repetition_penalty
                else:
                    z[b, i] = np.where(v > 0, v / repetition_penalty, v * repetition_penalty)
    if temperature == 0:
        return z.argmax(axis=-1)

    def top_p_filter(z):
        if top_p is None or top_p >= 1.0:
            return z
        order = np.argsort(-z, axis=-1, kind="stable")
        p = _softmax(np.take_along_axis(z, order, axis=-1))
        if mistake == "top-p drops crossing":
            drop_sorted = np.cumsum(p, axis=-1) >= top_p
        else:
            drop_sorted = np.cumsum(p, axis=-1) - p >= top_p
        drop = np.empty_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        return np.where(drop, -np.inf, z)

    def top_k_filter(z):
        if top_k is None or top_k <= 0 or top_k >= V:
            return z
        if mistake == "top-k smallest":
            kth = np.partition(z, top_k - 1, axis=-1)[:, top_k - 1][:, None]
            return np.where(z > kth, -np.inf, z)
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        return np.where(z < kth, -np.inf, z)

    if mistake == "temperature multiplies":
        z = z * temperature
    elif mistake != "top-p before temperature":
        z = z / temperature
    z = top_p_filter(top_k_filter(z))
    if mistake == "top-p before temperature":
        z = z / temperature
    probs = _softmax(z)
    u = rng.random((B, 1))
    if mistake == "unnormalised":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return np.minimum((np.cumsum(e, axis=-1) < u).sum(axis=-1), V - 1)
    return np.minimum((np.cumsum(probs, axis=-1) < u).sum(axis=-1), V - 1)


SAMPLE_MISTAKES = [
    ("temperature multiplies", "the logits were multiplied by the temperature: divide them (z / temperature), so that "
                               "a temperature below 1 sharpens the distribution"),
    ("top-p before temperature", "top-p was applied before the temperature: the nucleus is taken on the distribution "
                                 "after temperature and top-k (penalty -> temperature -> top-k -> top-p)"),
    ("top-p drops crossing", "top-p drops the token that crosses the threshold: keep the most probable tokens until "
                             "their mass reaches p, the crossing token included"),
    ("top-k smallest", "top-k kept the k LEAST likely tokens: keep the k largest logits"),
    ("unnormalised", "the cumulative sum runs over unnormalised exp(z): divide by the sum first (softmax), so that the "
                     "cumulative probability ends at 1"),
    ("penalty inverted", "the repetition penalty is inverted: divide POSITIVE logits of seen tokens by the penalty and "
                         "multiply negative ones, so both become less likely"),
    ("penalty divides all", "negative logits of seen tokens were divided by the penalty, which makes them MORE likely: "
                            "multiply negative logits, divide positive ones"),
    ("penalty per occurrence", "a token seen twice was penalised twice: penalise each seen token once (np.unique)"),
]

V_ = 40
LOGITS = (2.0 * rng.standard_normal((64, V_))).astype(np.float32)       # (B, V) one batch of next-token logits
SMALL = (2.0 * rng.standard_normal((5, V_))).astype(np.float32)
PREVIOUS = [list(rng.integers(0, V_, 6)) + [int(np.argmax(row))] * 2 for row in LOGITS]   # seen tokens, the likeliest twice
_seed = iter(range(7000, 8000))


def _case(logits=LOGITS, **kw):
    return logits, dict(kw, rng=np.random.default_rng(next(_seed)))


SAMPLE_TESTS = {
    "greedy": [_case(SMALL, temperature=0), _case(LOGITS, temperature=0, top_k=3, top_p=0.5)],
    "temperature": [_case(temperature=1.0), _case(temperature=0.5), _case(temperature=2.0)],
    "top_k": [_case(top_k=5), _case(top_k=1, temperature=1.5), _case(top_k=100), _case(top_k=None, temperature=0.8)],
    "top_p": [_case(top_p=0.5), _case(top_p=0.9, temperature=1.3), _case(top_p=1.0), _case(top_p=0.05)],
    "combined": [_case(temperature=0.7, top_k=10, top_p=0.8), _case(temperature=1.2, top_k=25, top_p=0.6)],
    "penalty": [_case(temperature=0, repetition_penalty=1.8, previous=PREVIOUS),
                _case(temperature=0.9, repetition_penalty=1.3, previous=PREVIOUS)],
}


def _describe(kw):
    return ", ".join(f"{k}={v}" for k, v in kw.items() if k not in ("rng", "previous")) + \
        (", previous=..." if "previous" in kw else "")


def _judge_sample(cases):
    def judge(rs):
        gots, wants = [], []
        for (logits, kw), r in zip(cases, rs):
            what = f"sample_next(logits {logits.shape}, {_describe(kw)})"
            out = array(r, what, shape=(logits.shape[0],))
            if not np.issubdtype(out.dtype, np.integer):
                if np.issubdtype(out.dtype, np.floating) and np.all(out == np.round(out)):
                    out = out.astype(np.int64)
                else:
                    raise Fail(f"{what} returned dtype {out.dtype}: return token ids (integers)")
            gots.append(out)
            wants.append(lib_sample(logits, **{**kw, "rng": copy.deepcopy(kw["rng"])}))
        if all(np.array_equal(g, w) for g, w in zip(gots, wants)):
            return
        k = next(i for i, (g, w) in enumerate(zip(gots, wants)) if not np.array_equal(g, w))
        logits, kw = cases[k]
        bad = np.flatnonzero(gots[k] != wants[k])
        what = (f"sample_next(logits {logits.shape}, {_describe(kw)}) chose a different token in {bad.size} of "
                f"{logits.shape[0]} rows (row {int(bad[0])}: {int(gots[k][bad[0]])}, expected {int(wants[k][bad[0]])})")
        variants = []
        with np.errstate(all="ignore"):
            for mistake, message in SAMPLE_MISTAKES:
                variants.append((message, [_sample(lg, **{**kw_, "rng": copy.deepcopy(kw_["rng"])}, mistake=mistake)
                                           for lg, kw_ in cases]))
        diagnose_cases(gots, wants, variants, what=what, rtol=0, atol=0)
        if kw.get("temperature", 1.0) == 0:
            raise Fail(f"{what}: temperature 0 is greedy, the argmax of each row (after the repetition penalty)")
        raise Fail(f"{what}: penalty -> divide by the temperature -> top-k -> top-p -> softmax in float64, then one "
                   "u = rng.random((B, 1)) and the first token whose cumulative probability exceeds u")
    return judge


ex = Exercise("sample_next", "Choosing the next token: greedy, temperature, top-k, top-p, penalty")
for name, title, pts in (("greedy", "temperature 0 is greedy (whatever top-k and top-p say)", 1),
                         ("temperature", "sampling at temperatures 1, 0.5 and 2: the library's tokens for the same rng", 2),
                         ("top_k", "top-k (k = 5, 1, larger than V, None)", 1),
                         ("top_p", "top-p (p = 0.5, 0.9, 1, 0.05)", 2),
                         ("combined", "temperature, top-k and top-p together, in that order", 1),
                         ("penalty", "the repetition penalty on seen tokens", 1)):
    cases = SAMPLE_TESTS[name]
    ex.test(title, pts, [call(lg, **kw) for lg, kw in cases], _judge_sample(cases))

RNG_SEED = 4242


def _judge_randomness(rs):
    what = "sample_next(logits (64, 40), temperature=0.7, rng=...)"
    (a, args), (b, _), (c, _) = (with_args(r) for r in rs)
    a, b, c = (array(x, what, shape=(64,)) for x in (a, b, c))
    if args is not None:
        unchanged(args[0], LOGITS, "logits", "work on a float64 copy: np.asarray(logits, dtype=np.float64) / temperature")
    if not np.array_equal(a, b):
        raise Fail(f"{what} gave different tokens for two generators in the same state: take every random number "
                   "from the rng argument (u = rng.random((B, 1))), not from np.random or a new generator")
    if np.array_equal(a, c):
        raise Fail(f"{what} gave the same tokens for two different seeds: draw u from the rng argument")
    close(a, lib_sample(LOGITS, temperature=0.7, rng=np.random.default_rng(RNG_SEED)), what, rtol=0, atol=0)


ex.test("randomness only from rng; the logits untouched", 1,
        [call_seeing_args(LOGITS, temperature=0.7, rng=np.random.default_rng(RNG_SEED)),
         call(LOGITS, temperature=0.7, rng=np.random.default_rng(RNG_SEED)),
         call(LOGITS, temperature=0.7, rng=np.random.default_rng(RNG_SEED + 1))], _judge_randomness)
EXERCISES.append(ex)


# --- attention over a preallocated KV cache -------------------------------------------------------
def _attend(q, k_new, v_new, cache_k, cache_v, pos, *, mistake=None):
    """y of attention over the filled slots, in float64 (or with one typical mistake)."""
    T, S, D = q.shape[2], cache_k.shape[2], q.shape[3]
    at = pos + 1 if mistake == "next slot" else pos
    ck, cv = cache_k.astype(np.float64), cache_v.astype(np.float64)
    ck[:, :, at:at + T], cv[:, :, at:at + T] = k_new, v_new
    n = S if mistake == "all slots" else pos + T
    keys, vals = ck[:, :, :n], cv[:, :, :n]                           # (B, H, n, D)
    if mistake == "new only":
        keys, vals, n, offset = k_new.astype(np.float64), v_new.astype(np.float64), T, 0
    else:
        offset = 0 if mistake == "mask from zero" else pos
    s = q.astype(np.float64) @ keys.swapaxes(-1, -2)                  # (B, H, T, n)
    if mistake != "no scale":
        s = s / np.sqrt(D)
    if mistake != "no mask" and not (mistake == "all slots" and T == 1):   # "one new token needs no mask"
        allowed = np.arange(n)[None, :] <= (offset + np.arange(T))[:, None]   # (T, n)
        s = np.where(allowed, s, -np.inf)
    return _softmax(s) @ vals                                         # (B, H, T, D)


ATT_MISTAKES = [
    ("all slots", "the queries attend over all S_max slots of the cache: only slots 0 .. pos + T - 1 hold keys, the "
                  "rest is left over (or empty) memory"),
    ("mask from zero", "the causal mask is not shifted by pos: the query of the new token t sits at position pos + t and "
                       "sees the keys of slots 0 .. pos + t"),
    ("no mask", "there is no causal mask: a new token must not see the tokens after it in the same chunk"),
    ("no scale", "the scores are not divided by sqrt(D)"),
    ("next slot", "the new keys and values went to slot pos + 1: they belong in slots pos .. pos + T - 1"),
    ("new only", "only the new tokens are attended: the cache exists so that the keys and values of the earlier "
                 "positions (slots 0 .. pos - 1) are attended too, without recomputing them"),
]


def _att_case(B, H, T, S, D, pos, seed):
    r = np.random.default_rng(seed)
    q, k, v = (r.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(3))
    ck = r.standard_normal((B, H, S, D)).astype(np.float32)          # slots < pos: the past; slots >= pos: left over
    cv = r.standard_normal((B, H, S, D)).astype(np.float32)
    return q, k, v, ck, cv, pos


ATT = {
    "prefill": [_att_case(2, 3, 5, 8, 16, 0, 1), _att_case(1, 2, 4, 4, 8, 0, 2)],
    "decode": [_att_case(2, 3, 1, 9, 16, 6, 3), _att_case(1, 4, 1, 12, 8, 1, 4)],
    "chunk": [_att_case(2, 2, 4, 10, 8, 3, 5), _att_case(1, 3, 3, 16, 32, 9, 6)],
}


def _judge_att(cases):
    def judge(rs):
        ys, wants = [], []
        for (q, k, v, ck, cv, pos), r in zip(cases, rs):
            what = f"cached_attention(q {q.shape}, ..., caches {ck.shape}, pos={pos})"
            y, args = with_args(r)
            y = array(y, what, shape=q.shape, floating=True)
            ys.append(y)
            wants.append(_attend(q, k, v, ck, cv, pos))
            if args is not None:
                T = q.shape[2]
                for name, after, before, new in (("cache_k", args[3], ck, k), ("cache_v", args[4], cv, v)):
                    want_after = before.copy()
                    want_after[:, :, pos:pos + T] = new
                    if isinstance(after, np.ndarray) and np.array_equal(after, want_after):
                        continue
                    if isinstance(after, np.ndarray) and np.array_equal(after, before):
                        raise Fail(f"{what}: the caller's {name} was not written: write the new entries into it in "
                                   f"place ({name}[:, :, pos:pos + T] = ...), so that the next step finds them there")
                    shifted = before.copy()
                    shifted[:, :, pos + 1:pos + 1 + T] = new[:, :, :max(0, min(T, before.shape[2] - pos - 1))]
                    if isinstance(after, np.ndarray) and np.array_equal(after, shifted):
                        continue                                             # named below by the slot mistake
                    raise Fail(f"{what}: after the call {name} holds other values than the cache with the new "
                               f"entries in slots {pos} .. {pos + T - 1} (nothing else may change)")
        if all(matches(y, w, rtol=1e-4, atol=1e-5) for y, w in zip(ys, wants)):
            for (q, *_), y in zip(cases, ys):
                array(y, f"cached_attention(q {q.shape}, ...)", dtype=np.float32)
            return
        k = next(i for i, (y, w) in enumerate(zip(ys, wants)) if not matches(y, w, rtol=1e-4, atol=1e-5))
        q, _, _, ck, _, pos = cases[k]
        what = f"cached_attention(q {q.shape}, ..., caches {ck.shape}, pos={pos})"
        diagnose_cases(ys, wants, [(m, [_attend(*c, mistake=key) for c in cases]) for key, m in ATT_MISTAKES],
                       what=what, rtol=1e-4, atol=1e-5)
        close(ys[k], wants[k], what, rtol=1e-4, atol=1e-5,
              hint="softmax(q k^T / sqrt(D)) v over the keys of slots 0 .. pos + T - 1, query t seeing slots <= pos + t")
    return judge


def _judge_capacity(rs):
    fit, over, neg = rs
    if isinstance(fit, CallError) and fit.type == "ValueError":
        raise Fail(f"writing 3 tokens at pos=5 into a cache of 8 slots (an exact fit) raised ValueError ({fit.message}): "
                   "they fit when pos + T <= S_max")
    value(fit, "cached_attention at an exact fit")
    for what, r in (("3 tokens at pos=6 into a cache of 8 slots", over), ("pos=-1", neg)):
        if isinstance(r, CallError) and r.type == "ValueError":
            continue
        if isinstance(r, CallError) and r.type == "NotImplementedError":
            value(r, "")
        raise Fail(f"writing {what} must raise ValueError (they do not fit), not "
                   + (f"raise {r.type}" if isinstance(r, CallError) else "return"))


ex = Exercise("cached_attention", "Attention over a preallocated KV cache")
ex.test("prefill: the prompt's keys and values written in place, causal attention", 2,
        [call_seeing_args(*c) for c in ATT["prefill"]], _judge_att(ATT["prefill"]))
ex.test("a decode step reads the cached past and ignores the slots after it", 2,
        [call_seeing_args(*c) for c in ATT["decode"]], _judge_att(ATT["decode"]))
ex.test("a chunk of new tokens after a cached past: the causal mask shifted by pos", 2,
        [call_seeing_args(*c) for c in ATT["chunk"]], _judge_att(ATT["chunk"]))
_fit = _att_case(1, 2, 3, 8, 8, 5, 7)
ex.test("fills the cache exactly; raises ValueError beyond it", 1,
        [call(*_fit), call(*_att_case(1, 2, 3, 8, 8, 6, 8)), call(*_att_case(1, 2, 3, 8, 8, -1, 9))], _judge_capacity)
EXERCISES.append(ex)


# --- the generation loop --------------------------------------------------------------------------
VG = 30
TABLE = (1.5 * rng.standard_normal((VG, VG))).astype(np.float32)       # (V, V) bigram logits
BIGRAM = functools.partial(np.take, TABLE, axis=0)                      # model(idx (B, T)) -> (B, T, V)
BLOCK = 5
_M = (0.08 * rng.standard_normal((BLOCK, VG))).astype(np.float32)       # (T, V)
_W = np.tril(rng.uniform(0.5, 1.5, (BLOCK, BLOCK))).astype(np.float32)  # (T, S) causal weights
# causal linear model: logits[b, t, v] = sum_s W[t, s] ids[b, s] M[s, v]; it accepts exactly BLOCK tokens
CAUSAL = functools.partial(np.einsum, "sv,ts,bs->btv", _M, _W)


def _prompt(B, T, seed, dtype=np.int64):
    return np.random.default_rng(seed).integers(0, VG, (B, T)).astype(dtype)


GEN = {
    "greedy": [(BIGRAM, _prompt(3, 4, 1), 6, dict(temperature=0.0)),
               (BIGRAM, _prompt(1, 1, 2), 5, dict(temperature=0.0, seed=9))],
    "sampled": [(BIGRAM, _prompt(4, 3, 3), 10, dict(temperature=0.9, top_k=8, seed=11)),
                (BIGRAM, _prompt(2, 5, 4, np.int32), 7, dict(temperature=1.3, top_p=0.7, seed=12))],
    "block": [(CAUSAL, _prompt(3, 7, 5), 6, dict(temperature=0.8, seed=13, block_size=BLOCK)),
              (CAUSAL, _prompt(2, BLOCK, 6), 4, dict(temperature=0.0, block_size=BLOCK))],
}


def _gen_variant(model, idx, n, kw, mistake):
    r = np.random.default_rng(kw.get("seed"))
    block = kw.get("block_size")
    sk = {k: kw[k] for k in ("temperature", "top_k", "top_p") if k in kw}
    for _ in range(n):
        if mistake == "crop front" and block is not None:
            context = idx[:, :block]
        else:
            context = idx if block is None else idx[:, -block:]
        logits = model(context)[:, 0 if mistake == "first position" else -1, :]
        if mistake == "reseed":
            r = np.random.default_rng(kw.get("seed"))
        nxt = lib_sample(logits, rng=r, **sk)
        idx = np.concatenate([idx, nxt[:, None].astype(idx.dtype)], axis=1)
    return idx


GEN_MISTAKES = [
    ("crop front", "the context was cut to the FIRST block_size tokens: the model must see the last ones, "
                   "idx[:, -block_size:]"),
    ("first position", "the next token came from the logits of the first position: take the last one, "
                       "model(context)[:, -1, :]"),
    ("reseed", "the generator is made anew at every step, so every step draws the same u: make "
               "rng = np.random.default_rng(seed) once, before the loop"),
]


def _judge_gen(cases):
    def judge(rs):
        gots, wants = [], []
        for (model, idx, n, kw), r in zip(cases, rs):
            what = f"generate(model, idx {idx.shape}, {n}, {_describe(kw)})"
            got, args = with_args(r)
            if isinstance(got, CallError) and got.type == "ValueError" and kw.get("block_size") and \
                    "operand" in got.message:
                raise Fail(f"{what}: the model received more than block_size={kw['block_size']} tokens: crop the "
                           "context to the last block_size tokens before each call")
            out = array(got, what)
            B, T = idx.shape
            if out.shape == (B, n):
                raise Fail(f"{what} returned only the {n} new tokens: return the prompt followed by them, shape "
                           f"{(B, T + n)}")
            out = array(out, what, shape=(B, T + n))
            if args is not None:
                unchanged(args[1], idx, "idx", "build the longer sequence with np.concatenate, do not write into idx")
            if not np.issubdtype(out.dtype, np.integer):
                raise Fail(f"{what} has dtype {out.dtype}: token ids are integers (keep idx's dtype)")
            if not np.array_equal(out[:, :T], idx):
                raise Fail(f"{what}: the first {T} columns must be the prompt itself")
            gots.append(out)
            wants.append(lib_generate(model, idx, n, **kw))
        if all(np.array_equal(g, w) for g, w in zip(gots, wants)):
            for (model, idx, n, kw), g in zip(cases, gots):
                array(g, f"generate(model, idx {idx.shape}, ...)", dtype=idx.dtype)
            return
        k = next(i for i, (g, w) in enumerate(zip(gots, wants)) if not np.array_equal(g, w))
        model, idx, n, kw = cases[k]
        what = (f"generate(model, idx {idx.shape}, {n}, {_describe(kw)}) gives "
                f"{gots[k][0, idx.shape[1]:].tolist()} in row 0, expected {wants[k][0, idx.shape[1]:].tolist()}")
        diagnose_cases(gots, wants, [(m, [_gen_variant(*c[:3], c[3], key) for c in cases]) for key, m in GEN_MISTAKES],
                       what=what, rtol=0, atol=0)
        raise Fail(f"{what}: one rng = np.random.default_rng(seed) before the loop; each step: the last logits of "
                   "model(context) -> your sample_next(..., rng=rng) -> append (check sample_next first)")
    return judge


ex = Exercise("generate", "The generation loop")
ex.test("greedy: the prompt, then the argmax of the last logits, step after step", 1,
        [call_seeing_args(*c[:3], **c[3]) for c in GEN["greedy"]], _judge_gen(GEN["greedy"]))
ex.test("sampled with a seed: the library's tokens, idx's dtype kept, idx untouched", 2,
        [call_seeing_args(*c[:3], **c[3]) for c in GEN["sampled"]], _judge_gen(GEN["sampled"]))
ex.test("a model with a context window: only the last block_size tokens go in", 2,
        [call_seeing_args(*c[:3], **c[3]) for c in GEN["block"]], _judge_gen(GEN["block"]))
EXERCISES.append(ex)


# --- end to end: the library's batched, cached generation chooses its tokens with the learner's sampler -----
def _tiny_llama():
    from tinyllm.models.llama import Llama, LlamaConfig

    return Llama(LlamaConfig(vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64,
                             context_length=64), rng=90)


TINY = _tiny_llama()
E2E_PROMPTS = [[5, 17, 2, 40, 7], [9, 9], [60, 1, 33, 33, 8, 71, 4]]
E2E_RUNS = [dict(temperature=0.9, top_k=30, top_p=0.9, repetition_penalty=1.2, seed=5),
            dict(temperature=0.0, repetition_penalty=1.5)]


def _e2e_sampler(learner):
    from tinyllm import plug
    from tinyllm.generate import generate_batch

    def plugged(logits, *, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0, previous=None, rng=None):
        out = learner.sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,   # rng advances here
                                  repetition_penalty=repetition_penalty, previous=previous, rng=rng)   # as it did there
        return np.asarray(out)

    for kw in E2E_RUNS:
        want = generate_batch(TINY, E2E_PROMPTS, 10, **kw)
        with plug.use(sample_next=plugged):
            got = generate_batch(TINY, E2E_PROMPTS, 10, **kw)
        if got != want:
            row = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
            raise Fail(f"with your sample_next, a Llama's generate_batch(3 prompts, 10 tokens, {_describe(kw)}) gives "
                       f"{got[row]} for prompt {row}, the library {want[row]}")


next(e for e in EXERCISES if e.function == "sample_next").end_to_end(
    "a Llama generates the library's tokens with your sampler (batched, KV cache, seed)", 3, _e2e_sampler)


# --- end to end: one cache through a whole generation ---------------------------------------------------------
def _e2e_cache(learner):
    """A prompt of 5 tokens, 6 decode steps and a chunk of 3 through the learner's function, with ONE pair of cache
    arrays kept here (what the call writes in place comes back into them): each output must equal causal
    attention over the whole sequence so far, so every step finds the keys and values the earlier ones wrote."""
    r = np.random.default_rng(990)
    B, H, D, S = 2, 3, 8, 16
    q, k, v = (r.standard_normal((B, H, 14, D)).astype(np.float32) for _ in range(3))
    cache_k = np.full((B, H, S, D), 7.0, np.float32)                  # leftovers of an earlier sequence
    cache_v = np.full((B, H, S, D), -7.0, np.float32)
    spans = [(0, 5)] + [(t, t + 1) for t in range(5, 11)] + [(11, 14)]
    for a, b in spans:
        y = learner.cached_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], cache_k, cache_v, a)
        y = array(y, f"cached_attention at pos={a} (T={b - a})", shape=(B, H, b - a, D), floating=True)
        want = _attend(q[:, :, :b], k[:, :, :b], v[:, :, :b], np.zeros((B, H, b, D), np.float32),
                       np.zeros((B, H, b, D), np.float32), 0)[:, :, a:b]
        if not np.array_equal(cache_k[:, :, :b], k[:, :, :b]):
            raise Fail(f"after the call at pos={a}, the cache's slots 0 .. {b - 1} do not hold the keys written so far: "
                       "write the new keys into the cache you are given, in place")
        close(y, want, f"the step at pos={a} (T={b - a}) of a generation through one cache, against attention over "
              f"all {b} tokens", rtol=1e-4, atol=1e-5)


next(e for e in EXERCISES if e.function == "cached_attention").end_to_end(
    "one cache through a prefill, 6 decode steps and a chunk: each step equals full attention", 1, _e2e_cache)
