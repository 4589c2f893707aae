"""Data-parallel training with MPI: every rank trains on its slice of each global batch.

    mpirun -n 2 python scripts/train_data_parallel.py --steps 20 --out params.npz
    python scripts/train_data_parallel.py --steps 20 --out params.npz      # one process, same global batch

Both runs end with the same parameters (up to floating-point summation order),
which tests/test_parallel.py checks. The model is a small MLP classifier built from
tinyllm.nn and trained with AdamW on a seeded synthetic data set, so the script is
quick and needs nothing downloaded.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from tinyllm.nn import GELU, CrossEntropyLoss, Linear, Sequential
from tinyllm.optim import AdamW


def make_data(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: x (N, dim) float64, y (N,) int64."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 2.0, size=(classes, dim))
    y = rng.integers(0, classes, size=n)
    x = centres[y] + rng.normal(0.0, 1.0, size=(n, dim))
    return x, y


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--global-batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--single", action="store_true", help="train in one process, without MPI")
    p.add_argument("--out", required=True, help="where rank 0 saves the final parameters (.npz)")
    args = p.parse_args(argv)

    dim, hidden, classes = 8, 32, 4
    rng = np.random.default_rng(args.seed)
    model = Sequential(Linear(dim, hidden, rng=rng, dtype=np.float64), GELU(),
                       Linear(hidden, classes, rng=rng, dtype=np.float64))
    params = model.parameters()
    loss_fn = CrossEntropyLoss()
    opt = AdamW(params, lr=args.lr, weight_decay=0.01)
    x, y = make_data(args.steps * args.global_batch, dim, classes, seed=args.seed + 1)

    dp = None
    if not args.single:
        from tinyllm.parallel import DataParallel

        dp = DataParallel()
        dp.broadcast_parameters(params)

    loss = float("nan")
    for step in range(args.steps):
        batch = slice(step * args.global_batch, (step + 1) * args.global_batch)
        xb, yb = x[batch], y[batch]                       # (B, dim), (B,) the global batch
        if dp is not None:
            local = dp.shard(args.global_batch)            # this rank's B / R examples
            xb, yb = xb[local], yb[local]
        opt.zero_grad()
        loss = loss_fn.forward(model.forward(xb), yb)
        model.backward(loss_fn.backward())
        if dp is not None:
            dp.allreduce_gradients(params)                 # mean gradient over ranks
        opt.step()

    if dp is None or dp.rank == 0:
        tmp = args.out + ".tmp.npz"
        np.savez(tmp, **{name: p.data for name, p in model.named_parameters()})
        os.replace(tmp, args.out)
        print(f"ranks={1 if dp is None else dp.world_size} steps={args.steps} final loss={loss:.4f}")


if __name__ == "__main__":
    main()
