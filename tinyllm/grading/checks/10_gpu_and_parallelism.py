"""Graded checks for exercises/10_gpu_and_parallelism.ipynb.

References are the definitions (the library's ``tinyllm.parallel.DataParallel.allreduce_gradients``
needs a live MPI communicator, so it is not called here): the all-reduce mean of data parallelism,
g = (1/R) sum_r g_r on every rank (Li et al., 2020), which equals the gradient of the mean loss over
the global batch; and the roofline (Williams et al., 2009), attainable FLOP/s =
min(peak FLOP/s, arithmetic intensity * memory bandwidth).
"""
from __future__ import annotations

import numpy as np

from tinyllm.grading.core import Exercise, Fail, array, call, close, number

rng = np.random.default_rng(909)
EXERCISES: list[Exercise] = []

# --- all-reduce mean ---------------------------------------------------------------------------
ex = Exercise("allreduce_mean", "All-reduce: every rank gets the mean gradient")
R = 4
grads = rng.standard_normal((R, 3, 5)).astype(np.float32)          # (R, ...) one gradient per rank
# a linear model's MSE gradient: per-rank gradients on equal shards average to the global-batch gradient
X = rng.standard_normal((16, 3)).astype(np.float32)
Y = rng.standard_normal(16).astype(np.float32)
W = rng.standard_normal(3).astype(np.float32)


def _mse_grad(x, y):
    return (2.0 / len(y)) * x.T @ (x @ W - y)                       # (3,)


shard_grads = np.stack([_mse_grad(X[r * 4:(r + 1) * 4], Y[r * 4:(r + 1) * 4]) for r in range(R)])   # (R, 3)


def _judge_allreduce(rs):
    out = array(rs[0], "allreduce_mean(grads)", shape=grads.shape, dtype=np.float32)
    want = np.broadcast_to(grads.astype(np.float64).mean(axis=0), grads.shape)
    if np.allclose(out, np.broadcast_to(grads.astype(np.float64).sum(axis=0), grads.shape), rtol=1e-5):
        raise Fail("every rank got the SUM of the gradients: divide by the number of ranks R (an all-reduce sums; "
                   "data parallelism then averages)")
    if np.allclose(out, grads, rtol=1e-6):
        raise Fail("the gradients came back unchanged: every rank must receive the mean over ranks (axis 0)")
    close(out, want, "allreduce_mean(grads)", rtol=1e-5, atol=1e-6,
          hint="the mean over axis 0 (the ranks), copied to every rank: result shape (R, ...)")


def _judge_global(rs):
    out = array(rs[0], "allreduce_mean(per-shard gradients)", shape=shard_grads.shape, floating=True)
    close(out[0], _mse_grad(X, Y), "the averaged gradient vs the gradient on the whole batch", rtol=1e-4, atol=1e-5,
          hint="with equal shards the mean of the per-rank gradients is the global-batch gradient")


ex.test("mean over ranks on every rank, float32", 3, [call(grads)], _judge_allreduce)
ex.test("equals the gradient on the global batch", 1, [call(shard_grads)], _judge_global)
EXERCISES.append(ex)

# --- roofline ----------------------------------------------------------------------------------
ex = Exercise("attainable_flops", "The roofline: attainable FLOP/s at an arithmetic intensity")
PEAK, BW = 60e12, 3.0e12                                            # FLOP/s, bytes/s (ridge at 20 FLOP/byte)
AIS = [0.25, 2.0, 20.0, 500.0]                                      # matvec-like ... large matmul


def _judge_roofline(rs):
    for ai, r in zip(AIS, rs):
        got = number(r, f"attainable_flops({ai}, peak, bandwidth)")
        want = min(PEAK, ai * BW)
        if ai < 20 and np.isclose(got, PEAK, rtol=1e-9):
            raise Fail(f"at intensity {ai} FLOP/byte the result is the compute peak: below the ridge point the "
                       "memory bandwidth limits, attainable = intensity * bandwidth")
        if ai > 20 and np.isclose(got, ai * BW, rtol=1e-9):
            raise Fail(f"at intensity {ai} FLOP/byte the result exceeds the compute peak: take min(peak, intensity * bandwidth)")
        if np.isclose(got, ai / BW, rtol=1e-9) or np.isclose(got, BW / ai, rtol=1e-9):
            raise Fail("intensity is FLOP per byte, bandwidth bytes per second: FLOP/s = intensity * bandwidth")
        close(got, want, f"attainable_flops({ai})", rtol=1e-9, hint="min(peak_flops, intensity * bandwidth)")


ex.test("memory-bound below the ridge, compute-bound above", 2, [call(a, PEAK, BW) for a in AIS], _judge_roofline)
EXERCISES.append(ex)
