"""Linear (fully connected) layer: y = x W + b, with W of shape (IN, OUT)."""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from tinyllm import init
from tinyllm.backend import get_array_module
from tinyllm.nn.module import Module, Parameter, _check_float_array
from tinyllm.plug import PlugError
from tinyllm.threads import compute_threads, map_rows


# A block of rows of a product does more multiply-adds than this, or the product is not split: below it,
# OpenBLAS may take other kernels that sum in another order, and which depend on the thread count (on
# SkylakeX: "small matrix" kernels up to 100^3, "direct sgemm" up to 28 * 512^2 on one thread).
SPLIT_MATMUL_MACS = 1 << 23


def matmul(a, b, *, bias=None, out=None, accumulate: bool = False):
    """a (M, K) @ b (K, N) (+ bias (N,)) -> (M, N), into ``out`` (``accumulate``: out += a @ b).

    A large product runs in one block of a's rows per BLAS thread, each block on one BLAS thread
    (:func:`tinyllm.threads.map_rows`): the threads keep working when other jobs take the CPU, where
    BLAS's own threads wait for each other, and BLAS's threads do not spin beside the elementwise
    blocks. Every block does more than ``SPLIT_MATMUL_MACS`` multiply-adds, where BLAS computes each
    row as in the whole product (it splits rows among its own threads the same way), so the bits are
    those of ``a @ b``. No block has a single row: NumPy multiplies one row by a matrix-vector
    product, which sums in another order.
    """
    xp = get_array_module(a)
    if out is None:
        out = xp.empty((a.shape[0], b.shape[1]), dtype=xp.result_type(a, b))
    rows = functools.partial(_matmul_rows, b=b, bias=bias, accumulate=accumulate)
    M, K, N = a.shape[0], a.shape[1], b.shape[1]
    blocks = compute_threads()
    while blocks > 1:
        smallest = _smallest_block(M, blocks)
        if smallest >= 2 and smallest * K * N > SPLIT_MATMUL_MACS:
            break
        blocks -= 1
    if blocks > 1:
        map_rows(rows, a, out, threads=blocks, one_blas_thread=True, block_elements=max(a.size, out.size))
    else:
        rows(a, out)                                      # one call, on BLAS's own threads
    return out


def _smallest_block(rows: int, blocks: int) -> int:
    step = -(-rows // blocks)                             # map_rows' rows per block
    return rows - step * (-(-rows // step) - 1)


def _matmul_rows(a, out, *, b, bias, accumulate):
    if accumulate:
        out += a @ b
    else:
        get_array_module(a).matmul(a, b, out=out)
    if bias is not None:
        out += bias


class Linear(Module):
    """y = x @ W + b over the last axis of x (N, IN) or (B, T, IN).

    W is stored in the math orientation (IN, OUT) (PyTorch stores (OUT, IN)).
    Both W and b start from U(-1/sqrt(IN), 1/sqrt(IN)), PyTorch's default; W comes from
    :func:`tinyllm.init.linear_weight`, which ``plug.use(linear_weight=...)`` can replace.

    Backward (chain rule, rows of x flattened to X (N, IN), dY (N, OUT))::

        dL/dW = X^T dY      (IN, OUT)
        dL/db = sum_n dY_n  (OUT,)
        dL/dX = dY W^T      (N, IN)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 rng: np.random.Generator | int | None = None, dtype: Any = np.float32):
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got ({in_features}, {out_features})")
        self.in_features, self.out_features = int(in_features), int(out_features)
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)  # one stream for W and b
        a = 1.0 / math.sqrt(in_features)
        w = np.asarray(init.linear_weight(self.in_features, self.out_features, rng))  # (IN, OUT), a plug point
        if w.shape != (self.in_features, self.out_features) or not np.issubdtype(w.dtype, np.floating):
            raise PlugError(f"linear_weight({self.in_features}, {self.out_features}, rng) must return a float array of "
                             f"shape ({self.in_features}, {self.out_features}), got {w.dtype} {w.shape}")
        self.weight = Parameter(w.astype(dtype))  # (IN, OUT)
        self.bias = Parameter(init.uniform((out_features,), -a, a, rng=rng, dtype=dtype)) if bias else None  # (OUT,)
        self._x = None

    def forward(self, x):
        _check_float_array(x, "x")
        if x.ndim not in (2, 3) or x.shape[-1] != self.in_features:
            IN = self.in_features
            raise ValueError(f"{self!r}: x must have shape (N, {IN}) or (B, T, {IN}), got {tuple(x.shape)}")
        self._x = x  # (..., IN)
        bias = None if self.bias is None else self.bias.data
        y = matmul(x.reshape(-1, self.in_features), self.weight.data, bias=bias)  # (N, OUT)
        return y.reshape(x.shape[:-1] + (self.out_features,))  # (..., OUT)

    def backward(self, dy):
        x = self._x
        if x is None:
            raise RuntimeError("Linear.backward called before forward")
        x2 = x.reshape(-1, self.in_features)  # (N, IN)
        dy2 = dy.reshape(-1, self.out_features)  # (N, OUT)
        matmul(x2.T, dy2, out=self.weight.grad, accumulate=True)  # (IN, OUT) += X^T dY
        if self.bias is not None:
            self.bias.grad += dy2.sum(axis=0)  # (OUT,)
        return matmul(dy2, self.weight.data.T).reshape(dy.shape[:-1] + (self.in_features,))  # (..., IN)

    def __repr__(self) -> str:
        return f"Linear(in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None})"
