"""Inverted dropout (Srivastava et al. 2014), seeded."""
from __future__ import annotations

import numpy as np

from tinyllm.backend import get_array_module
from tinyllm.nn.module import Module


class Dropout(Module):
    """In training, zero each element with probability p and scale the survivors by 1/(1-p).

    The scaling keeps E[y] = x, so in eval mode the layer is the identity and
    nothing changes between training and inference. Backward applies the same
    mask and scale: dx = dy * mask / (1 - p).

    The mask is drawn on the host from ``rng`` (a seeded numpy Generator), so a
    given seed gives the same masks on the CPU and the GPU.
    """

    def __init__(self, p: float = 0.5, rng: np.random.Generator | int | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability p must be in [0, 1], got {p}")
        self.p = float(p)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)  # int seed or None
        self._mask = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        xp = get_array_module(x)
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.p  # (...) same shape as x
        self._mask = xp.asarray(keep.astype(x.dtype) * x.dtype.type(scale))  # 0 or 1/(1-p)
        return x * self._mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"
