"""Elementwise activations: ReLU, GELU (tanh form) and SiLU, each with its derivative."""
from __future__ import annotations

from tinyllm.nn import functional as F
from tinyllm.nn.module import Module


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
    once per element; the output is bit-identical to ``functional.gelu``.
    """

    def __init__(self):
        self._cache = None

    def forward(self, x):
        t = F.gelu_tanh_term(x)  # tanh u
        self._cache = (x, t)
        y = t + 1.0
        y *= x
        y *= 0.5
        return y

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("GELU.backward called before forward")
        x, t = self._cache
        d = x * x
        d *= 3.0 * F.GELU_C
        d += 1.0
        d *= F.GELU_K  # du/dx
        d *= 1.0 - t * t
        d *= x
        d += 1.0 + t
        d *= 0.5  # dy/dx
        d *= dy
        return d

    def __repr__(self) -> str:
        return "GELU()"


class SiLU(_Elementwise):
    """y = x sigmoid(x);  dy/dx = s (1 + x (1 - s)) with s = sigmoid(x) (Elfwing et al. 2018)."""

    _f = staticmethod(F.silu)

    @staticmethod
    def _df(x):
        s = F.sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
