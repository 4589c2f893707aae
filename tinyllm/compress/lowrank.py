"""Low-rank factorisation of linear layers with the truncated SVD.

``W = U S V^T`` (``W`` is ``(IN, OUT)``). Keeping the ``r`` largest singular values
gives the best rank-``r`` approximation in both the Frobenius and spectral norm
(Eckart-Young-Mirsky theorem), stored as two factors::

    A = U_r sqrt(S_r)   (IN, r)        B = sqrt(S_r) V_r^T   (r, OUT)        W ~ A @ B

That saves parameters only when ``r (IN + OUT) < IN * OUT``, i.e. below the
break-even rank ``IN * OUT / (IN + OUT)``. The rank of each layer is read off its
spectrum: the smallest ``r`` whose singular values hold a fraction ``energy`` of
``sum s_i^2`` (the squared Frobenius norm). Layers whose rank would not save
anything are left dense.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tinyllm.backend import get_array_module
from tinyllm.nn.module import Module, Parameter


def spectrum(w: Any) -> Any:
    """Singular values of ``w``, largest first."""
    xp = get_array_module(w)
    return xp.linalg.svd(w.astype(xp.float32), compute_uv=False)


def choose_rank(s: Any, energy: float) -> int:
    """Smallest rank whose singular values ``s`` hold ``energy`` of ``sum s^2``."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    xp = get_array_module(s)
    e = xp.cumsum(s.astype(xp.float64) ** 2)
    total = float(e[-1])
    if total == 0.0:
        return 1
    return int(min(int(xp.searchsorted(e / total, energy - 1e-12)) + 1, s.shape[0]))


def break_even_rank(n_in: int, n_out: int) -> int:
    """Largest rank that still stores fewer numbers than the dense matrix."""
    return (n_in * n_out - 1) // (n_in + n_out)


def svd_factorize(w: Any, rank: int | None = None, energy: float = 0.9) -> tuple[Any, Any]:
    """Factor ``w (IN, OUT)`` into ``A (IN, r)`` and ``B (r, OUT)``; ``r`` given or from ``energy``."""
    if getattr(w, "ndim", None) != 2 or w.size == 0:
        raise ValueError(f"w must be a non-empty 2-D (IN, OUT) array, got shape {getattr(w, 'shape', None)}")
    xp = get_array_module(w)
    U, s, Vt = xp.linalg.svd(w.astype(xp.float32), full_matrices=False)    # (IN, K), (K,), (K, OUT)
    r = choose_rank(s, energy) if rank is None else int(rank)
    if not 1 <= r <= s.shape[0]:
        raise ValueError(f"rank must be in 1..{s.shape[0]}, got {r}")
    root = xp.sqrt(s[:r])
    A = (U[:, :r] * root).astype(w.dtype)                                   # (IN, r)
    B = (root[:, None] * Vt[:r]).astype(w.dtype)                            # (r, OUT)
    return A, B


class LowRankLinear(Module):
    """``y = (x @ A) @ B + b``: two thin products instead of one square one (inference only)."""

    def __init__(self, A: Any, B: Any, bias: Any | None = None):
        if A.shape[1] != B.shape[0]:
            raise ValueError(f"A (IN, r) and B (r, OUT) disagree on r: {tuple(A.shape)} vs {tuple(B.shape)}")
        self.A = Parameter(A)
        self.B = Parameter(B)
        self.bias = Parameter(bias) if bias is not None else None

    @classmethod
    def from_weight(cls, w: Any, bias: Any | None = None, rank: int | None = None, energy: float = 0.9):
        return cls(*svd_factorize(w, rank, energy), bias)

    @property
    def rank(self) -> int:
        return int(self.A.shape[1])

    def forward(self, x: Any) -> Any:
        y = (x @ self.A.data) @ self.B.data                                 # (..., r) -> (..., OUT)
        return y if self.bias is None else y + self.bias.data


def plan_ranks(weights: dict[str, Any], energy: float) -> list[dict[str, Any]]:
    """For each named ``(IN, OUT)`` weight: rank for ``energy``, whether to factor it, parameters saved.

    Returns one dict a layer: ``name, shape, rank, factor (bool), params_before,
    params_after, saved``. ``factor`` is False when the rank is above break-even.
    """
    rows = []
    for name, w in weights.items():
        n_in, n_out = w.shape
        r = choose_rank(spectrum(w), energy)
        factor = r <= break_even_rank(n_in, n_out)
        after = r * (n_in + n_out) if factor else n_in * n_out
        rows.append({"name": name, "shape": (n_in, n_out), "rank": r, "factor": bool(factor),
                     "params_before": n_in * n_out, "params_after": after, "saved": n_in * n_out - after})
    return rows
