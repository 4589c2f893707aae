"""The weight products of SmolLM2-135M in NumPy's BLAS against PyTorch's, at 1, 8 and 128 rows.

    python benchmarks/blas_products.py [--repeats 3] [--rows 1,8,128] [--threads 1,2]

A decode step multiplies one row (batch 1) or B rows (batched decode) by every weight matrix,
a prefill T rows. This script times exactly those products, the model's own 121 matrices
(538 MB of fp32: each block's wqkv, wo, wgu, wdown and the tied head E^T), ``x @ W`` for each,
once with NumPy (the OpenBLAS wheel NumPy ships) and once with PyTorch on the same memory
(``torch.from_numpy``; the CPU wheel's MKL), in alternating rounds. It shows how much of the
engine's speed is set by the BLAS library rather than by the engine:

- ``numpy / torch``: the speed of NumPy's products relative to PyTorch's (above 1: NumPy faster);
- ``cost vs 1 row``: what the B-row products cost in units of the one-row products of the same
  library, which bounds batched decoding: batch B cannot give more than B / cost times batch 1's
  aggregate tok/s.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def weight_matrices(model) -> list:
    """The (C_in, C_out) matrices a token reads, in order; the tied head as the view E^T."""
    mats = [getattr(b, name).data for b in model.blocks for name in ("wqkv", "wo", "wgu", "wdown")]
    return mats + [model.tok_embd.data.T if model.head is None else model.head.data]


SETTLE_S = 0.5   # pause before timing: the other library's idle threads spin for a while after their last call


def time_products(mm, xs: dict, mats: list) -> float:
    """Seconds for ``mm(x, W)`` over every matrix, with x of W's input width (after a pause and one untimed
    product, so the threads of the library timed before have gone to sleep and this one's are awake)."""
    time.sleep(SETTLE_S)
    mm(xs[mats[0].shape[0]], mats[0])
    t0 = time.perf_counter()
    for w in mats:
        mm(xs[w.shape[0]], w)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds")
    ap.add_argument("--rows", default="1,8,128", help="rows of x: 1 and B (decode), T (prefill)")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args(argv)
    rows = [int(r) for r in args.rows.split(",")]
    threads = [int(t) for t in args.threads.split(",")]

    import torch
    from threadpoolctl import threadpool_limits

    from tinyllm.models.smollm2 import load_smollm2

    model, _ = load_smollm2("cpu")
    mats = weight_matrices(model)
    tmats = [torch.from_numpy(w) for w in mats]                      # the same memory
    rng = np.random.default_rng(0)
    widths = sorted({w.shape[0] for w in mats})
    xs = {n: {k: rng.standard_normal((n, k), dtype=np.float32) for k in widths} for n in rows}
    txs = {n: {k: torch.from_numpy(x) for k, x in d.items()} for n, d in xs.items()}
    print(f"{len(mats)} matrices, {sum(w.nbytes for w in mats) / 1e6:.0f} MB fp32; numpy {np.__version__}, "
          f"torch {torch.__version__}; {args.repeats} alternating rounds, medians")

    runs: dict = {}
    for _ in range(args.repeats):
        for nt in threads:
            with threadpool_limits(nt, user_api="blas"):                # NumPy's OpenBLAS only
                for n in rows:
                    runs.setdefault(("numpy", nt, n), []).append(time_products(np.matmul, xs[n], mats))
            torch.set_num_threads(nt)                                  # outside threadpool_limits, which
            with torch.no_grad():                                      # would hold torch's threads too
                for n in rows:
                    runs.setdefault(("torch", nt, n), []).append(time_products(torch.matmul, txs[n], tmats))
    med = {key: statistics.median(v) for key, v in runs.items()}

    print(f"{'threads':>7} {'rows':>5} {'numpy ms':>9} {'torch ms':>9} {'numpy / torch':>14} "
          f"{'numpy cost vs 1 row':>20} {'torch cost vs 1 row':>20}")
    for nt in threads:
        for n in rows:
            a, b = med[("numpy", nt, n)], med[("torch", nt, n)]
            cost = ("", "")
            if 1 in rows:
                cost = (f"{a / med[('numpy', nt, 1)]:.2f}", f"{b / med[('torch', nt, 1)]:.2f}")
            print(f"{nt:>7} {n:>5} {a * 1e3:>9.1f} {b * 1e3:>9.1f} {b / a:>13.2f}x {cost[0]:>20} {cost[1]:>20}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
