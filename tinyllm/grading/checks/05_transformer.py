"""Graded checks for exercises/05_transformer.ipynb.

References: scaled dot-product attention with a causal mask (Vaswani et al., 2017)
from ``tinyllm.nn.attention`` (``causal_mask``, ``causal_attention``) in float64, and
LayerNorm (Ba et al., 2016) from ``tinyllm.nn.functional.layer_norm`` in float64. A message names
a mistake only when the learner's result equals what that mistake computes on the same input, or
(for a look at the future) when changing a later position changed an earlier output.
"""
from __future__ import annotations

import math

import numpy as np

from tinyllm.grading.core import Exercise, Fail, array, call, close, diagnose
from tinyllm.nn import functional as F
from tinyllm.nn.attention import causal_attention as lib_attention
from tinyllm.nn.attention import causal_mask as lib_mask

rng = np.random.default_rng(505)
EXERCISES: list[Exercise] = []

# --- causal mask -------------------------------------------------------------------------------
ex = Exercise("causal_mask", "The causal mask: who may attend to whom")
MASK_T = (1, 4, 7, 33)


MASK_MISTAKES = [
    (lambda T: np.tril(np.ones((T, T), dtype=bool), -1),
     "the mask is off by one: a position must be allowed to attend to itself (include the diagonal)"),
    (lambda T: ~np.tril(np.ones((T, T), dtype=bool)),
     "the mask is inverted: True must mean 'may attend', i.e. key position <= query position"),
    (lambda T: np.tril(np.ones((T, T), dtype=bool), 1),
     "the mask is off by one: position i may see position i + 1, a future token; keep only j <= i"),
    (lambda T: np.triu(np.ones((T, T), dtype=bool)),
     "the mask is transposed: row i (the query) may see columns j <= i (the keys)"),
]


def _judge_mask(rs):
    masks = []
    for T, r in zip(MASK_T, rs):
        m = array(r, f"causal_mask({T})", shape=(T, T))
        want = lib_mask(T, np, np.float64) == 0                      # (T, T) the library's additive mask: 0 = may attend
        if m.dtype != np.bool_:
            if np.array_equal(m, np.where(want, 0.0, -np.inf)):
                raise Fail(f"causal_mask({T}) is the additive float mask (0 and -inf): return the bool mask, "
                           "True where attention is allowed")
            raise Fail(f"causal_mask({T}) has dtype {m.dtype}, expected bool (True = may attend)")
        masks.append((T, m, want))
    for T, m, want in masks:
        if not np.array_equal(m, want):
            for fn, why in MASK_MISTAKES:                           # named only when every size shows it
                if all(np.array_equal(mm, fn(TT)) for TT, mm, _ in masks):
                    raise Fail(f"causal_mask({T}): {why}")
            bad = np.argwhere(m != want)[0]
            raise Fail(f"causal_mask({T})[{bad[0]}, {bad[1]}] is {bool(m[tuple(bad)])}, expected {bool(want[tuple(bad)])}")


ex.test("lower-triangular bool mask, diagonal included", 2, [call(T) for T in MASK_T], _judge_mask)
EXERCISES.append(ex)

# --- causal attention --------------------------------------------------------------------------
ex = Exercise("causal_attention", "Causal scaled dot-product attention")
B, H, T, D = 2, 3, 6, 8
q = rng.standard_normal((B, H, T, D)).astype(np.float32)
k = rng.standard_normal((B, H, T, D)).astype(np.float32)
v = rng.standard_normal((B, H, T, D)).astype(np.float32)
# other shapes: sharp scores (large q), T > D, one position, and an odd head size
q2 = (4.0 * rng.standard_normal((1, 4, 9, 5))).astype(np.float32)
k2 = rng.standard_normal((1, 4, 9, 5)).astype(np.float32)
v2 = rng.standard_normal((1, 4, 9, 5)).astype(np.float32)
q1, k1, v1 = (rng.standard_normal((3, 1, 1, 16)).astype(np.float32) for _ in range(3))


def ref_attention(q, k, v, scale=True):
    """``tinyllm.nn.attention.causal_attention`` in float64; ``scale=False`` (the unscaled-scores mistake)
    feeds it q * sqrt(D), which cancels its 1 / sqrt(D)."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    if not scale:
        q = q * np.sqrt(q.shape[-1])
    return lib_attention(q, k, v)[0]


def _attention_mistakes(q, k, v):
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    Tq, Dq = q.shape[-2], q.shape[-1]
    s = q64 @ np.swapaxes(k64, -1, -2) / math.sqrt(Dq)                 # (B, H, T, T)
    allowed = np.tril(np.ones((Tq, Tq), dtype=bool))

    def soft(z, axis=-1):
        z = z - z.max(axis=axis, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=axis, keepdims=True)

    with np.errstate(all="ignore"):
        after = soft(s) * allowed
        col = soft(np.where(allowed, s, -np.inf), axis=-2)
        return [
            ("the scores are not scaled: divide q @ k^T by sqrt(D) (D = head size) before the softmax",
             ref_attention(q, k, v, scale=False)),
            ("the scores are divided by D: divide by sqrt(D) (D = head size)", ref_attention(q / math.sqrt(Dq), k, v)),
            ("the mask is applied after the softmax: the kept weights no longer sum to 1; set masked scores to -inf "
             "before the softmax", after @ v64),
            ("the softmax runs over the queries (axis -2): normalise each query's scores over the keys (axis=-1)",
             np.nan_to_num(col) @ v64),
            ("causal_attention returned v itself: weight the values by softmax(q k^T / sqrt(D)) over the allowed keys", v64),
        ]


def _judge_attention(cases):
    def judge(rs):
        for (qq, kk, vv), r in zip(cases, rs):
            what = f"causal_attention(q, k, v) for q {qq.shape}"
            y = array(r, what, shape=qq.shape, floating=True)
            want = ref_attention(qq, kk, vv)
            diagnose(y, want, _attention_mistakes(qq, kk, vv), rtol=1e-4, atol=1e-4)
            array(y, what, dtype=np.float32)
            close(y, want, what, rtol=1e-4, atol=1e-5,
                  hint="softmax((q @ k^T) / sqrt(D) with masked positions set to -inf) @ v")
    return judge


def _judge_causal(rs):
    y1 = array(rs[0], "causal_attention(q, k, v)", shape=q.shape, floating=True)
    y2 = array(rs[1], "causal_attention with the last key and value changed", shape=q.shape, floating=True)
    changed = np.abs(y1 - y2).max(axis=(0, 1, 3)) > 1e-6            # (T,) which query positions changed
    if changed[:-1].any():
        i = int(np.argmax(changed[:-1]))
        raise Fail(f"attention lets position {i} see position {T - 1}: check the causal mask (query i may only see "
                   "keys j <= i; changing the last key and value changed an earlier output)")
    if not changed[-1]:
        raise Fail("changing the last key/value did not change the last output: a position must attend to itself")
    _judge_attention([(q, k, v), (q, kf, vf)])(rs)


kf, vf = k.copy(), v.copy()
kf[:, :, -1] += 3.0
vf[:, :, -1] -= 5.0
ex.test("matches the reference, float32", 2, [call(q, k, v)], _judge_attention([(q, k, v)]))
ex.test("no position sees the future", 2, [call(q, k, v), call(q, kf, vf)], _judge_causal)
ex.test("sharp scores, T > D, odd head size, a single position", 1, [call(q2, k2, v2), call(q1, k1, v1)],
        _judge_attention([(q2, k2, v2), (q1, k1, v1)]))
EXERCISES.append(ex)

# --- layer norm --------------------------------------------------------------------------------
ex = Exercise("layer_norm", "LayerNorm over the last axis")
xl = (3.0 + 2.0 * rng.standard_normal((4, 5, 16))).astype(np.float32)
xl *= np.array([1e-3, 0.1, 1.0, 30.0], dtype=np.float32)[:, None, None]   # several variance scales
wl = rng.standard_normal(16).astype(np.float32)
bl = rng.standard_normal(16).astype(np.float32)
xe = (0.05 * rng.standard_normal((3, 24))).astype(np.float32)          # variance near eps: eps matters
we = rng.standard_normal(24).astype(np.float32)
be = rng.standard_normal(24).astype(np.float32)


def ref_layer_norm(x, w, b, eps=1e-5, ddof=0, eps_outside=False, center=True, axis=-1):
    x = x.astype(np.float64)
    if ddof == 0 and not eps_outside and center and axis == -1:
        return F.layer_norm(x, np.broadcast_to(np.float64(w), x.shape[-1:]), np.broadcast_to(np.float64(b), x.shape[-1:]), eps)
    mu = x.mean(axis=axis, keepdims=True)
    var = x.var(axis=axis, keepdims=True, ddof=ddof)
    den = np.sqrt(var) + eps if eps_outside else np.sqrt(var + eps)
    return ((x - mu) if center else x) / den * w + b


def _ln_mistakes(x, w, b, eps):
    return [
        ("the variance uses N - 1 (ddof=1): LayerNorm uses the biased variance, mean((x - mu)^2)",
         ref_layer_norm(x, w, b, eps, ddof=1)),
        ("the output is not scaled and shifted: multiply by w and add b after normalising", ref_layer_norm(x, 1.0, 0.0, eps)),
        ("eps is added outside the square root: use sqrt(var + eps)", ref_layer_norm(x, w, b, eps, eps_outside=True)),
        ("the mean is not subtracted: LayerNorm centres x first, (x - mean) / sqrt(var + eps)",
         ref_layer_norm(x, w, b, eps, center=False)),
        ("the statistics are taken over every axis: take the mean and variance over the last axis "
         "(axis=-1, keepdims=True)", ref_layer_norm(x, w, b, eps, axis=None)),
        ("the result does not depend on eps: use the eps argument (its default is 1e-5)", ref_layer_norm(x, w, b, 1e-5)),
        ("eps is missing: divide by sqrt(var + eps)", ref_layer_norm(x, w, b, 0.0)),
    ]


def _judge_ln(x, w, b, eps, what):
    def judge(rs):
        y = array(rs[0], what, shape=x.shape, floating=True)
        want = ref_layer_norm(x, w, b, eps)
        diagnose(y, want, _ln_mistakes(x, w, b, eps), rtol=1e-4, atol=1e-4)
        array(y, what, dtype=np.float32)
        close(y, want, what, rtol=1e-4, atol=1e-4, hint="(x - mean) / sqrt(var + eps) * w + b over the last axis")
    return judge


ex.test("matches the reference at several variance scales, float32", 2, [call(xl, wl, bl)],
        _judge_ln(xl, wl, bl, 1e-5, "layer_norm(x, w, b)"))
ex.test("uses eps (1e-2 here), inside the square root", 1, [call(xe, we, be, eps=1e-2)],
        _judge_ln(xe, we, be, 1e-2, "layer_norm(x, w, b, eps=1e-2)"))
EXERCISES.append(ex)
