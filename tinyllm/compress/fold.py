"""Per-input-channel scales folded into the operation before a Llama weight (AWQ, SmoothQuant).

For ``y = x @ W`` (``W`` of shape ``(IN, OUT)``) and any positive ``s`` of shape ``(IN,)``,

    y = (x / s) @ (diag(s) W)

exactly. AWQ and SmoothQuant pick ``s`` so that ``diag(s) W`` (AWQ) or both ``x / s`` and
``diag(s) W`` (SmoothQuant) quantise better. The division costs nothing at run time
when the operation producing ``x`` can absorb it. In a Llama block every weight has
such an operation (Xiao et al. 2023, "SmoothQuant", sec. 4; Lin et al. 2024, "AWQ", sec. 3):

- ``wqkv``: its input is ``RMSNorm(x) * g``: divide the norm's weight ``g`` by ``s``;
- ``wgu``: likewise with the MLP's norm weight;
- ``wdown``: its input is ``SiLU(gate) * up``, linear in ``up``: divide the up columns of
  ``wgu`` by ``s``;
- ``wo``: its input is the attention output ``att @ v``, linear in ``v``: divide the
  v columns of ``wqkv`` by ``s``. With grouped-query attention one value head serves
  the ``G = H / KV`` query heads of its group, so the scale of ``wo``'s input channel
  ``(h, d)`` must be the same for every head ``h`` of a group: ``s`` has ``KV * D``
  entries, one per value channel (:func:`expand_wo_scale`).

All four folds are exact in real arithmetic (tests check them in float32).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tinyllm.backend import get_array_module
from tinyllm.errors import QuantizationError
from tinyllm.models.llama import BLOCK_MATRICES, fused_columns

KINDS = BLOCK_MATRICES     # the stored matrices: wqkv, wo, wgu, wdown


def scale_width(kind: str, config: Any) -> int:
    """Number of entries of a foldable scale for ``kind``: its input width (``KV * D`` for ``wo``)."""
    c = config
    widths = {"wqkv": c.dim, "wgu": c.dim, "wdown": c.ffn_dim, "wo": c.n_kv_heads * c.head_dim}
    if kind not in widths:
        raise QuantizationError(f"kind must be one of {KINDS}, got {kind!r}")
    return widths[kind]


def expand_wo_scale(s_v: Any, config: Any) -> Any:
    """Value-channel scales ``(KV*D,)`` -> scales of ``wo``'s inputs ``(H*D,)``: head ``h`` uses group ``h // G``."""
    xp = get_array_module(s_v)
    c = config
    G = c.n_heads // c.n_kv_heads
    s = s_v.reshape(c.n_kv_heads, 1, c.head_dim)                            # (KV, 1, D)
    return xp.broadcast_to(s, (c.n_kv_heads, G, c.head_dim)).reshape(-1)   # (H*D,)


def group_wo_stat(stat: Any, config: Any, reduce: str = "max") -> Any:
    """A per-input statistic of ``wo`` ``(H*D,)`` -> one per value channel ``(KV*D,)`` (max or mean over the group)."""
    c = config
    G = c.n_heads // c.n_kv_heads
    s = stat.reshape(c.n_kv_heads, G, c.head_dim)                          # (KV, G, D)
    return (s.max(axis=1) if reduce == "max" else s.mean(axis=1)).reshape(-1)


def fold_input_scale(blk: Any, kind: str, s: Any, config: Any) -> None:
    """Replace ``blk``'s arrays so that ``blk.<kind>`` sees ``x / s`` and holds ``diag(s) W``; the block's output is unchanged.

    ``s`` has :func:`scale_width` entries, all positive and finite. New arrays are
    assigned (the old ones are not modified), so a caller can keep and restore them.
    """
    c = config
    width = scale_width(kind, c)
    xp = get_array_module(blk.wqkv.data)
    s = xp.asarray(s, dtype=xp.float32)
    if s.shape != (width,):
        raise QuantizationError(f"the scale of {kind} must have shape ({width},), got {tuple(s.shape)}")
    if not bool(xp.all(xp.isfinite(s))) or not bool(xp.all(s > 0)):
        raise QuantizationError(f"the scale of {kind} must be positive and finite")
    cols = fused_columns(c)
    if kind in ("wqkv", "wgu"):
        norm = blk.attn_norm if kind == "wqkv" else blk.ffn_norm
        norm.data = norm.data / s                                            # (C,)
        w = getattr(blk, kind)
        w.data = w.data * s[:, None]                                         # (C, OUT)
    elif kind == "wo":
        qkv = blk.wqkv.data.copy()                                           # (C, (H+2KV) D)
        qkv[:, cols["wv"][1]] /= s[None, :]                                  # v columns
        blk.wqkv.data = qkv
        blk.wo.data = blk.wo.data * expand_wo_scale(s, c)[:, None]           # (H D, C)
    else:                                                                    # wdown
        gu = blk.wgu.data.copy()                                             # (C, 2F)
        gu[:, cols["w_up"][1]] /= s[None, :]                                 # up columns
        blk.wgu.data = gu
        blk.wdown.data = blk.wdown.data * s[:, None]                         # (F, C)


def block_arrays(blk: Any) -> dict[str, Any]:
    """The arrays :func:`fold_input_scale` may replace, to restore them with :func:`set_block_arrays`."""
    return {k: getattr(blk, k).data for k in ("attn_norm", "ffn_norm", *KINDS)}


def set_block_arrays(blk: Any, arrays: dict[str, Any]) -> None:
    for k, v in arrays.items():
        getattr(blk, k).data = v
