"""Normalisation layers over the last axis: LayerNorm and RMSNorm."""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from tinyllm.backend import get_array_module
from tinyllm.nn.module import Module, Parameter, _check_float_array
from tinyllm.threads import as_rows, map_rows


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
        w, b = self.weight.data, None if self.bias is None else self.bias.data
        xhat = xp.empty(x.shape, dtype=x.dtype)  # (..., C)
        r = xp.empty(x.shape[:-1] + (1,), dtype=x.dtype)  # (..., 1)
        y = xp.empty(x.shape, dtype=xp.result_type(x, w))  # (..., C)
        map_rows(functools.partial(_layer_norm_rows, w=w, b=b, eps=self.eps), as_rows(x), as_rows(xhat),
                 as_rows(r), as_rows(y))  # in row blocks, on the BLAS threads
        self._cache = (xhat, r)
        return y

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("LayerNorm.backward called before forward")
        xhat, r = self._cache
        xp = get_array_module(dy)
        dyx = xp.empty(dy.shape, dtype=xp.result_type(dy, xhat))  # (..., C) dy * xhat
        dx = xp.empty(dy.shape, dtype=xp.result_type(dy, self.weight.data))  # (..., C)
        map_rows(functools.partial(_layer_norm_backward_rows, w=self.weight.data), as_rows(dy), as_rows(xhat),
                 as_rows(r), as_rows(dyx), as_rows(dx))
        self.weight.grad += _sum_leading(dyx)  # (C,) sums over rows stay on one thread: same order, same bits
        if self.bias is not None:
            self.bias.grad += _sum_leading(dy)  # (C,)
        return dx  # r (g - mean(g) - xhat mean(g xhat))

    def __repr__(self) -> str:
        return f"LayerNorm({self.dim}, eps={self.eps})"


def _layer_norm_rows(x, xhat, r, y, *, w, b, eps):
    """Rows of LayerNorm's forward: xhat = (x - mu) r, r = 1 / sqrt(var + eps), y = xhat w + b (into xhat, r, y)."""
    xp = get_array_module(x)
    xp.subtract(x, x.mean(axis=-1, keepdims=True), out=xhat)  # x - mu
    var = xp.multiply(xhat, xhat).mean(axis=-1, keepdims=True)  # (n, 1) biased variance
    xp.add(var, eps, out=r)
    xp.sqrt(r, out=r)
    xp.divide(1.0, r, out=r)
    xhat *= r
    xp.multiply(xhat, w, out=y)
    if b is not None:
        y += b


def _layer_norm_backward_rows(dy, xhat, r, dyx, g, *, w):
    """Rows of LayerNorm's backward: dyx = dy xhat (for dL/dw) and g = r (g - mean(g) - xhat mean(g xhat)),
    g = dy w, the gradient through mu and var (into dyx and g)."""
    xp = get_array_module(dy)
    xp.multiply(dy, xhat, out=dyx)
    xp.multiply(dy, w, out=g)
    m_g = g.mean(axis=-1, keepdims=True)  # (n, 1) through the mean
    tmp = xp.multiply(g, xhat)
    m_gx = tmp.mean(axis=-1, keepdims=True)  # (n, 1) through the variance
    g -= m_g
    xp.multiply(xhat, m_gx, out=tmp)
    g -= tmp
    g *= r


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
