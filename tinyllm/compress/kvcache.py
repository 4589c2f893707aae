"""Scoring a model through its KV cache, to measure what a quantised cache costs.

During generation the keys and values of every earlier token are read back from the
cache (:class:`tinyllm.models.llama.KVCache`). An int8 cache (``int8=True``) stores each
head's key and value vector of each token as int8 codes with one scale, a quarter of the
float32 bytes. Its error only shows when later tokens attend to cached ones, so the text
is fed in chunks: each chunk attends over the cached (quantised) keys and values of all the
chunks before it, as during a long generation.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tinyllm.evaluate import token_log_probs
from tinyllm.models.llama import KVCache
from tinyllm.errors import QuantizationError


def cache_perplexity(model: Any, token_ids: Sequence[int], *, chunk: int = 128, int8: bool = False) -> float:
    """Perplexity of ``token_ids`` (one sequence, one window) fed ``chunk`` tokens at a time through a KV cache."""
    ids = np.asarray(token_ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) < 2:
        raise QuantizationError(f"token_ids must be one sequence of at least 2 tokens, got shape {ids.shape}")
    if chunk <= 0:
        raise QuantizationError(f"chunk must be positive, got {chunk}")
    model._ensure_rope(len(ids))
    cache = KVCache(model.config, 1, len(ids), xp=model.xp, int8=int8)
    nll = []
    for start in range(0, len(ids) - 1, chunk):
        x = ids[start:start + chunk]                                        # (t,)
        logits = model(x[None], cache=cache)[0]                             # (t, V)
        targets = ids[start + 1:start + 1 + len(x)]
        nll.append(-token_log_probs(logits[:len(targets)], targets))
    return float(np.exp(np.concatenate(nll).mean()))
