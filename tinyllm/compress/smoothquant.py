"""W8A8: int8 weights *and* int8 activations, naive and with SmoothQuant's migration.

Xiao, Lin, Seznec, Wu, Demouth, Han (2023), "SmoothQuant: Accurate and Efficient
Post-Training Quantization for Large Language Models", ICML 2023 (arXiv:2211.10438).

With both operands in int8 a product runs on integer units (``int8 x int8 -> int32``).
Weights quantise easily (per output channel, :func:`~tinyllm.compress.quantize.quantize`),
activations do not: a few input channels are systematically much larger than the rest
("outlier channels"), so one scale per token wastes most of the 8 bits on them. Here:

- activations: symmetric int8 with one scale per token (per row of ``x``), computed on the fly;
- weights: symmetric int8 with one scale per output channel.

SmoothQuant migrates the difficulty from activations to weights with a per-input-channel
factor folded into the previous operation (:mod:`tinyllm.compress.fold`), paper eq. 4::

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha),     X' = X diag(s)^-1,   W' = diag(s) W

``alpha`` (the migration strength) shares the range between the two: 0 leaves the
activations alone, 1 moves all of it into the weights; the paper uses 0.5 for most models.
The products are simulated in float32 on the integer codes (exact for integer values
below 2^24, and the int8 rounding dominates any accumulation error).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tinyllm import plug
from tinyllm.backend import get_array_module
from tinyllm.compress.fold import KINDS, fold_input_scale, group_wo_stat
from tinyllm.compress.patch import MatmulWeight
from tinyllm.compress.quantize import quantize
from tinyllm.errors import QuantizationError


@plug.point("smooth_scales")
def smooth_scales(act_absmax: Any, w: Any, alpha: float = 0.5) -> Any:
    """SmoothQuant's migration factor ``s_j = max|X_j|^alpha / max_k |W_jk|^(1-alpha)`` for an ``(IN, OUT)`` weight.

    ``act_absmax`` is the largest ``|x_j|`` of each input channel ``(IN,)`` on the calibration
    set. Channels where either maximum is 0 get ``s_j = 1`` (nothing to migrate).
    """
    xp = get_array_module(w)
    if not 0.0 <= alpha <= 1.0:
        raise QuantizationError(f"alpha must be in [0, 1], got {alpha}")
    a = xp.asarray(act_absmax, dtype=xp.float64)
    if a.shape != (w.shape[0],):
        raise QuantizationError(f"act_absmax must have one entry per input channel ({w.shape[0]},), got {tuple(a.shape)}")
    wmax = xp.abs(w).max(axis=1).astype(xp.float64)                        # (IN,)
    ok = (a > 0) & (wmax > 0)
    s = xp.where(ok, xp.where(ok, a, 1.0) ** alpha / xp.where(ok, wmax, 1.0) ** (1.0 - alpha), 1.0)
    return s.astype(xp.float32)


def quantize_per_token(x: Any) -> tuple[Any, Any]:
    """Symmetric int8 codes of each row of ``x`` ``(..., IN)``: returns ``(codes as float32, scale (..., 1))``."""
    qt = quantize(x, 8, symmetric=True, granularity="channel")              # codes (..., 1, IN), scale (..., 1, 1)
    return qt.codes[..., 0, :].astype(np.float32), qt.scale[..., 0, :]


class W8A8Weight(MatmulWeight):
    """An ``(IN, OUT)`` weight held as int8 per output channel; ``x @ self`` also rounds ``x`` to int8 per token."""

    def __init__(self, w: Any):
        qt = quantize(np.ascontiguousarray(w.T), 8, symmetric=True, granularity="channel")  # codes (OUT, 1, IN)
        self.codes = np.ascontiguousarray(qt.codes[:, 0, :].T)              # (IN, OUT) int8
        self.scale = qt.scale[:, 0, 0]                                      # (OUT,) float32
        self._w = self.codes.astype(np.float32)                             # the integer codes as floats, for BLAS
        self.shape = tuple(w.shape)
        self.dtype = np.dtype(np.float32)

    @property
    def nbytes(self) -> int:
        """Storage: one byte a weight and an fp16 scale per output channel."""
        return int(self.codes.size + 2 * self.scale.size)

    def rmatmul(self, x: Any) -> Any:
        xq, sx = quantize_per_token(x)                                      # (..., IN), (..., 1)
        return (xq @ self._w) * sx * self.scale                             # (..., OUT)


def w8a8_apply(model: Any, recs: list[Any] | None = None, alpha: float | None = 0.5) -> None:
    """Turn every block weight of ``model`` into a :class:`W8A8Weight`, in place.

    ``alpha=None`` is naive W8A8 (no migration, ``recs`` unused). Otherwise ``recs`` are the
    float model's recorders in :func:`~tinyllm.compress.patch.linear_weights` order and each
    weight's inputs are smoothed first. Save :func:`tinyllm.compress.fold.block_arrays` to undo it.
    """
    c = model.config
    for i, blk in enumerate(model.blocks):
        if alpha is not None:
            scales = {}
            for j, kind in enumerate(KINDS):
                w, amax = getattr(blk, kind).data, recs[4 * i + j].abs_max
                if kind == "wo":                                            # one factor per value channel (GQA)
                    wmax = group_wo_stat(np.abs(w).max(axis=1), c, "max")
                    scales[kind] = smooth_scales(group_wo_stat(amax, c, "max"), wmax[:, None], alpha)
                else:
                    scales[kind] = smooth_scales(amax, w, alpha)
            for kind in KINDS:
                fold_input_scale(blk, kind, scales[kind], c)
        for kind in KINDS:
            p = getattr(blk, kind)
            p.data = W8A8Weight(p.data)
