"""Forward-only pure functions: the maths of the layers, without caches or gradients.

The layers in :mod:`tinyllm.nn` call these in their ``forward`` and add the
backward pass; inference code (generation, evaluation) calls them directly.
Every function takes its array module from its input, so it runs on NumPy or
CuPy alike, and keeps the input's dtype: constants are Python floats, which
NumPy 2 never lets promote a float32 array to float64.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from tinyllm.backend import get_array_module
from tinyllm.threads import map_rows

GELU_K = math.sqrt(2.0 / math.pi)  # sqrt(2/pi), a Python float on purpose (no float64 promotion)
GELU_C = 0.044715


def _shift(xp, x, axis: int, out: Any = None):
    """``x.max(axis, keepdims=True)``, softmax's shift. On NumPy as ``fmax.reduce``: the same value for a
    row without NaN, about 1.7x faster on short rows like attention's (a row with NaN still ends NaN)."""
    if xp is np:
        return np.fmax.reduce(x, axis=axis, keepdims=True, out=out)
    return x.max(axis=axis, keepdims=True, out=out)


def softmax(x: Any, axis: int = -1, *, out: Any = None):
    """softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x); subtracting the max avoids overflow.
    ``out=x`` computes it in place (attention's (B, H, T, T) scores), saving one array."""
    xp = get_array_module(x)
    e = xp.subtract(x, _shift(xp, x, axis), out=out)
    xp.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def logsumexp(x: Any, axis: int = -1, *, keepdims: bool = False):
    """log sum_j exp(x_j) = m + log sum_j exp(x_j - m), m = max x: the log of softmax's normaliser."""
    xp = get_array_module(x)
    m = x.max(axis=axis, keepdims=True)
    out = m + xp.log(xp.exp(x - m).sum(axis=axis, keepdims=True))
    return out if keepdims else out.squeeze(axis)


def log_softmax(x: Any, axis: int = -1):
    """log softmax(x) = x - logsumexp(x), computed as z - log sum exp(z) with z = x - max x."""
    xp = get_array_module(x)
    z = x - x.max(axis=axis, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))


def _check_targets(logits: Any, targets: Any, ignore_index: int):
    """Validate (logits (..., V), targets (...)) and return (xp, flat logits (N, V), flat targets (N,), keep mask (N,))."""
    xp = get_array_module(logits)
    if not hasattr(logits, "ndim") or logits.ndim < 2:
        raise ValueError(f"logits must have shape (N, V) or (B, T, V), got {getattr(logits, 'shape', type(logits).__name__)}")
    if not np.issubdtype(np.dtype(logits.dtype), np.floating):
        raise TypeError(f"logits must be a floating-point array, got dtype {logits.dtype}")
    targets = xp.asarray(targets)
    if not np.issubdtype(np.dtype(targets.dtype), np.integer):
        raise TypeError(f"targets must be an integer array of class ids, got dtype {targets.dtype}")
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"targets must have shape {tuple(logits.shape[:-1])} (logits without its last axis), "
                         f"got {tuple(targets.shape)}")
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)  # (N, V)
    t = targets.reshape(-1)  # (N,)
    keep = t != ignore_index  # (N,)
    bad = keep & ((t < 0) | (t >= V))  # (N,)
    if bool(bad.any()):
        raise ValueError(f"targets contains class id {int(t[bad][0])}, outside [0, {V}) (and not ignore_index={ignore_index})")
    return xp, flat, t, keep


def cross_entropy_parts(logits: Any, targets: Any, ignore_index: int = -100):
    """Shared forward of cross-entropy: (mean loss as a 0-d array, probs (N, V), targets (N,), keep (N,), count).

    loss = mean over kept rows of  logsumexp(z) - z[target],  z = logits - max(logits).
    """
    xp, flat, t, keep = _check_targets(logits, targets, ignore_index)
    N = flat.shape[0]
    e = xp.empty(flat.shape, dtype=flat.dtype)  # (N, V), the only (N, V) array
    m, s = xp.empty((N, 1), dtype=flat.dtype), xp.empty((N, 1), dtype=flat.dtype)  # max z, sum exp(z - m)
    map_rows(_softmax_parts_rows, flat, e, m, s)  # in row blocks on the BLAS threads
    safe_t = xp.where(keep, t, 0)  # (N,) ignored rows point at class 0, then get masked out
    z_t = flat[xp.arange(N), safe_t] - m[:, 0]  # (N,) shifted logit of each target
    nll = xp.where(keep, xp.log(s[:, 0]) - z_t, 0.0)  # (N,)
    count = int(keep.sum())
    loss = nll.sum() / max(count, 1)
    return loss, e, t, keep, count


def _softmax_parts_rows(z, e, m, s):
    """Rows of softmax with its parts: m = max z, e = exp(z - m) / s, s = sum exp(z - m) (into e, m, s)."""
    xp = get_array_module(z)
    _shift(xp, z, -1, out=m)
    xp.subtract(z, m, out=e)
    xp.exp(e, out=e)
    e.sum(axis=-1, keepdims=True, out=s)
    e /= s


def cross_entropy(logits: Any, targets: Any, ignore_index: int = -100) -> float:
    """Mean cross-entropy of softmax(logits) (..., V) against integer targets (...), skipping ``ignore_index``.

    Returns 0.0 when every target is ignored (nothing to learn from).
    """
    return float(cross_entropy_parts(logits, targets, ignore_index)[0])


def relu(x: Any):
    """max(0, x)."""
    return get_array_module(x).maximum(x, 0)


def gelu(x: Any):
    """GELU, tanh form (Hendrycks & Gimpel 2016; used by GPT-2):
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    y = gelu_tanh_term(x)  # tanh u
    y += 1.0
    y *= x
    y *= 0.5
    return y


def gelu_tanh_term(x: Any):
    """tanh u with u = sqrt(2/pi) (x + 0.044715 x^3), the part of GELU that its backward reuses (a new array;
    the layer :class:`tinyllm.nn.GELU` computes it the same way, in row blocks, and keeps it)."""
    xp = get_array_module(x)
    t = x * x
    t *= GELU_C
    t += 1.0
    t *= x
    t *= GELU_K  # u = k (x + c x^3)
    return xp.tanh(t, out=t)


def sigmoid(x: Any):
    """1 / (1 + exp(-x)), computed without overflow for large |x|."""
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))  # in (0, 1]: never overflows
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def silu(x: Any):
    """SiLU / swish: x * sigmoid(x) (Elfwing et al. 2018; used by Llama's MLP)."""
    return x * sigmoid(x)


def layer_norm(x: Any, w: Any, b: Any, eps: float = 1e-5):
    """LayerNorm over the last axis (Ba et al. 2016): (x - mean) / sqrt(var + eps) * w + b, biased variance."""
    xp = get_array_module(x)
    mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1)
    y = xc / xp.sqrt(var + eps)
    y *= w
    if b is not None:
        y += b
    return y


def rms_norm(x: Any, w: Any, eps: float = 1e-5):
    """RMSNorm over the last axis (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * w."""
    xp = get_array_module(x)
    ms = (x * x).mean(axis=-1, keepdims=True)  # (..., 1)
    y = x / xp.sqrt(ms + eps)
    y *= w
    return y
