"""Graded checks for exercises/10_gpu_and_parallelism.ipynb.

References are the definitions (the library's ``tinyllm.parallel.DataParallel.allreduce_gradients``
needs a live MPI communicator, so it is not called here): the all-reduce mean of data parallelism,
g = (1/R) sum_r g_r on every rank (Li et al., 2020), which equals the gradient of the mean loss over
the global batch; and the roofline (Williams et al., 2009), attainable FLOP/s =
min(peak FLOP/s, arithmetic intensity * memory bandwidth). A message names a mistake only when the
learner's result equals what that mistake computes on the same input.
"""
from __future__ import annotations

import numpy as np

from tinyllm.grading.core import Exercise, Fail, array, call, close, diagnose, diagnose_cases, matches, number

rng = np.random.default_rng(909)
EXERCISES: list[Exercise] = []

# --- all-reduce mean ---------------------------------------------------------------------------
ex = Exercise("allreduce_mean", "All-reduce: every rank gets the mean gradient")
R = 4
grads = rng.standard_normal((R, 3, 5)).astype(np.float32)          # (R, ...) one gradient per rank
grads3 = (100 * rng.standard_normal((3, 7))).astype(np.float32)    # an odd number of ranks, 1-D gradients
grads1 = rng.standard_normal((1, 2, 2, 2)).astype(np.float32)      # a single rank
# a linear model's MSE gradient: per-rank gradients on equal shards average to the global-batch gradient
X = rng.standard_normal((16, 3)).astype(np.float32)
Y = rng.standard_normal(16).astype(np.float32)
W = rng.standard_normal(3).astype(np.float32)


def _mse_grad(x, y):
    return (2.0 / len(y)) * x.T @ (x @ W - y)                       # (3,)


shard_grads = np.stack([_mse_grad(X[r * 4:(r + 1) * 4], Y[r * 4:(r + 1) * 4]) for r in range(R)])   # (R, 3)


def _judge_allreduce(rs):
    for g, r in zip((grads, grads3, grads1), rs):
        what = f"allreduce_mean(grads) for {g.shape[0]} ranks, grads {g.shape}"
        out = array(r, what, floating=True)
        g64 = g.astype(np.float64)
        want = np.broadcast_to(g64.mean(axis=0), g.shape)
        if out.shape != g.shape and out.shape == g.shape[1:] and matches(out, want[0]):
            raise Fail(f"{what} has shape {out.shape}, the mean of one rank: every rank receives the mean, so return "
                       f"shape {g.shape} (np.broadcast_to)")
        if out.shape != g.shape and out.shape == (1,) + g.shape[1:] and matches(out, want[:1]):
            raise Fail(f"{what} has shape {out.shape}: every rank receives the mean, so return shape {g.shape} "
                       "(np.broadcast_to the input's shape)")
        array(out, what, shape=g.shape)
        diagnose(out, want, [
            ("every rank got the SUM of the gradients: divide by the number of ranks R (an all-reduce sums; "
             "data parallelism then averages)", np.broadcast_to(g64.sum(axis=0), g.shape)),
            ("the gradients came back unchanged: every rank must receive the mean over ranks (axis 0)", g64),
            ("the mean is taken over the last axis: average over the ranks, axis 0",
             np.broadcast_to(g64.mean(axis=-1, keepdims=True), g.shape)),
            ("every rank got the sum divided by R - 1: divide by R, the number of ranks",
             np.broadcast_to(g64.sum(axis=0) / max(g.shape[0] - 1, 1), g.shape)),
        ], rtol=1e-5, atol=1e-6)
        array(out, what, dtype=g.dtype)
        close(out, want, what, rtol=1e-5, atol=1e-6,
              hint="the mean over axis 0 (the ranks), copied to every rank: result shape (R, ...)")


def _judge_global(rs):
    out = array(rs[0], "allreduce_mean(per-shard gradients)", shape=shard_grads.shape, floating=True)
    for rank in range(R):
        close(out[rank], _mse_grad(X, Y), f"rank {rank}'s averaged gradient vs the gradient on the whole batch",
              rtol=1e-4, atol=1e-5, hint="with equal shards the mean of the per-rank gradients is the global-batch gradient")


ex.test("mean over ranks on every rank, float32 (4, 3 and 1 ranks)", 3, [call(grads), call(grads3), call(grads1)],
        _judge_allreduce)
ex.test("equals the gradient on the global batch on every rank", 1, [call(shard_grads)], _judge_global)
EXERCISES.append(ex)

# --- roofline ----------------------------------------------------------------------------------
ex = Exercise("attainable_flops", "The roofline: attainable FLOP/s at an arithmetic intensity")
# (intensity FLOP/byte, peak FLOP/s, bandwidth bytes/s): two machines, below, at and above their ridge points
ROOF = [(0.25, 60e12, 3.0e12), (2.0, 60e12, 3.0e12), (20.0, 60e12, 3.0e12), (500.0, 60e12, 3.0e12),
        (0.5, 1.0e12, 100e9), (7.0, 989e12, 3.35e12), (1e4, 989e12, 3.35e12)]


def _judge_roofline(rs):
    gots = [number(r, f"attainable_flops({ai}, {peak:g}, {bw:g})") for (ai, peak, bw), r in zip(ROOF, rs)]
    wants = [min(peak, ai * bw) for ai, peak, bw in ROOF]
    bad = next((k for k, (g, w) in enumerate(zip(gots, wants)) if not np.isclose(g, w, rtol=1e-9, atol=0)), None)
    if bad is None:
        return
    ai, peak, bw = ROOF[bad]
    what = f"attainable_flops({ai}, {peak:g}, {bw:g}) = {gots[bad]:.4g}, expected {wants[bad]:.4g}"
    units = "intensity is FLOP per byte and bandwidth bytes per second, so FLOP/s = intensity * bandwidth"
    diagnose_cases(gots, wants, [
        ("always the compute peak: below the ridge point the memory bandwidth limits, attainable = intensity * "
         "bandwidth", [p for _, p, _ in ROOF]),
        ("it exceeds the compute peak: take min(peak, intensity * bandwidth)", [a * b for a, _, b in ROOF]),
        ("it takes the larger of the two roofs: attainable = min(peak, intensity * bandwidth)",
         [max(p, a * b) for a, p, b in ROOF]),
        (units, [min(p, a / b) for a, p, b in ROOF]),
        (units, [min(p, b / a) for a, p, b in ROOF]),
        ("it uses the peak and bandwidth of one machine whatever the arguments", [min(60e12, a * 3.0e12) for a, _, _ in ROOF]),
    ], what=what, rtol=1e-9, atol=0.0)
    if ai * bw < peak and np.isclose(gots[bad], peak, rtol=1e-9):
        raise Fail(f"{what}: below the ridge point (intensity < peak / bandwidth) the memory bandwidth limits")
    if ai * bw > peak and np.isclose(gots[bad], ai * bw, rtol=1e-9):
        raise Fail(f"{what}: above the ridge point the result cannot exceed the compute peak")
    raise Fail(f"{what}: min(peak_flops, intensity * bandwidth)")


ex.test("memory-bound below the ridge, compute-bound above, on two machines", 2, [call(*c) for c in ROOF], _judge_roofline)
EXERCISES.append(ex)
