"""Evaluating language models.

Perplexity (Jelinek et al., 1977) is the exponential of the mean negative
log-likelihood of each token given the ones before it::

    PPL = exp( -1/N * sum_j log p(x_j | x_<j) )

A model sees at most ``window`` tokens at once. For a longer text we slide the
window by ``stride`` tokens and, in each window, score only the tokens not
scored before, so every token after the first is scored exactly once and has
at least ``window - stride`` tokens of context (when the text allows).
"""
from __future__ import annotations

import math

import numpy as np

from tinyllm.backend import get_array_module, to_numpy


def token_log_probs(logits, targets) -> np.ndarray:
    """log p(target) under softmax(logits): logits (N, V), targets (N,) -> (N,) float64 on the host."""
    xp = get_array_module(logits)
    m = logits.max(axis=-1, keepdims=True)                               # (N, 1)
    lse = xp.log(xp.exp(logits - m).sum(axis=-1)) + m[:, 0]              # (N,)
    picked = xp.take_along_axis(logits, xp.asarray(targets)[:, None], axis=-1)[:, 0]  # (N,)
    return to_numpy(picked - lse).astype(np.float64)


def perplexity(model, token_ids, window: int = 512, stride: int | None = None, *, return_details: bool = False):
    """Sliding-window perplexity of ``model`` on a 1-D sequence of token ids.

    ``model(ids (1, T)) -> logits (1, T, V)``. ``stride`` defaults to ``window``
    (disjoint windows, fastest; a smaller stride gives each token more context).
    Returns the perplexity (a float), or with ``return_details`` a dict with
    ``perplexity``, ``nll`` (mean negative log-likelihood in nats) and ``n_tokens``.
    """
    ids = np.asarray(to_numpy(token_ids))
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token_ids must be a 1-D sequence of integer ids, got shape {ids.shape} dtype {ids.dtype}")
    if ids.size < 2:
        raise ValueError(f"token_ids needs at least 2 tokens to score one, got {ids.size}")
    if not isinstance(window, (int, np.integer)) or window < 2:
        raise ValueError(f"window must be an int >= 2, got {window!r}")
    stride = window if stride is None else stride
    if not isinstance(stride, (int, np.integer)) or not 1 <= stride <= window:
        raise ValueError(f"stride must be an int in [1, window={window}], got {stride!r}")
    N = ids.size
    total, count, scored_to = 0.0, 0, 1          # tokens [1, scored_to) are scored
    begin = 0
    while scored_to < N:
        end = min(begin + window, N)
        chunk = ids[begin:end][None, :]                                  # (1, L)
        logits = model(chunk)[0]                                         # (L, V)
        first = max(scored_to, begin + 1)                                # first absolute target index
        rows = np.arange(first, end) - 1 - begin                         # positions that predict them
        lp = token_log_probs(logits[rows], ids[first:end])
        total -= float(lp.sum())
        count += lp.size
        scored_to = end
        begin += stride
    nll = total / count
    ppl = math.exp(nll)
    if return_details:
        return {"perplexity": ppl, "nll": nll, "n_tokens": count}
    return ppl
