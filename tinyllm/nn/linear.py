"""Linear (fully connected) layer: y = x W + b, with W of shape (IN, OUT)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from tinyllm import init
from tinyllm.nn.module import Module, Parameter, _check_float_array
from tinyllm.plug import PlugError


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
        y = x @ self.weight.data  # (..., OUT)
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, dy):
        x = self._x
        if x is None:
            raise RuntimeError("Linear.backward called before forward")
        x2 = x.reshape(-1, self.in_features)  # (N, IN)
        dy2 = dy.reshape(-1, self.out_features)  # (N, OUT)
        self.weight.grad += x2.T @ dy2  # (IN, OUT)
        if self.bias is not None:
            self.bias.grad += dy2.sum(axis=0)  # (OUT,)
        return dy @ self.weight.data.T  # (..., IN)

    def __repr__(self) -> str:
        return f"Linear(in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None})"
