"""Pruning: remove weights (unstructured, 2:4) or whole heads and neurons (structured).

* Unstructured magnitude pruning (Han et al. 2015, "Learning both Weights and
  Connections for Efficient Neural Networks"): zero the fraction ``sparsity`` of
  weights with the smallest ``|w|``. The matrix keeps its shape, so dense NumPy
  code runs exactly as fast; only a sparse format or kernel could profit.
* 2:4 semi-structured sparsity (Mishra et al. 2021, "Accelerating Sparse Deep
  Neural Networks", NVIDIA Ampere): in every group of 4 consecutive weights along
  the input features keep the 2 largest ``|w|``. Sparse tensor cores run such a
  matrix about twice as fast; NumPy does not.
* Structured pruning removes whole attention heads or MLP neurons ranked by an
  importance score (Michel et al. 2019, "Are Sixteen Heads Really Better than
  One?"; Ma et al. 2023, "LLM-Pruner"). The functions return *smaller* matrices, so
  every matmul shrinks: a real speed-up on any hardware.

Weights are in tinyllm's layout ``(IN, OUT)`` (``y = x @ W``) unless said otherwise.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tinyllm import plug
from tinyllm.backend import get_array_module


def _check_weight(w: Any, name: str = "w") -> None:
    if not hasattr(w, "shape") or not hasattr(w, "dtype"):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(w).__name__}")
    if w.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(w.shape)})")


def magnitude_prune(w: Any, sparsity: float) -> tuple[Any, Any]:
    """Zero the ``round(sparsity * w.size)`` entries of smallest magnitude.

    Returns ``(pruned, mask)`` with ``mask`` True where a weight is kept. Exactly that
    many entries are removed even when magnitudes tie (``argpartition``, not a threshold).
    """
    _check_weight(w)
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    xp = get_array_module(w)
    k = int(round(sparsity * w.size))
    mask = xp.ones(w.size, dtype=bool)
    if k > 0:
        idx = xp.argpartition(xp.abs(w).ravel(), k - 1)[:k]
        mask[idx] = False
    mask = mask.reshape(w.shape)
    return w * mask, mask


def prune_n_m(w: Any, n: int = 2, m: int = 4, axis: int = 0) -> tuple[Any, Any]:
    """N:M semi-structured pruning: in each run of ``m`` weights along ``axis`` keep the ``n`` largest.

    ``axis=0`` is the input-feature axis of an ``(IN, OUT)`` weight (the axis the
    sparse tensor cores group along). Vectorised: reshape to ``(..., G, m)``,
    ``argsort`` each run of ``m``, zero the ``m - n`` smallest.
    """
    _check_weight(w)
    if not 0 < n <= m:
        raise ValueError(f"need 0 < n <= m, got n={n}, m={m}")
    if w.shape[axis] % m:
        raise ValueError(f"axis {axis} of w has {w.shape[axis]} entries, not a multiple of m={m}")
    xp = get_array_module(w)
    wt = xp.moveaxis(w, axis, -1)                                           # (..., L)
    groups = wt.reshape(*wt.shape[:-1], -1, m)                              # (..., G, m)
    order = xp.argsort(xp.abs(groups), axis=-1)                             # ascending
    mask = xp.ones(groups.shape, dtype=bool)
    xp.put_along_axis(mask, order[..., : m - n], False, axis=-1)
    mask = xp.moveaxis(mask.reshape(wt.shape), -1, axis)
    return w * mask, mask


@plug.point("prune_2_4")
def prune_2_4(w: Any, axis: int = 0) -> tuple[Any, Any]:
    """2:4 sparsity (see :func:`prune_n_m`): ``(pruned, mask)``, keeping the 2 largest ``|w|`` of each 4 along ``axis``."""
    return prune_n_m(w, 2, 4, axis)


def sparsity(w: Any) -> float:
    """Fraction of exactly-zero entries."""
    return float((w == 0).sum()) / max(int(w.size), 1)


# ---------------------------------------------------------------------------
# Structured: MLP neurons
# ---------------------------------------------------------------------------
def neuron_importance(w_in: Sequence[Any] | Any, w_out: Any, activations: Any | None = None) -> Any:
    """Importance of each of the ``F`` hidden neurons of an MLP, shape ``(F,)``.

    ``w_in`` is one ``(C, F)`` matrix or a list (gate and up of a SwiGLU MLP), ``w_out``
    the ``(F, C)`` down projection. With calibration ``activations`` (the hidden
    values fed to ``w_out``, ``(..., F)``) the score is the mean size of what each
    neuron writes to the output, ``E|h_j| * ||w_out[j]||``; without, a weight-only
    proxy ``prod_k ||w_in_k[:, j]|| * ||w_out[j]||``.
    """
    xp = get_array_module(w_out)
    out_norm = xp.linalg.norm(w_out, axis=1)                                # (F,)
    if activations is not None:
        if activations.shape[-1] != w_out.shape[0]:
            raise ValueError(f"activations must end in F={w_out.shape[0]}, got shape {tuple(activations.shape)}")
        return xp.abs(activations).reshape(-1, w_out.shape[0]).mean(axis=0) * out_norm
    score = out_norm
    for w in ([w_in] if hasattr(w_in, "shape") else list(w_in)):
        score = score * xp.linalg.norm(w, axis=0)
    return score


def keep_indices(scores: Any, keep: int) -> Any:
    """Indices of the ``keep`` highest scores, in increasing order (so the layout is preserved)."""
    xp = get_array_module(scores)
    if not 0 < keep <= scores.shape[0]:
        raise ValueError(f"keep must be in 1..{scores.shape[0]}, got {keep}")
    return xp.sort(xp.argsort(-scores, kind="stable")[:keep])


def prune_mlp_neurons(w_in: Sequence[Any], w_out: Any, keep_idx: Any,
                      b_in: Sequence[Any | None] | None = None) -> tuple[list[Any], Any, list[Any | None]]:
    """Keep only the hidden neurons ``keep_idx``: columns of each ``(C, F)`` input matrix
    (and bias), rows of the ``(F, C)`` output matrix. Returns ``(w_in_list, w_out, b_in_list)``."""
    b_in = list(b_in) if b_in is not None else [None] * len(w_in)
    new_in = [w[:, keep_idx] for w in w_in]                                 # each (C, F')
    new_b = [None if b is None else b[keep_idx] for b in b_in]              # each (F',)
    return new_in, w_out[keep_idx], new_b                                   # (F', C)


# ---------------------------------------------------------------------------
# Structured: attention heads
# ---------------------------------------------------------------------------
def head_importance(wo: Any, n_heads: int, head_outputs: Any | None = None, *, xtx: Any | None = None,
                    n_rows: int | None = None) -> Any:
    """Importance of each query head, shape ``(H,)``.

    ``wo`` is the ``(H*D, C)`` output projection. With calibration ``head_outputs``
    (each head's attention output before ``wo``, shape ``(..., H, D)``) the score is
    the mean norm of what the head adds to the residual stream,
    ``E || o_h @ wo_h ||``. With only their second moments ``xtx = sum o^T o``
    (``(H*D, H*D)``, as :class:`~tinyllm.compress.patch.InputRecorder` keeps) over
    ``n_rows`` rows, it is the root mean square of that norm,
    ``sqrt(tr(wo_h^T xtx_hh wo_h) / n_rows)``. Without either, the Frobenius norm of ``wo_h``.
    """
    xp = get_array_module(wo)
    hd, c = wo.shape
    if hd % n_heads:
        raise ValueError(f"wo has {hd} rows, not a multiple of n_heads={n_heads}")
    D = hd // n_heads
    wo_h = wo.reshape(n_heads, D, c)                                        # (H, D, C)
    if xtx is not None:
        if tuple(xtx.shape) != (hd, hd) or not n_rows:
            raise ValueError(f"xtx must have shape ({hd}, {hd}) and n_rows must be > 0, "
                             f"got {tuple(xtx.shape)} and {n_rows}")
        blocks = xtx.reshape(n_heads, D, n_heads, D)[xp.arange(n_heads), :, xp.arange(n_heads)]  # (H, D, D)
        energy = xp.einsum("hdc,hde,hec->h", wo_h, blocks.astype(wo_h.dtype), wo_h)
        return xp.sqrt(xp.maximum(energy, 0) / n_rows)
    if head_outputs is None:
        return xp.sqrt((wo_h ** 2).sum(axis=(1, 2)))
    o = head_outputs.reshape(-1, n_heads, hd // n_heads)                    # (N, H, D)
    contrib = xp.einsum("nhd,hdc->nhc", o, wo_h)                            # (N, H, C)
    return xp.linalg.norm(contrib, axis=-1).mean(axis=0)


def select_heads(scores: Any, n_kv_heads: int, keep_per_group: int) -> Any:
    """Query heads to keep: the ``keep_per_group`` best of each key/value group.

    With grouped-query attention (``H`` query heads share ``KV`` key/value heads,
    ``H // KV`` a group) every group must keep the same number of query heads so the
    model still maps query head ``h`` to key/value head ``h // (H' // KV)``.
    For plain multi-head attention pass ``n_kv_heads=1`` (one group of all heads).
    """
    xp = get_array_module(scores)
    H = scores.shape[0]
    if H % n_kv_heads:
        raise ValueError(f"n_heads={H} is not a multiple of n_kv_heads={n_kv_heads}")
    g = H // n_kv_heads
    if not 0 < keep_per_group <= g:
        raise ValueError(f"keep_per_group must be in 1..{g}, got {keep_per_group}")
    order = xp.argsort(-scores.reshape(n_kv_heads, g), axis=1, kind="stable")[:, :keep_per_group]  # (KV, k)
    order = xp.sort(order, axis=1) + (xp.arange(n_kv_heads) * g)[:, None]
    return order.ravel()


def prune_heads(wq: Any, wo: Any, n_heads: int, keep_heads: Any, bq: Any | None = None,
                wk: Any | None = None, wv: Any | None = None, bk: Any | None = None,
                bv: Any | None = None) -> dict[str, Any]:
    """Keep only query heads ``keep_heads``: columns of ``wq (C, H*D)``, rows of ``wo (H*D, C)``.

    Pass ``wk``/``wv`` (and biases) for multi-head attention, where each query head
    has its own key and value head that goes with it. With grouped-query attention
    leave them out: the key/value heads stay and :func:`select_heads` keeps the
    groups even. Returns a dict with the smaller matrices and ``n_heads``.
    """
    xp = get_array_module(wq)
    D = wq.shape[1] // n_heads
    cols = (xp.asarray(keep_heads)[:, None] * D + xp.arange(D)[None, :]).ravel()  # (H'*D,)
    out = {"wq": wq[:, cols], "wo": wo[cols], "n_heads": int(len(keep_heads))}
    out["bq"] = None if bq is None else bq[cols]
    for name, w in (("wk", wk), ("wv", wv)):
        out[name] = None if w is None else w[:, cols]
    for name, b in (("bk", bk), ("bv", bv)):
        out[name] = None if b is None else b[cols]
    return out
