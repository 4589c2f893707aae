"""Softmax as a layer, with its Jacobian-vector product as backward."""
from __future__ import annotations

from tinyllm.nn import functional as F
from tinyllm.nn.module import Module


class Softmax(Module):
    """y = softmax(x) along ``axis``.

    The Jacobian is dy_i/dx_j = y_i (delta_ij - y_j), so without forming it::

        dx = y * (dy - sum_j(dy_j y_j))
    """

    def __init__(self, axis: int = -1):
        self.axis = axis
        self._y = None

    def forward(self, x):
        self._y = F.softmax(x, axis=self.axis)
        return self._y

    def backward(self, dy):
        if self._y is None:
            raise RuntimeError("Softmax.backward called before forward")
        y = self._y
        return y * (dy - (dy * y).sum(axis=self.axis, keepdims=True))

    def __repr__(self) -> str:
        return f"Softmax(axis={self.axis})"
