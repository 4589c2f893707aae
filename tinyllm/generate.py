"""Turning next-token logits into text: sampling and the generation loop.

``sample_next`` is the single place where a distribution over the vocabulary
becomes a token id. Order of operations (as in HF ``transformers``):
repetition penalty -> temperature -> top-k -> top-p -> sample.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tinyllm.backend import get_array_module, to_numpy


def softmax_np(z: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float64 on the host."""
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits of each row, set the rest to -inf.  (B, V) -> (B, V)"""
    if k is None or k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[:, -k][:, None]  # (B, 1)
    return np.where(logits < kth, -np.inf, logits)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filter (Holtzman et al., 2020): keep the smallest set of tokens whose
    probability mass reaches ``p``. The token that crosses the threshold is kept.  (B, V) -> (B, V)"""
    if p is None or p >= 1.0:
        return logits
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    order = np.argsort(-logits, axis=-1, kind="stable")                # (B, V) best first
    sorted_logits = np.take_along_axis(logits, order, axis=-1)
    probs = softmax_np(sorted_logits)
    mass_before = np.cumsum(probs, axis=-1) - probs                      # mass of strictly better tokens
    drop_sorted = mass_before >= p                                       # keeps the crossing token
    drop = np.empty_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, -np.inf, logits)


def apply_repetition_penalty(logits: np.ndarray, previous: list[list[int]] | np.ndarray, penalty: float) -> np.ndarray:
    """CTRL's penalty (Keskar et al., 2019): divide positive logits of seen tokens by
    ``penalty``, multiply negative ones by it.  (B, V) -> (B, V)"""
    if penalty == 1.0:
        return logits
    if penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
    logits = logits.copy()
    for b, seen in enumerate(previous):
        ids = np.unique(np.asarray(seen, dtype=np.int64))
        if ids.size:
            v = logits[b, ids]
            logits[b, ids] = np.where(v > 0, v / penalty, v * penalty)
    return logits


def sample_next(logits: Any, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                repetition_penalty: float = 1.0, previous=None, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Choose the next token of each row of ``logits`` (B, V); returns (B,) int64 on the host.

    ``temperature=0`` means greedy (argmax). Sampling uses ``rng``, so a seed
    makes it reproducible.
    """
    z = to_numpy(logits).astype(np.float64)                             # (B, V)
    if z.ndim != 2:
        raise ValueError(f"logits must have shape (B, V), got {z.shape}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if previous is not None:
        z = apply_repetition_penalty(z, previous, repetition_penalty)
    if temperature == 0:
        return z.argmax(axis=-1)
    z = top_p_filter(top_k_filter(z / temperature, top_k), top_p)
    probs = softmax_np(z)                                               # (B, V)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    u = rng.random((z.shape[0], 1))                                     # inverse-CDF sampling, one draw a row
    return np.minimum((np.cumsum(probs, axis=-1) < u).sum(axis=-1), z.shape[-1] - 1)


def generate(model, idx: Any, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, block_size: int | None = None):
    """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T) using ``model(idx) -> logits (B, T, V)``.

    The plain loop without a KV cache: each step re-reads the whole (cropped)
    context. Returns (B, T + max_new_tokens) on the same device as ``idx``.
    """
    xp = get_array_module(idx)
    rng = np.random.default_rng(seed)
    for _ in range(max_new_tokens):
        context = idx if block_size is None else idx[:, -block_size:]
        logits = model(context)[:, -1, :]                               # (B, V)
        nxt = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, rng=rng)
        idx = xp.concatenate([idx, xp.asarray(nxt, dtype=idx.dtype)[:, None]], axis=1)
    return idx
