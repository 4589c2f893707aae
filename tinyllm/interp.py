"""Tools for looking inside a Llama: read activations, decode them, ablate heads, patch the residual stream.

They all sit on one mechanism, :meth:`tinyllm.models.llama.Llama.hooks`, which calls
a function at named tap points of every block (:data:`tinyllm.models.llama.TAP_POINTS`).

- **Logit lens** (nostalgebraist, 2020): decode the residual stream after block l
  as if it were the last one, ``softmax(RMSNorm(x_l) @ W_U)``.
- **Induction score** (Olsson et al., 2022, "In-context learning and induction
  heads"): on a sequence whose tokens repeat, how much a head attends from a
  token to the token that *followed* its previous occurrence.
- **Ablation**: zero chosen heads' outputs and measure what breaks.
- **Activation patching** (Meng et al., 2022; Wang et al., 2022): run a corrupted
  prompt, restore the clean run's residual stream at one (layer, position), and
  measure how much of the clean behaviour comes back.
- **Direct logit attribution** (Elhage et al., 2021): the final residual is a sum
  of what the embedding and every sublayer wrote; with the final norm's scale
  frozen, each term's dot product with an answer direction is its share of the logit.

Arrays may be NumPy or CuPy (``get_array_module``); results stay on their device.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from tinyllm import kernels, plug
from tinyllm.backend import get_array_module, to_numpy
from tinyllm.models.llama import TAP_POINTS
from tinyllm.nn.functional import logsumexp


def run_with_cache(model, ids, names: Sequence[str] = ("resid_post",), **forward_kwargs):
    """Run ``model(ids)`` and keep the values at the tap points ``names``, stacked over layers.

    Returns ``(logits (B, T, V), {name: (L, B, T, ...)})``; ``forward_kwargs`` go to ``model.forward``."""
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in TAP_POINTS]
    if unknown:
        raise ValueError(f"unknown tap point(s) {unknown}; the tap points are {list(TAP_POINTS)}")
    store: dict[str, list] = {n: [] for n in names}

    def reader(name: str) -> Callable:
        return lambda value, layer: store[name].append(value)   # the forward pass never writes into these arrays

    with model.hooks(**{n: reader(n) for n in names}):
        logits = model.forward(ids, **forward_kwargs)
    xp = model.xp
    return logits, {n: xp.stack(v) for n, v in store.items()}


@plug.point("logit_lens")
def logit_lens(resid, norm_weight, head, targets, eps: float = 1e-5):
    """Probability and rank of ``targets`` when each layer's residual stream is decoded by the final norm and head.

    ``resid`` (L, T, C): the residual stream after each of L blocks at T positions;
    ``norm_weight`` (C,), ``head`` (C, V), ``targets`` (T,) token ids. Returns
    ``prob (L, T)`` = softmax(RMSNorm(resid) @ head)[target] and ``rank (L, T)``,
    the number of tokens with a strictly larger logit (0: the target is the top token)."""
    xp = get_array_module(resid)
    targets = xp.asarray(targets)
    L, T, C = resid.shape
    x = kernels.rms_norm(resid, norm_weight, eps)                         # the final norm, (L, T, C)
    logits = (x.reshape(L * T, C) @ head).reshape(L, T, -1)               # (L, T, V)
    log_z = logsumexp(logits, axis=-1)                                    # (L, T)
    target = xp.take_along_axis(logits, xp.broadcast_to(targets[None, :, None], logits.shape[:2] + (1,)), axis=-1)[..., 0]
    prob = xp.exp(target - log_z)                                         # (L, T)
    rank = (logits > target[..., None]).sum(axis=-1)                      # (L, T)
    return prob, rank


@plug.point("induction_score")
def induction_score(patterns, tokens):
    """Each head's mean attention from a repeated token to the token after its previous occurrence.

    ``patterns`` (L, H, T, T) attention probabilities, ``tokens`` (T,). For every
    position i whose token occurred before (most recently at j < i), the head
    should attend to j + 1; the score averages ``patterns[..., i, j + 1]`` over
    those i. Returns (L, H); NaN if no token repeats."""
    xp = get_array_module(patterns)
    tokens = np.asarray(to_numpy(tokens)).tolist()                       # a host list, also for CuPy tokens
    last: dict = {}
    queries, keys = [], []
    for i, t in enumerate(tokens):
        if t in last:
            queries.append(i)
            keys.append(last[t] + 1)
        last[t] = i
    if not queries:
        return xp.full(patterns.shape[:2], np.nan, dtype=np.float32)
    return patterns[:, :, queries, keys].mean(axis=-1)                    # (L, H)


def ablate_heads(heads: Iterable[tuple[int, int]]) -> Callable:
    """A ``head_out`` hook that zeroes the outputs of the given (layer, head) pairs (zero ablation)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))

    def hook(value, layer):                                               # value (B, T, H, D)
        if layer not in by_layer:
            return None
        value = value.copy()
        value[:, :, by_layer[layer]] = 0
        return value
    return hook


def patch_residual(model, corrupt_ids, clean_resid, metric: Callable, layers: Sequence[int] | None = None):
    """Activation patching of the residual stream entering each block, one (layer, position) at a time.

    ``corrupt_ids`` (1, T); ``clean_resid`` (L, 1, T, C), the clean run's ``resid_pre``
    (same T). For each layer, one batched run of T copies of the corrupted prompt,
    copy p with the clean residual restored at position p. ``metric(logits (B, V))
    -> (B,)`` scores the last position. Returns (len(layers), T)."""
    xp = model.xp
    corrupt_ids = xp.asarray(corrupt_ids)
    if corrupt_ids.ndim != 2 or corrupt_ids.shape[0] != 1:
        raise ValueError(f"corrupt_ids must have shape (1, T), got {tuple(corrupt_ids.shape)}")
    T = corrupt_ids.shape[1]
    if clean_resid.shape[1:3] != (1, T):
        raise ValueError(f"clean_resid must be (L, 1, T={T}, C) like the corrupted prompt, got {tuple(clean_resid.shape)}; "
                         "patching needs clean and corrupted prompts of the same token length")
    layers = range(clean_resid.shape[0]) if layers is None else layers
    batch = xp.repeat(corrupt_ids, T, axis=0)                             # (T, T): copy p patches position p
    rows = xp.arange(T)
    out = []
    for target in layers:
        def hook(value, layer, target=target):                            # value (T, T, C)
            if layer != target:
                return None
            value = value.copy()
            value[rows, rows] = clean_resid[target, 0]                    # copy p, position p <- clean
            return value
        with model.hooks(resid_pre=hook):
            logits = model.forward(batch, last_only=True)[:, -1]          # (T, V)
        out.append(metric(logits))
    return xp.stack(out)                                                  # (len(layers), T)


@plug.point("direct_logit_attribution")
def direct_logit_attribution(components, final_resid, norm_weight, direction, eps: float = 1e-5):
    """How much each component of the residual stream adds to ``final logits @ direction``.

    ``components`` (..., C): vectors the embedding and sublayers wrote into the residual
    stream at one position; ``final_resid`` (C,) their sum, the residual before the final
    norm; ``direction`` (C,), e.g. ``head[:, a] - head[:, b]``. The final RMSNorm is linear
    once its scale ``1 / rms(final_resid)`` is frozen, so the attributions (...) of a full
    set of components add up to the logit difference."""
    xp = get_array_module(final_resid)
    final_resid = final_resid.astype(np.float32, copy=False)
    scale = 1.0 / xp.sqrt((final_resid * final_resid).mean() + np.float32(eps))
    return (components @ (norm_weight * direction)) * scale
