"""Graded checks for exercises/05_transformer.ipynb.

References: the library's multi-head causal self-attention and pre-LayerNorm block as functions of their
weights, ``tinyllm.nn.attention.attention_forward`` / ``attention_backward`` and
``tinyllm.models.gpt.block_forward`` / ``block_backward`` (Vaswani et al., 2017; GPT-2 with LayerNorm first,
Xiong et al., 2020), run in float64 (``.library``: the library's own code, whatever is plugged). Their
gradients are checked against central finite differences in tests/test_gpt.py, and here at import on the
hidden inputs (a directional derivative). The float64 re-implementations below (:func:`_attn`,
:func:`_block`) only name mistakes: a message names a mistake only when the learner's result equals what
that mistake computes on the same inputs; at import each is checked to equal the library when it has no
mistake switched on.

The end-to-end tests train a small GPT of the library for a few AdamW steps with the learner's attention (or
block) plugged in (``tinyllm.plug``) and compare the loss history with the library's own.
"""
from __future__ import annotations

import math

import numpy as np

from tinyllm import plug
from tinyllm.grading.core import Exercise, Fail, array, call, close, diagnose, value
from tinyllm.models.gpt import block_backward as lib_block_backward
from tinyllm.models.gpt import GPT, GPTConfig
from tinyllm.models.gpt import block_forward as lib_block_forward
from tinyllm.nn.attention import attention_backward as lib_attention_backward
from tinyllm.nn.attention import attention_forward as lib_attention_forward
from tinyllm.optim import AdamW

rng = np.random.default_rng(5005)
EXERCISES: list[Exercise] = []
GRADS = ("dx", "dw_qkv", "db_qkv", "dw_o", "db_o")
KEYS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
        "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
        "mlp.c_proj.weight", "mlp.c_proj.bias")


def f64(*arrays):
    return tuple(np.asarray(a, np.float64) for a in arrays)


def attention_case(B, T, C, H, dtype, seed, scale=0.4):
    r = np.random.default_rng(seed)
    x = r.standard_normal((B, T, C))
    w = (scale * r.standard_normal((C, 3 * C)), 0.3 * r.standard_normal(3 * C),
         scale * r.standard_normal((C, C)), 0.3 * r.standard_normal(C))
    return tuple(a.astype(dtype) for a in (x, *w)) + (H,)


def block_case(B, T, C, H, dtype, seed):
    r = np.random.default_rng(seed)
    shapes = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
              "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
              "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.weight": (4 * C, C),
              "mlp.c_proj.bias": (C,)}
    p = {k: 0.3 * r.standard_normal(s) for k, s in shapes.items()}
    p["ln_1.weight"] += 1.0
    p["ln_2.weight"] += 1.0
    x = 1.5 + 2.0 * r.standard_normal((B, T, C))                      # mean and scale far from 0 and 1
    return x.astype(dtype), {k: v.astype(dtype) for k, v in p.items()}, H


# ---------------------------------------------------------------------------------------------
# float64 re-implementations with switchable mistakes (for naming them only)
# ---------------------------------------------------------------------------------------------
def _attn(x, w_qkv, b_qkv, w_o, b_o, H, m=""):
    """Attention forward in float64 with mistake ``m``; returns (out, parts for the backward)."""
    x, w_qkv, b_qkv, w_o, b_o = f64(x, w_qkv, b_qkv, w_o, b_o)
    B, T, C = x.shape
    D = C // H
    qkv = x @ w_qkv + (0.0 if m == "no_qkv_bias" else b_qkv)
    if m == "interleaved_qkv":
        q, k, v = qkv.reshape(B, T, H, 3, D).transpose(3, 0, 2, 1, 4)
    elif m == "heads_reshaped":
        q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, H, T, D) for i in range(3))
    else:
        q, k, v = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)
    scale = {"no_scale": 1.0, "divide_by_d": 1.0 / D}.get(m, 1.0 / math.sqrt(D))
    s = q @ k.swapaxes(-1, -2) * scale                                  # (B, H, T, T)
    future = np.triu(np.ones((T, T), dtype=bool), 1)
    with np.errstate(all="ignore"):
        if m in ("no_mask", "mask_after_softmax"):
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            if m == "mask_after_softmax":
                p = np.where(future, 0.0, p)
        elif m == "softmax_queries":
            s = np.where(future, -np.inf, s)
            p = np.exp(s - s.max(-2, keepdims=True))
            p = np.nan_to_num(p / p.sum(-2, keepdims=True))
        else:
            s = np.where(future, -np.inf, s)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
    yh = p @ v                                                          # (B, H, T, D)
    y = yh.reshape(B, T, C) if m == "heads_reshaped" else yh.transpose(0, 2, 1, 3).reshape(B, T, C)
    if m == "no_out_proj":
        return y, None
    out = y @ w_o + (0.0 if m == "no_out_bias" else b_o)
    return out, (q, k, v, p, y, scale)


def _attn_backward(dout, x, w_qkv, b_qkv, w_o, b_o, H, m=""):
    """The five gradients in float64 with backward mistake ``m``."""
    dout, x, w_qkv, w_o = f64(dout, x, w_qkv, w_o)
    B, T, C = x.shape
    D = C // H
    _, (q, k, v, p, y, scale) = _attn(x, w_qkv, b_qkv, w_o, b_o, H)
    dw_o = dout.reshape(-1, C).T @ y.reshape(-1, C) if m == "dw_o_transposed" else y.reshape(-1, C).T @ dout.reshape(-1, C)
    db_o = dout.sum(axis=(0, 1))
    dy = (dout @ w_o.T).reshape(B, T, H, D).transpose(0, 2, 1, 3)
    dv = (p if m == "dv_not_transposed" else p.swapaxes(-1, -2)) @ dy
    dp = dy @ v.swapaxes(-1, -2)
    ds = p * dp if m == "no_rowsum" else p * (dp - (dp * p).sum(-1, keepdims=True))
    if m != "no_scale_backward":
        ds = ds * scale
    dq = ds @ k
    dk = ds @ q if m == "dk_not_transposed" else ds.swapaxes(-1, -2) @ q
    dqkv = np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * C)
    dw_qkv = x.reshape(-1, C).T @ dqkv.reshape(-1, 3 * C)
    return dqkv @ w_qkv.T, dw_qkv, dqkv.sum(axis=(0, 1)), dw_o, db_o


def _ln(z, w, b, eps, m=""):
    mu = z.mean(-1, keepdims=True)
    var = z.var(-1, keepdims=True, ddof=1 if m == "ddof1" else 0)
    den = np.sqrt(var) + eps if m == "eps_outside" else np.sqrt(var + (1e-5 if m == "fixed_eps" else eps))
    return (z - mu) / den * w + b


def _gelu(u):
    return 0.5 * u * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u ** 3)))


def _block(x, p, H, eps, m=""):
    """Block forward in float64 with mistake ``m``."""
    x = np.asarray(x, np.float64)
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    lm = m if m in ("ddof1", "eps_outside", "fixed_eps") else ""
    a = _ln(x, p["ln_1.weight"], p["ln_1.bias"], eps, lm)
    att = _attn(a, p["attn.c_attn.weight"], p["attn.c_attn.bias"], p["attn.c_proj.weight"], p["attn.c_proj.bias"], H)[0]
    if m == "post_ln":                                                   # LayerNorm after each residual add
        h = _ln(x + _attn(x, p["attn.c_attn.weight"], p["attn.c_attn.bias"], p["attn.c_proj.weight"],
                          p["attn.c_proj.bias"], H)[0], p["ln_1.weight"], p["ln_1.bias"], eps)
        u = h @ p["mlp.c_fc.weight"] + p["mlp.c_fc.bias"]
        return _ln(h + _gelu(u) @ p["mlp.c_proj.weight"] + p["mlp.c_proj.bias"], p["ln_2.weight"], p["ln_2.bias"], eps)
    h = att if m == "no_attn_residual" else x + att
    m_in = _ln(x if m == "mlp_reads_x" else h, p["ln_2.weight"], p["ln_2.bias"], eps, lm)
    u = m_in @ p["mlp.c_fc.weight"] + p["mlp.c_fc.bias"]
    act = np.maximum(u, 0.0) if m == "relu" else _gelu(u)
    mlp = act @ p["mlp.c_proj.weight"] + p["mlp.c_proj.bias"]
    return mlp if m == "no_mlp_residual" else h + mlp


def _ln_backward(d, zhat, r, w, m=""):
    g = d * w
    if m == "ln_no_mean_term":
        return (g - zhat * (g * zhat).mean(-1, keepdims=True)) * r
    if m == "ln_no_var_term":
        return (g - g.mean(-1, keepdims=True)) * r
    if m == "ln_scale_only":
        return g * r
    return (g - g.mean(-1, keepdims=True) - zhat * (g * zhat).mean(-1, keepdims=True)) * r


def _block_backward(dy, x, p, H, eps, m=""):
    """(dx, grads) in float64 with backward mistake ``m``."""
    dy, x = f64(dy, x)
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    C = x.shape[-1]
    g = {}

    def ln(z, name):
        mu = z.mean(-1, keepdims=True)
        r = 1.0 / np.sqrt(((z - mu) ** 2).mean(-1, keepdims=True) + eps)
        zhat = (z - mu) * r
        return zhat * p[name + ".weight"] + p[name + ".bias"], zhat, r

    def ln_back(d, name, zhat, r):
        g[name + ".weight"] = (d * zhat).sum(axis=(0, 1))
        g[name + ".bias"] = d.sum(axis=(0, 1))
        return _ln_backward(d, zhat, r, p[name + ".weight"], m)

    attn = [p["attn.c_attn.weight"], p["attn.c_attn.bias"], p["attn.c_proj.weight"], p["attn.c_proj.bias"]]
    a, z1, r1 = ln(x, "ln_1")
    h = x + _attn(a, *attn, H)[0]
    mm, z2, r2 = ln(h, "ln_2")
    u = mm @ p["mlp.c_fc.weight"] + p["mlp.c_fc.bias"]
    g["mlp.c_proj.weight"] = _gelu(u).reshape(-1, 4 * C).T @ dy.reshape(-1, C)
    g["mlp.c_proj.bias"] = dy.sum(axis=(0, 1))
    t = np.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u ** 3))
    dgelu = 0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * math.sqrt(2.0 / math.pi) * (1.0 + 3 * 0.044715 * u * u)
    du = (dy @ p["mlp.c_proj.weight"].T) * (1.0 if m == "gelu_backward_skipped" else dgelu)
    g["mlp.c_fc.weight"] = mm.reshape(-1, C).T @ du.reshape(-1, 4 * C)
    g["mlp.c_fc.bias"] = du.sum(axis=(0, 1))
    dh_branch = ln_back(du @ p["mlp.c_fc.weight"].T, "ln_2", z2, r2)
    dh = dh_branch if m == "no_residual_backward" else dy + dh_branch
    da, *dattn = _attn_backward(dh, a, *attn, H)
    g.update(zip(KEYS[2:6], dattn))
    dx_branch = ln_back(da, "ln_1", z1, r1)
    return (dx_branch if m == "no_residual_backward" else dh + dx_branch), g


# ---------------------------------------------------------------------------------------------
# the hidden inputs, and the re-implementations checked against the library at import
# ---------------------------------------------------------------------------------------------
A1 = attention_case(2, 7, 16, 4, np.float32, 51)                     # 4 heads of 4
A2 = attention_case(3, 1, 15, 3, np.float32, 52)                     # one position, head size 5
A3 = attention_case(1, 9, 12, 1, np.float32, 53, scale=1.2)         # one head, sharp scores
A_FUT = (A1[0].copy(),) + A1[1:]
A_FUT[0][:, -1] += 2.0                                                # the last token changed
AB1 = attention_case(2, 5, 12, 3, np.float64, 54)                    # float64 for the backward
AB2 = attention_case(3, 1, 8, 1, np.float64, 55)
DOUT1 = np.random.default_rng(56).standard_normal(AB1[0].shape)
DOUT2 = np.random.default_rng(57).standard_normal(AB2[0].shape)
BL1 = block_case(2, 6, 12, 3, np.float32, 58)
BL2 = block_case(1, 4, 10, 1, np.float32, 59)
BB1 = block_case(2, 4, 8, 2, np.float64, 60)
BB2 = block_case(1, 3, 6, 3, np.float64, 61)
DY1 = np.random.default_rng(62).standard_normal(BB1[0].shape)
DY2 = np.random.default_rng(63).standard_normal(BB2[0].shape)


def ref_attention(case):
    return lib_attention_forward.library(*f64(*case[:5]), case[5])


def ref_attention_grads(dout, case):
    return lib_attention_backward.library(dout, *f64(*case[:5]), case[5])


def ref_block(x, p, H, eps=1e-5):
    return lib_block_forward.library(np.asarray(x, np.float64), {k: np.asarray(v, np.float64) for k, v in p.items()},
                                     H, eps)


def ref_block_grads(dy, x, p, H, eps=1e-5):
    return lib_block_backward.library(dy, x, p, H, eps)


def _self_check():
    for case in (A1, A2, A3):
        assert np.allclose(_attn(*case)[0], ref_attention(case), atol=1e-10)
    for dout, case in ((DOUT1, AB1), (DOUT2, AB2)):
        for a, b in zip(_attn_backward(dout, *case), ref_attention_grads(dout, case)):
            assert np.allclose(a, b, atol=1e-10)
        v = np.random.default_rng(0).standard_normal(case[0].shape)   # directional derivative of the library
        f = lambda t: float((lib_attention_forward.library(case[0] + t * v, *case[1:5], case[5]) * dout).sum())  # noqa: E731
        assert abs((f(1e-6) - f(-1e-6)) / 2e-6 - float((ref_attention_grads(dout, case)[0] * v).sum())) < 1e-6
    for x, p, H in (BL1, BL2):
        assert np.allclose(_block(x, p, H, 1e-5), ref_block(x, p, H), atol=1e-9)
    for dy, (x, p, H) in ((DY1, BB1), (DY2, BB2)):
        for eps in (1e-5, 1e-2):
            dx, g = _block_backward(dy, x, p, H, eps)
            dx_ref, g_ref = ref_block_grads(dy, x, p, H, eps)
            assert np.allclose(dx, dx_ref, atol=1e-9) and all(np.allclose(g[k], g_ref[k], atol=1e-9) for k in KEYS)


_self_check()

# --- 1. attention forward ------------------------------------------------------------------------
ATTN_MISTAKES = [
    ("no_scale", "the scores are not scaled: multiply q @ k^T by 1 / sqrt(D) (D = head size) before the softmax"),
    ("divide_by_d", "the scores are divided by D: divide by sqrt(D) (D = head size)"),
    ("no_mask", "the causal mask is missing: set the scores of future keys (s > t) to -inf before the softmax"),
    ("mask_after_softmax", "the mask is applied after the softmax: the kept weights no longer sum to 1; set masked "
                           "scores to -inf before the softmax"),
    ("softmax_queries", "the softmax runs over the queries (axis -2): normalise each query's scores over the keys "
                        "(axis=-1)"),
    ("interleaved_qkv", "q, k and v are taken interleaved per head: the first C columns of x @ w_qkv are q, the next C "
                        "are k, the last C are v (reshape to (B, T, 3, H, D))"),
    ("heads_reshaped", "the heads are split with a plain reshape to (B, H, T, D), which mixes positions and heads: "
                       "reshape to (B, T, H, D) and transpose to (B, H, T, D) (and back the same way)"),
    ("no_out_proj", "the output projection is missing: return y @ w_o + b_o"),
    ("no_qkv_bias", "b_qkv is not added: x @ w_qkv + b_qkv"),
    ("no_out_bias", "b_o is not added: y @ w_o + b_o"),
]


def _judge_attention(cases):
    def judge(rs):
        for case, r in zip(cases, rs):
            B, T, C = case[0].shape
            what = f"attention_forward for x {case[0].shape}, {case[5]} head(s)"
            y = array(r, what, shape=(B, T, C), floating=True)
            want = ref_attention(case)
            diagnose(y, want, [(msg, _attn(*case, m=m)[0]) for m, msg in ATTN_MISTAKES], rtol=1e-4, atol=1e-4)
            array(y, what, dtype=np.float32)
            close(y, want, what, rtol=1e-4, atol=1e-4,
                  hint="softmax(q k^T / sqrt(D) + mask) v per head, heads side by side, then @ w_o + b_o")
    return judge


def _judge_causal(rs):
    y1 = array(rs[0], "attention_forward", shape=A1[0].shape, floating=True)
    y2 = array(rs[1], "attention_forward with the last token changed", shape=A1[0].shape, floating=True)
    changed = np.abs(y1 - y2).max(axis=(0, 2)) > 1e-5                  # (T,) which positions changed
    T = len(changed)
    if changed[:-1].any():
        i = int(np.argmax(changed[:-1]))
        raise Fail(f"attention lets position {i} see position {T - 1}: changing the last token changed an earlier "
                   "output; check the causal mask (query t may only see keys s <= t)")
    if not changed[-1]:
        raise Fail("changing the last token did not change its own output: a position must attend to itself")
    _judge_attention([A1, A_FUT])(rs)


ex = Exercise("attention_forward", "Multi-head causal self-attention")
ex.test("4 heads, biases, float32, against the library", 2, [call(*A1)], _judge_attention([A1]))
ex.test("no position sees the future", 1, [call(*A1), call(*A_FUT)], _judge_causal)
ex.test("one position (head size 5); one head with sharp scores", 2, [call(*A2), call(*A3)],
        _judge_attention([A2, A3]))
EXERCISES.append(ex)

# --- 2. attention backward ----------------------------------------------------------------------
ATTN_BACK_MISTAKES = [
    ("no_rowsum", "the softmax backward misses the row-sum term: dS = P * (dP - sum(dP * P, axis=-1, keepdims=True))"),
    ("no_scale_backward", "dq and dk miss the 1 / sqrt(D) of the forward pass: scale dS by it"),
    ("dk_not_transposed", "dk uses dS instead of dS^T: dk = dS^T q (swapaxes(-1, -2))"),
    ("dv_not_transposed", "dv uses P instead of P^T: dv = P^T dY (swapaxes(-1, -2))"),
    ("dw_o_transposed", "dw_o is transposed: dw_o = y^T dout, with y the heads' output before w_o"),
]


def _grads(r, case, what):
    """The five returned gradients, checked for shape and type."""
    r = value(r, what)
    if not isinstance(r, (tuple, list)) or len(r) != 5:
        raise Fail(f"{what} must return a tuple (dx, dw_qkv, db_qkv, dw_o, db_o), got "
                   f"{type(r).__name__}{f' of length {len(r)}' if isinstance(r, (tuple, list)) else ''}")
    return [array(g, f"{what}: {name}", shape=a.shape, floating=True) for g, name, a in zip(r, GRADS, case[:5])]


def _judge_attention_grads(names, pairs):
    def judge(rs):
        for (dout, case), r in zip(pairs, rs):
            what = f"attention_backward for x {case[0].shape}, {case[5]} head(s)"
            got = _grads(r, case, what)
            want = ref_attention_grads(dout, case)
            wrong = {m: _attn_backward(dout, *case, m=m) for m, _ in ATTN_BACK_MISTAKES}
            for name in names:
                i = GRADS.index(name)
                diagnose(got[i], want[i], [(f"{name}: {msg}", wrong[m][i]) for m, msg in ATTN_BACK_MISTAKES],
                         rtol=1e-6, atol=1e-8)
                close(got[i], want[i], f"{what}: {name}", rtol=1e-6, atol=1e-8,
                      hint="float64 inputs: the gradient must match the true one to about 1e-8")
    return judge


ex = Exercise("attention_backward", "Attention, backward")
P1, P2 = (DOUT1, AB1), (DOUT2, AB2)
ex.test("dx, float64, 3 heads (gradient-checked)", 2, [call(DOUT1, *AB1)], _judge_attention_grads(["dx"], [P1]))
ex.test("dw_qkv and db_qkv", 2, [call(DOUT1, *AB1)], _judge_attention_grads(["dw_qkv", "db_qkv"], [P1]))
ex.test("dw_o and db_o", 1, [call(DOUT1, *AB1)], _judge_attention_grads(["dw_o", "db_o"], [P1]))
ex.test("one head, one position, batch 3: all five", 1, [call(DOUT2, *AB2)], _judge_attention_grads(list(GRADS), [P2]))
EXERCISES.append(ex)

# --- 3. block forward ---------------------------------------------------------------------------
BLOCK_MISTAKES = [
    ("mlp_reads_x", "the MLP's LayerNorm reads the block input x: it must read h = x + attention (the stream after "
                    "the first residual)"),
    ("no_attn_residual", "the attention branch is not added to x: h = x + attention(LN_1(x))"),
    ("no_mlp_residual", "the MLP branch is not added to h: y = h + MLP(LN_2(h))"),
    ("post_ln", "LayerNorm comes after the residual adds (post-LN): this block normalises first, x + Attn(LN_1(x))"),
    ("relu", "the MLP uses ReLU: use the given gelu"),
    ("ddof1", "the LayerNorm variance uses N - 1 (ddof=1): use the biased variance, mean((z - mu)^2)"),
    ("eps_outside", "eps is added outside the square root: divide by sqrt(var + eps)"),
    ("fixed_eps", "the result does not depend on eps: use the eps argument inside the LayerNorms"),
]


def _judge_block(x, p, H, eps, what):
    def judge(rs):
        y = array(rs[0], what, shape=x.shape, floating=True)
        want = ref_block(x, p, H, eps)
        diagnose(y, want, [(msg, _block(x, p, H, eps, m)) for m, msg in BLOCK_MISTAKES], rtol=1e-4, atol=1e-4)
        array(y, what, dtype=np.float32)
        close(y, want, what, rtol=1e-4, atol=1e-4, hint="h = x + Attn(LN_1(x)); y = h + GELU(LN_2(h) W_fc + b_fc) W_proj + b_proj")
    return judge


ex = Exercise("block_forward", "A transformer block")
ex.test("3 heads, float32, against the library's Block", 2, [call(*BL1)], _judge_block(*BL1, 1e-5, "block_forward(x, p, 3)"))
ex.test("eps=0.5 (inside the square root), one head", 2, [call(*BL2, eps=0.5)],
        _judge_block(*BL2, 0.5, "block_forward(x, p, 1, eps=0.5)"))
EXERCISES.append(ex)

# --- 4. block backward --------------------------------------------------------------------------
BLOCK_BACK_MISTAKES = [
    ("no_residual_backward", "the residual connections are missing from the backward pass: the gradient reaching h "
                             "is dy plus the MLP branch's, and the one reaching x is that plus the attention branch's"),
    ("ln_no_mean_term", "the LayerNorm backward misses the gradient through the mean: subtract mean(g)"),
    ("ln_no_var_term", "the LayerNorm backward misses the gradient through the variance: subtract zhat * mean(g * zhat)"),
    ("ln_scale_only", "the LayerNorm backward only scales by w / sqrt(var + eps): subtract mean(g) and "
                      "zhat * mean(g * zhat) too"),
    ("gelu_backward_skipped", "the GELU backward is skipped: multiply by GELU's derivative (gelu_backward(d, u))"),
]


def _judge_block_grads(dy, x, p, H, eps, names, what):
    def judge(rs):
        r = value(rs[0], what)
        if not isinstance(r, (tuple, list)) or len(r) != 2 or not isinstance(r[1], dict):
            raise Fail(f"{what} must return (dx, grads) with grads a dict of the twelve weight names, got "
                       f"{type(r).__name__}")
        dx, g = r
        missing = sorted(set(KEYS) - set(g))
        if missing:
            raise Fail(f"{what}: grads lacks {', '.join(missing)}: return a gradient for every key of p")
        got = {"dx": array(dx, f"{what}: dx", shape=x.shape, floating=True)}
        got.update({k: array(g[k], f"{what}: grads[{k!r}]", shape=p[k].shape, floating=True) for k in KEYS})
        dx_ref, g_ref = ref_block_grads(dy, x, p, H, eps)
        want = {"dx": dx_ref, **g_ref}
        wrong = [(msg, _block_backward(dy, x, p, H, eps, m)) for m, msg in BLOCK_BACK_MISTAKES]
        for name in names:
            label = "dx" if name == "dx" else f"grads[{name!r}]"
            diagnose(got[name], want[name],
                     [(f"{label}: {msg}", w[0] if name == "dx" else w[1][name]) for msg, w in wrong],
                     rtol=1e-6, atol=1e-8)
            close(got[name], want[name], f"{what}: {label}", rtol=1e-6, atol=1e-8,
                  hint="float64 inputs: the gradient must match the true one to about 1e-8")
    return judge


ex = Exercise("block_backward", "The block, backward")
W_NAMES = [k for k in KEYS if not k.startswith("ln_")]
LN_NAMES = [k for k in KEYS if k.startswith("ln_")]
ex.test("dx, float64, 2 heads (gradient-checked)", 2, [call(DY1, *BB1)],
        _judge_block_grads(DY1, *BB1, 1e-5, ["dx"], "block_backward(dy, x, p, 2)"))
ex.test("the LayerNorm weights' gradients", 1, [call(DY1, *BB1)],
        _judge_block_grads(DY1, *BB1, 1e-5, LN_NAMES, "block_backward(dy, x, p, 2)"))
ex.test("the attention and MLP weights' gradients", 1, [call(DY1, *BB1)],
        _judge_block_grads(DY1, *BB1, 1e-5, W_NAMES, "block_backward(dy, x, p, 2)"))
ex.test("eps=1e-2, 3 heads of 2, batch 1: everything", 1, [call(DY2, *BB2, eps=1e-2)],
        _judge_block_grads(DY2, *BB2, 1e-2, ["dx"] + list(KEYS), "block_backward(dy, x, p, 3, eps=1e-2)"))
EXERCISES.append(ex)

# --- end to end: the library's GPT trains on the learner's code -----------------------------------
E2E_CFG = GPTConfig(vocab_size=11, context_length=10, n_layers=2, n_heads=4, dim=16)   # not the notebook's GPT
E2E_STEPS = 4


def train_gpt(**plugs) -> np.ndarray:
    """Loss history of a small GPT trained with AdamW for E2E_STEPS steps (fixed seeds), with ``plugs`` plugged."""
    model = GPT(E2E_CFG, rng=7)
    opt = AdamW(model.parameters(), lr=2e-2)
    r = np.random.default_rng(8)
    losses = []
    with plug.use(**plugs):
        for _ in range(E2E_STEPS):
            start = r.integers(0, 7, size=(3, 1))
            ids = (start + np.arange(E2E_CFG.context_length + 1) * r.integers(1, 3, size=(3, 1))) % E2E_CFG.vocab_size
            opt.zero_grad()
            losses.append(model.loss(ids[:, :-1], ids[:, 1:]))
            model.backward()
            opt.step()
    return np.array(losses)


REF_LOSSES = train_gpt()


def _e2e(what: str, names: tuple[str, ...]):
    def run(learner):
        try:
            got = train_gpt(**{n: getattr(learner, n) for n in names})
        except Fail:
            raise
        except Exception as exc:  # noqa: BLE001 - what the learner returned did not fit the library
            raise Fail(f"training the library's GPT on your {what} stopped: {type(exc).__name__}: {exc} (check the "
                       "shapes and types your functions return)") from None
        close(got, REF_LOSSES, f"the losses of the library's GPT trained on your {what} for {E2E_STEPS} AdamW steps",
              rtol=0.0, atol=1e-4)
    return run


EXERCISES[1].end_to_end("the library's GPT trains on your attention (forward and backward): the same losses", 3,
                        _e2e("attention", ("attention_forward", "attention_backward")))
EXERCISES[3].end_to_end("the library's GPT trains on your block (forward and backward): the same losses", 4,
                        _e2e("block", ("block_forward", "block_backward")))
