"""Elementwise activations: ReLU, GELU (tanh form) and SiLU, each with its derivative."""
from __future__ import annotations

from tinyllm.backend import get_array_module
from tinyllm.nn import functional as F
from tinyllm.nn.module import Module
from tinyllm.threads import as_rows, map_rows


class _Elementwise(Module):
    """A parameter-free y = f(x) elementwise; backward is dx = f'(x) * dy."""

    def __init__(self):
        self._x = None

    def forward(self, x):
        self._x = x
        return self._f(x)

    def backward(self, dy):
        if self._x is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._df(self._x) * dy

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ReLU(_Elementwise):
    """y = max(0, x);  dy/dx = 1 where x > 0, else 0."""

    _f = staticmethod(F.relu)

    @staticmethod
    def _df(x):
        return (x > 0).astype(x.dtype)


class GELU(Module):
    """y = 0.5 x (1 + tanh u),  u = k (x + c x^3),  k = sqrt(2/pi), c = 0.044715 (Hendrycks & Gimpel 2016).

    dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) k (1 + 3 c x^2).

    Forward keeps tanh u for the backward pass, so the expensive tanh is evaluated
    once per element; the output is bit-identical to ``functional.gelu``. Both passes
    run in row blocks (:func:`tinyllm.threads.map_rows`): in cache, and on every BLAS thread.
    """

    def __init__(self):
        self._cache = None

    def forward(self, x):
        xp = get_array_module(x)
        t, y = xp.empty(x.shape, dtype=x.dtype), xp.empty(x.shape, dtype=x.dtype)  # tanh u, output
        map_rows(_gelu_rows, as_rows(x), as_rows(t), as_rows(y))
        self._cache = (x, t)
        return y

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("GELU.backward called before forward")
        x, t = self._cache
        xp = get_array_module(dy)
        dx = xp.empty(x.shape, dtype=x.dtype)
        map_rows(_gelu_backward_rows, as_rows(x), as_rows(t), as_rows(dy), as_rows(dx))
        return dx

    def __repr__(self) -> str:
        return "GELU()"


def _gelu_rows(x, t, y):
    """Rows of GELU: t = tanh u (``functional.gelu_tanh_term``), y = 0.5 x (1 + t), written into t and y."""
    xp = get_array_module(x)
    xp.multiply(x, x, out=t)
    t *= F.GELU_C
    t += 1.0
    t *= x
    t *= F.GELU_K  # u = k (x + c x^3)
    xp.tanh(t, out=t)
    xp.add(t, 1.0, out=y)
    y *= x
    y *= 0.5


def _gelu_backward_rows(x, t, dy, d):
    """Rows of dx = dy * [0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2)], written into d."""
    xp = get_array_module(x)
    tmp = xp.multiply(t, t)
    xp.subtract(1.0, tmp, out=tmp)  # 1 - t^2
    xp.multiply(x, x, out=d)
    d *= 3.0 * F.GELU_C
    d += 1.0
    d *= F.GELU_K  # du/dx
    d *= tmp
    d *= x
    xp.add(t, 1.0, out=tmp)
    d += tmp
    d *= 0.5  # dy/dx
    d *= dy


class SiLU(_Elementwise):
    """y = x sigmoid(x);  dy/dx = s (1 + x (1 - s)) with s = sigmoid(x) (Elfwing et al. 2018)."""

    _f = staticmethod(F.silu)

    @staticmethod
    def _df(x):
        s = F.sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
