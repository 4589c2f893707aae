"""Graded checks for exercises/05_transformer.ipynb.

References: scaled dot-product attention with a causal mask (Vaswani et al., 2017)
from ``tinyllm.nn.attention`` (``causal_mask``, ``causal_attention``) in float64, and
LayerNorm (Ba et al., 2016) from ``tinyllm.nn.functional.layer_norm`` in float64.
"""
from __future__ import annotations

import numpy as np

from tinyllm.grading.core import Exercise, Fail, array, call, close
from tinyllm.nn import functional as F
from tinyllm.nn.attention import causal_attention as lib_attention
from tinyllm.nn.attention import causal_mask as lib_mask

rng = np.random.default_rng(505)
EXERCISES: list[Exercise] = []

# --- causal mask -------------------------------------------------------------------------------
ex = Exercise("causal_mask", "The causal mask: who may attend to whom")


def _judge_mask(rs):
    for T, r in zip((1, 4, 7), rs):
        m = array(r, f"causal_mask({T})", shape=(T, T))
        if m.dtype != np.bool_:
            raise Fail(f"causal_mask({T}) has dtype {m.dtype}, expected bool (True = may attend)")
        want = lib_mask(T, np, np.float64) == 0                      # (T, T) the library's additive mask: 0 = may attend
        if np.array_equal(m, want):
            continue
        if np.array_equal(m, np.tril(np.ones((T, T), dtype=bool), -1)):
            raise Fail("the mask is off by one: a position must be allowed to attend to itself (include the diagonal)")
        if np.array_equal(m, ~want):
            raise Fail("the mask is inverted: True must mean 'may attend', i.e. key position <= query position")
        if np.array_equal(m, np.tril(np.ones((T, T), dtype=bool), 1)):
            raise Fail("the mask is off by one: position i may see position i + 1, a future token; keep only j <= i")
        if np.array_equal(m, np.triu(np.ones((T, T), dtype=bool))):
            raise Fail("the mask is transposed: row i (the query) may see columns j <= i (the keys)")
        if not np.array_equal(m, want):
            bad = np.argwhere(m != want)[0]
            raise Fail(f"causal_mask({T})[{bad[0]}, {bad[1]}] is {bool(m[tuple(bad)])}, expected {bool(want[tuple(bad)])}")


ex.test("lower-triangular bool mask, diagonal included", 2, [call(1), call(4), call(7)], _judge_mask)
EXERCISES.append(ex)

# --- causal attention --------------------------------------------------------------------------
ex = Exercise("causal_attention", "Causal scaled dot-product attention")
B, H, T, D = 2, 3, 6, 8
q = rng.standard_normal((B, H, T, D)).astype(np.float32)
k = rng.standard_normal((B, H, T, D)).astype(np.float32)
v = rng.standard_normal((B, H, T, D)).astype(np.float32)


def ref_attention(q, k, v, scale=True):
    """``tinyllm.nn.attention.causal_attention`` in float64; ``scale=False`` (the unscaled-scores mistake)
    feeds it q * sqrt(D), which cancels its 1 / sqrt(D)."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    if not scale:
        q = q * np.sqrt(q.shape[-1])
    return lib_attention(q, k, v)[0]


def _judge_attn(rs):
    y = array(rs[0], "causal_attention(q, k, v)", shape=q.shape, dtype=np.float32)
    if np.allclose(y, ref_attention(q, k, v, scale=False), atol=1e-4):
        raise Fail("the scores are not scaled: divide q @ k^T by sqrt(D) (D = head size) before the softmax")
    close(y, ref_attention(q, k, v), "causal_attention(q, k, v)", rtol=1e-4, atol=1e-5,
          hint="softmax((q @ k^T) / sqrt(D) with masked positions set to -inf) @ v")


def _judge_causal(rs):
    y1 = array(rs[0], "causal_attention(q, k, v)", shape=q.shape, floating=True)
    y2 = array(rs[1], "causal_attention with the last position changed", shape=q.shape, floating=True)
    changed = np.abs(y1 - y2).max(axis=(0, 1, 3)) > 1e-6            # (T,) which query positions changed
    if changed[:-1].any():
        i = int(np.argmax(changed[:-1]))
        raise Fail(f"attention lets position {i} see position {T - 1}: check the causal mask (query i may only see "
                   "keys j <= i; changing the last key and value changed an earlier output)")
    if not changed[-1]:
        raise Fail("changing the last key/value did not change the last output: a position must attend to itself")


k2, v2 = k.copy(), v.copy()
k2[:, :, -1] += 3.0
v2[:, :, -1] -= 5.0
ex.test("matches the reference, float32", 3, [call(q, k, v)], _judge_attn)
ex.test("no position sees the future", 2, [call(q, k, v), call(q, k2, v2)], _judge_causal)
EXERCISES.append(ex)

# --- layer norm --------------------------------------------------------------------------------
ex = Exercise("layer_norm", "LayerNorm over the last axis")
xl = (3.0 + 2.0 * rng.standard_normal((4, 5, 16))).astype(np.float32)
wl = rng.standard_normal(16).astype(np.float32)
bl = rng.standard_normal(16).astype(np.float32)


def ref_layer_norm(x, w, b, eps=1e-5, ddof=0):
    x = x.astype(np.float64)
    if ddof == 0:
        return F.layer_norm(x, np.broadcast_to(np.float64(w), x.shape[-1:]), np.broadcast_to(np.float64(b), x.shape[-1:]), eps)
    mu = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True, ddof=ddof)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _judge_ln(rs):
    y = array(rs[0], "layer_norm(x, w, b)", shape=xl.shape, dtype=np.float32)
    if np.allclose(y, ref_layer_norm(xl, wl, bl, ddof=1), atol=1e-5):
        raise Fail("the variance uses N - 1 (ddof=1): LayerNorm uses the biased variance, mean((x - mu)^2)")
    if np.allclose(y, ref_layer_norm(xl, 1.0, 0.0), atol=1e-4):
        raise Fail("the output is not scaled and shifted: multiply by w and add b after normalising")
    close(y, ref_layer_norm(xl, wl, bl), "layer_norm(x, w, b)", rtol=1e-4, atol=1e-4,
          hint="(x - mean) / sqrt(var + eps) * w + b over the last axis")


ex.test("matches the reference, float32", 3, [call(xl, wl, bl)], _judge_ln)
EXERCISES.append(ex)
