"""AWQ: activation-aware weight quantisation (Lin et al. 2024, "AWQ: Activation-aware Weight
Quantization for LLM Compression and Acceleration", MLSys 2024, arXiv:2306.00978).

A few input channels carry much larger activations than the others, and the weights
they multiply matter most. AWQ scales those weight rows up before rounding, so their
relative rounding error shrinks, and divides the activations by the same factor
(folded into the previous operation, :mod:`tinyllm.compress.fold`)::

    y = x W = (x / s) (diag(s) W)  ~  (x / s) Q(diag(s) W)

The scale is a power of the mean activation magnitude of each input channel,
``s = s_x^alpha`` (normalised so that ``sqrt(max s * min s) = 1``), and ``alpha`` is searched
on a grid over ``[0, 1]`` to minimise the layer's output error on the calibration inputs
(paper eq. 4-5)::

    alpha* = argmin_alpha || Q(W diag(s)) diag(s)^-1 X - W X ||^2,   s = s_x^alpha

which needs only ``X^T X``: ``||X D||^2 = tr(D^T X^T X D)`` for ``D`` the weight error.
``alpha = 0`` is round-to-nearest itself, so the search never does worse than RTN on the
calibration set. Weights are in tinyllm's layout ``(IN, OUT)``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from tinyllm.backend import get_array_module
from tinyllm.compress.fold import KINDS, expand_wo_scale, fold_input_scale, group_wo_stat
from tinyllm.compress.quantize import fake_quantize
from tinyllm.errors import QuantizationError


def rtn_weight(w: Any, bits: int = 4, group_size: int | None = 64, symmetric: bool = False) -> Any:
    """Round-to-nearest of an ``(IN, OUT)`` weight, grouped along the inputs: dequantised ``(IN, OUT)``."""
    xp = get_array_module(w)
    kw = {"granularity": "group", "group_size": group_size} if group_size else {"granularity": "channel"}
    return xp.ascontiguousarray(fake_quantize(xp.ascontiguousarray(w.T), bits, symmetric=symmetric, **kw).T)


def awq_search(w: Any, act_mean: Any, xtx: Any, *, bits: int = 4, group_size: int | None = 64,
               symmetric: bool = False, grid: int = 11,
               expand: Callable[[Any], Any] | None = None) -> tuple[Any, float, list[float]]:
    """Search AWQ's scale for one ``(IN, OUT)`` weight.

    ``act_mean`` is the mean ``|x|`` of each foldable channel, ``xtx`` the ``(IN, IN)`` sum of
    ``x^T x`` of the recorded inputs. ``expand`` maps a scale of ``act_mean``'s length to the
    ``IN`` rows of ``w`` (for ``wo`` under grouped-query attention; identity otherwise).
    Returns ``(s, alpha, errors)``: the best scale (``act_mean``'s length), its ``alpha``
    and the output error ``tr(D^T X^T X D)`` of each grid point.
    """
    xp = get_array_module(w)
    if grid < 2:
        raise QuantizationError(f"grid must have at least 2 points, got {grid}")
    expand = expand or (lambda s: s)
    base = xp.maximum(xp.asarray(act_mean, dtype=xp.float64), 1e-6)        # (K,)
    if expand(base).shape[0] != w.shape[0]:
        raise QuantizationError(f"the scale expands to {expand(base).shape[0]} rows but w has {w.shape[0]}")
    h = xp.asarray(xtx, dtype=xp.float32)                                  # (IN, IN)
    errors, best = [], (np.inf, None, 0.0)
    for alpha in np.linspace(0.0, 1.0, grid):
        s = base ** alpha
        s = (s / xp.sqrt(s.max() * s.min())).astype(xp.float32)            # (K,)
        rows = expand(s)[:, None]                                           # (IN, 1)
        d = rtn_weight(w * rows, bits, group_size, symmetric) / rows - w    # (IN, OUT) weight error
        err = float(((h @ d) * d).sum())
        errors.append(err)
        if err < best[0]:
            best = (err, s, float(alpha))
    return best[1], best[2], errors


def awq_apply(model: Any, recs: list[Any], *, bits: int = 4, group_size: int | None = 64, symmetric: bool = False,
              grid: int = 11) -> list[dict[str, float]]:
    """Scale, fold and round every block weight of ``model`` in place (AWQ with RTN).

    ``recs`` are the :class:`~tinyllm.compress.patch.InputRecorder` of the float model, in
    :func:`~tinyllm.compress.patch.linear_weights` order (from
    :func:`tinyllm.compress.calibrate.record_inputs`). Save the arrays first with
    :func:`tinyllm.compress.fold.block_arrays` to undo it. Returns the chosen ``alpha`` of each weight.
    """
    c = model.config
    chosen = []
    for i, blk in enumerate(model.blocks):
        scales, row = {}, {}
        for j, kind in enumerate(KINDS):
            rec = recs[4 * i + j]
            mean = rec.abs_sum / rec.rows                                   # (IN,)
            if kind == "wo":
                s, a, _ = awq_search(getattr(blk, kind).data, group_wo_stat(mean, c, "mean"), rec.xtx, bits=bits,
                                     group_size=group_size, symmetric=symmetric, grid=grid,
                                     expand=lambda v: expand_wo_scale(v, c))
            else:
                s, a, _ = awq_search(getattr(blk, kind).data, mean, rec.xtx, bits=bits, group_size=group_size,
                                     symmetric=symmetric, grid=grid)
            scales[kind], row[kind] = s, a
        for kind in KINDS:                                                  # all searched on the float block, then folded
            fold_input_scale(blk, kind, scales[kind], c)
        for kind in KINDS:
            p = getattr(blk, kind)
            p.data = rtn_weight(p.data, bits, group_size, symmetric)
        chosen.append(row)
    return chosen
