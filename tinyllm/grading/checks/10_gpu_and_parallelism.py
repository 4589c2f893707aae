"""Graded checks for exercises/10_gpu_and_parallelism.ipynb.

Reference: ``tinyllm.parallel.ring_allreduce``, the ring all-reduce over simulated ranks (Patarasuk & Yuan,
2009): chunks cut as ``np.array_split`` does, R - 1 reduce-scatter steps and R - 1 all-gather steps, each rank
sending one chunk to its right neighbour per step. Graded: the sum on every rank (exact on integer-valued
data, in the input's dtype, the input untouched), the 2 (R - 1) steps, and the bytes each rank sent, on numbers
of ranks and sizes the learner has not seen, most of them not divisible by R. A message names a mistake only
when the learner's results equal what that mistake gives on every call. End to end: the gradients of tinyllm's
GPT on 4 shards of a batch, all-reduced by the learner's ring and divided by R, equal the whole batch's.
"""
from __future__ import annotations

import numpy as np

from tinyllm.grading.core import (Exercise, Fail, array, call, call_seeing_args, close, diagnose_cases,
                                  matches, unchanged, value, with_args)
from tinyllm.parallel import ring_allreduce as lib_ring

rng = np.random.default_rng(1010)
EXERCISES: list[Exercise] = []

ex = Exercise("ring_allreduce", "Ring all-reduce over simulated ranks: the sum, the steps, the bytes")


def _ints(R, N, dtype):
    return rng.integers(-1000, 1000, (R, N)).astype(dtype)


# exact sums: integer values (float32 holds them exactly), int64; sizes mostly not divisible by R
EXACT = [_ints(4, 10, np.float32), _ints(3, 7, np.float32), _ints(5, 13, np.int64), _ints(2, 9, np.float64)]
# float data (summation order differs from np.sum: compared with a tolerance), fewer numbers than ranks, one rank
OTHER = [rng.standard_normal((7, 100)).astype(np.float32), _ints(6, 4, np.float32), _ints(1, 5, np.float32),
         (1e3 * rng.standard_normal((3, 64))).astype(np.float64)]
BYTES = [_ints(4, 10, np.float32), _ints(3, 11, np.float64), _ints(5, 12, np.int32), _ints(8, 21, np.float32),
         _ints(2, 2, np.int64)]


def _edges(R, N):
    size, extra = divmod(N, R)
    return [c * size + min(c, extra) for c in range(R + 1)]


def _after_reduce_scatter(g):
    """What every rank holds when the all-gather phase is left out."""
    g = g.copy()
    R, N = g.shape
    e = _edges(R, N)
    for s in range(R - 1):
        msgs = [(r, (r - s) % R, g[r, e[(r - s) % R]:e[(r - s) % R + 1]].copy()) for r in range(R)]
        for r, c, m in msgs:
            g[(r + 1) % R, e[c]:e[c + 1]] += m
    return g


def _sum_variants(g):
    s = g.astype(np.float64).sum(axis=0)
    R = g.shape[0]
    return [
        ("every rank holds the MEAN: an all-reduce leaves the sum on every rank (data parallelism divides by R "
         "afterwards)", np.broadcast_to(s / R, g.shape)),
        ("each rank holds the complete sum of one chunk only: the all-gather phase (R - 1 more steps that pass the "
         "finished chunks round the ring) is missing", _after_reduce_scatter(g)),
        ("the result is the input unchanged: the received chunks must be added (reduce-scatter), then passed on "
         "(all-gather)", g),
        ("only the last rank holds the sum: every rank must end with all of it", np.concatenate(
            [g[:-1], s[None]]) if R > 1 else g),
    ]


def _judge_sums(cases, *, exact):
    def judge(rs):
        outs = []
        for g, r in zip(cases, rs):
            what = f"ring_allreduce(buffers of shape {g.shape}, {g.dtype})"
            got, args = with_args(r)
            got = value(got, what)
            if not isinstance(got, (tuple, list)) or len(got) != 3:
                raise Fail(f"{what} returned {type(got).__name__}, expected a tuple (out, steps, bytes_sent)")
            if args is not None:
                unchanged(args[0], g, "buffers", "copy the buffers first: xp.array(buffers, copy=True)")
            out = array(got[0], f"the out of {what}", shape=g.shape)
            outs.append(out)
        wants = [np.broadcast_to(g.astype(np.float64).sum(axis=0), g.shape) for g in cases]
        tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-5, atol=1e-4)
        for g, out, want in zip(cases, outs, wants):
            what = f"ring_allreduce(buffers of shape {g.shape}, {g.dtype})"
            if not matches(out, want, **tol):
                per = [_sum_variants(x) for x in cases]
                diagnose_cases(outs, wants, [(m, [p[i][1] for p in per]) for i, (m, _) in enumerate(per[0])],
                               what=what, **tol)
                close(out, want, f"the out of {what}", **tol,
                      hint="every rank must end with the sum over ranks of its buffer")
            array(out, f"the out of {what}", dtype=g.dtype)
    return judge


def _steps_bytes(r, g):
    what = f"ring_allreduce(buffers of shape {g.shape}, {g.dtype})"
    got = value(r, what)
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        raise Fail(f"{what} returned {type(got).__name__}, expected a tuple (out, steps, bytes_sent)")
    return what, got[1], got[2]


def _judge_steps(rs):
    gots, wants = [], []
    for g, r in zip(BYTES + EXACT, rs):
        what, steps, _ = _steps_bytes(r, g)
        if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)) and not (
                isinstance(steps, np.ndarray) and steps.shape == () and np.issubdtype(steps.dtype, np.integer)):
            raise Fail(f"the steps of {what} is {type(steps).__name__}, expected an int")
        gots.append(int(steps))
        wants.append(2 * (g.shape[0] - 1))
    if gots == wants:
        return
    Rs = [g.shape[0] for g in BYTES + EXACT]
    k = next(i for i, (a, b) in enumerate(zip(gots, wants)) if a != b)
    what = f"{gots[k]} steps for {Rs[k]} ranks, expected {wants[k]}"
    diagnose_cases(gots, wants, [
        ("that counts one phase only: reduce-scatter takes R - 1 steps and all-gather another R - 1", [R - 1 for R in Rs]),
        ("R steps per phase is one too many: after R - 1 steps every chunk has visited every rank", [2 * R for R in Rs]),
        ("that counts one step per rank: each phase takes R - 1 steps, 2 (R - 1) in all", Rs),
        ("that counts every message: in one step all R ranks send at once, which is one step",
         [2 * R * (R - 1) for R in Rs]),
    ], what=what, rtol=0, atol=0)
    raise Fail(f"{what}: one step = every rank sends one chunk to its right neighbour at once")


def _bytes_variants(g):
    R, N = g.shape
    b = g.dtype.itemsize
    e = _edges(R, N)
    size = np.diff(e)
    sent = np.array([b * (2 * N - size[(r + 1) % R] - size[(r + 2) % R]) for r in range(R)])
    recv = np.array([b * (2 * N - size[r % R] - size[(r + 1) % R]) for r in range(R)])
    return [
        ("those are numbers, not bytes: multiply the numbers sent by the itemsize of the dtype", sent // b),
        ("every step sends the whole buffer: a step sends one chunk of about N / R numbers",
         np.full(R, 2 * (R - 1) * N * b)),
        ("that is 2 (R - 1) N / R rounded for every rank: with N not divisible by R the chunks differ in size "
         "(np.array_split), so count the bytes of the chunks each rank actually sends",
         np.full(R, 2 * (R - 1) * (N // R) * b)),
        ("those are the bytes each rank RECEIVED: count what rank r sends", recv),
        ("only the reduce-scatter phase is counted: the all-gather sends as many chunks again",
         np.array([b * (N - size[(r + 1) % R]) for r in range(R)])),
    ]


def _judge_bytes(rs):
    gots, wants = [], []
    for g, r in zip(BYTES, rs):
        what, _, sent = _steps_bytes(r, g)
        R = g.shape[0]
        if isinstance(sent, (int, float, np.integer, np.floating)) and not isinstance(sent, bool):
            total = lib_ring(g)[2].sum()
            hint = " (that is the total over all ranks)" if np.isclose(float(sent), total) else ""
            raise Fail(f"the bytes_sent of {what} is one number{hint}: return one count per rank, shape ({R},)")
        sent = array(sent, f"the bytes_sent of {what}", shape=(R,))
        gots.append(sent.astype(np.float64))
        wants.append(lib_ring(g)[2].astype(np.float64))
    if all(matches(a, b, rtol=0, atol=0) for a, b in zip(gots, wants)):
        return
    k = next(i for i, (a, b) in enumerate(zip(gots, wants)) if not matches(a, b, rtol=0, atol=0))
    g = BYTES[k]
    what = (f"bytes_sent for {g.shape[0]} ranks and N = {g.shape[1]} ({g.dtype}) is {gots[k].astype(int).tolist()}, "
            f"expected {wants[k].astype(int).tolist()}")
    per = [_bytes_variants(x) for x in BYTES]
    diagnose_cases(gots, wants, [(m, [p[i][1] for p in per]) for i, (m, _) in enumerate(per[0])], what=what,
                   rtol=0, atol=0)
    raise Fail(f"{what}: each rank sends every chunk but one in each phase (chunks as np.array_split cuts them), "
               "times the itemsize")


ex.test("every rank ends with the exact sum, in the input's dtype, the input untouched", 3,
        [call_seeing_args(g) for g in EXACT], _judge_sums(EXACT, exact=True))
ex.test("float data, fewer numbers than ranks, a single rank", 1, [call(g) for g in OTHER],
        _judge_sums(OTHER, exact=False))
ex.test("2 (R - 1) steps", 1, [call(g) for g in BYTES + EXACT], _judge_steps)
ex.test("the bytes each rank sent, N not divisible by R", 3, [call(g) for g in BYTES], _judge_bytes)
EXERCISES.append(ex)


# --- end to end: data-parallel gradients of tinyllm's GPT, averaged with the learner's ring -----------------
def _gradients():
    """Per-rank gradients of a small GPT on 4 shards of a batch (R, P), and the global batch's gradient (P,)."""
    from tinyllm.models.gpt import GPT, GPTConfig

    cfg = GPTConfig.preset("char-small")
    model = GPT(cfg, rng=10)
    data = np.random.default_rng(11).integers(0, cfg.vocab_size, size=(8, 13))
    x, y = data[:, :-1], data[:, 1:]

    def flat(xs, ys):
        model.zero_grad()
        model.loss(xs, ys)
        model.backward()
        return np.concatenate([p.grad.ravel() for p in model.parameters()])   # (P,)

    return np.stack([flat(x[2 * r:2 * r + 2], y[2 * r:2 * r + 2]) for r in range(4)]), flat(x, y)


PER_RANK, WHOLE = _gradients()


def _e2e_data_parallel(learner):
    got = learner.ring_allreduce(PER_RANK.copy())           # a copy: what the call writes in place comes back
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        raise Fail(f"ring_allreduce returned {type(got).__name__}, expected a tuple (out, steps, bytes_sent)")
    out = array(got[0], "ring_allreduce of 4 ranks' GPT gradients", shape=PER_RANK.shape)
    mean = out / np.float32(4)
    if not (mean == mean[0]).all():
        raise Fail("after your all-reduce the 4 ranks hold different gradients: every copy of the model must take "
                   "the same step")
    close(mean[0], WHOLE, "the all-reduced gradient / R, against the gradient of the whole batch on one process",
          rtol=1e-4, atol=1e-6)


ex.end_to_end("data parallelism: 4 ranks' gradients of tinyllm's GPT average to the global batch's", 1,
              _e2e_data_parallel)
