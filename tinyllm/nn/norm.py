"""Normalisation layers over the last axis: LayerNorm and RMSNorm."""
from __future__ import annotations

from typing import Any

import numpy as np

from tinyllm.backend import get_array_module
from tinyllm.nn.module import Module, Parameter, _check_float_array


def _sum_leading(a):
    """Sum over every axis but the last: (..., C) -> (C,)."""
    return a.reshape(-1, a.shape[-1]).sum(axis=0)


class LayerNorm(Module):
    """y = (x - mu) / sqrt(var + eps) * w + b over the last axis (Ba, Kiros & Hinton 2016).

    With xhat = (x - mu) r, r = 1 / sqrt(var + eps) (biased variance) and g = dy * w::

        dL/dw = sum dy * xhat        dL/db = sum dy
        dL/dx = r (g - mean(g) - xhat * mean(g * xhat))

    (the two means are the gradient flowing through mu and through var).
    """

    def __init__(self, dim: int, eps: float = 1e-5, *, bias: bool = True, dtype: Any = np.float32):
        self.dim, self.eps = int(dim), float(eps)
        self.weight = Parameter(np.ones(dim, dtype=dtype))  # (C,)
        self.bias = Parameter(np.zeros(dim, dtype=dtype)) if bias else None  # (C,)
        self._cache = None

    def forward(self, x):
        _check_float_array(x, "x", last_dim=self.dim)
        xp = get_array_module(x)
        mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
        xc = x - mu  # (..., C)
        r = 1.0 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + self.eps)  # (..., 1)
        xhat = xc * r  # (..., C)
        self._cache = (xhat, r)
        y = xhat * self.weight.data
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("LayerNorm.backward called before forward")
        xhat, r = self._cache
        self.weight.grad += _sum_leading(dy * xhat)  # (C,)
        if self.bias is not None:
            self.bias.grad += _sum_leading(dy)  # (C,)
        g = dy * self.weight.data  # (..., C)
        m_g = g.mean(axis=-1, keepdims=True)  # (..., 1) through the mean
        m_gx = (g * xhat).mean(axis=-1, keepdims=True)  # (..., 1) through the variance
        g -= m_g
        g -= xhat * m_gx
        g *= r
        return g  # r (g - mean(g) - xhat mean(g xhat))

    def __repr__(self) -> str:
        return f"LayerNorm({self.dim}, eps={self.eps})"


class RMSNorm(Module):
    """y = x / sqrt(mean(x^2) + eps) * w over the last axis (Zhang & Sennrich 2019).

    With xhat = x r, r = 1 / sqrt(mean(x^2) + eps) and g = dy * w::

        dL/dw = sum dy * xhat
        dL/dx = r (g - xhat * mean(g * xhat))
    """

    def __init__(self, dim: int, eps: float = 1e-5, *, dtype: Any = np.float32):
        self.dim, self.eps = int(dim), float(eps)
        self.weight = Parameter(np.ones(dim, dtype=dtype))  # (C,)
        self._cache = None

    def forward(self, x):
        _check_float_array(x, "x", last_dim=self.dim)
        xp = get_array_module(x)
        r = 1.0 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + self.eps)  # (..., 1)
        xhat = x * r  # (..., C)
        self._cache = (xhat, r)
        return xhat * self.weight.data

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("RMSNorm.backward called before forward")
        xhat, r = self._cache
        self.weight.grad += _sum_leading(dy * xhat)  # (C,)
        g = dy * self.weight.data  # (..., C)
        g -= xhat * (g * xhat).mean(axis=-1, keepdims=True)
        g *= r
        return g  # r (g - xhat mean(g xhat))

    def __repr__(self) -> str:
        return f"RMSNorm({self.dim}, eps={self.eps})"
