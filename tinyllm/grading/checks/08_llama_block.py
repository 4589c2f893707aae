"""Graded checks for exercises/08_llama_block.ipynb.

References, all from the library and computed in float64 where they are pure functions:

- RMSNorm (Zhang & Sennrich, 2019): ``tinyllm.nn.functional.rms_norm``;
- RoPE, half-split layout (Su et al., 2021; HF's rotate_half): ``tinyllm.models.llama.rope_tables`` and
  ``tinyllm.kernels.rope``;
- SwiGLU (Shazeer, 2020): ``tinyllm.kernels.swiglu``;
- grouped-query attention (Ainslie et al., 2023): ``tinyllm.nn.attention.causal_attention`` with each key/value
  head repeated for the ``H / KV`` query heads of its group;
- the block and the model: ``tinyllm.models.llama.Llama`` itself. The block's output is the residual stream that
  the library's ``Llama.forward`` hands to its final RMSNorm (:func:`library_residual`); the logits are its output.

The real block is block 12 of SmolLM2-135M-Instruct, mapped from the GGUF file by the library's own
``tinyllm.models.gguf_map.weights_from_gguf`` (q/k rows un-permuted, matrices transposed to ``y = x @ W``) in this process. The
composed float64 block :func:`ref_block` only names mistakes (a missing residual, RoPE on v, ...) and evaluates
arbitrary positions; at import it is checked against the library on both the random and the real block.
"""
from __future__ import annotations

import numpy as np

from tinyllm import kernels, plug
from tinyllm.grading.core import CallError, Exercise, Fail, array, call, close, diagnose, value
from tinyllm.models.gguf_map import config_from_gguf_metadata, llama_from_gguf, weights_from_gguf
from tinyllm.models.llama import BLOCK_STORAGE, Llama, LlamaConfig, random_weights, rope_tables
from tinyllm.models.smollm2 import ModelNotInstalledError, open_gguf
from tinyllm.nn import functional as F
from tinyllm.nn.attention import causal_attention as lib_attention

rng = np.random.default_rng(8088)
EXERCISES: list[Exercise] = []


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------

def ref_rms(x, w, eps=1e-5):
    return F.rms_norm(np.asarray(x, np.float64), np.asarray(w, np.float64), eps)


def ref_rope(x, positions, base=10000.0, interleaved=False, exponent=2.0):
    """The library's RoPE (``rope_tables`` + ``kernels.rope``) in float64 on x (..., T, D) at ``positions`` (T,).

    The mistakes are expressed through it: frequencies base^(-i/D) are base'^(-2i/D) with base' = sqrt(base),
    and the interleaved layout is the half-split one on the even/odd-permuted vector."""
    x = np.asarray(x, np.float64)
    positions = np.asarray(positions)
    d = x.shape[-1]
    cos, sin = rope_tables(d, base ** (exponent / 2.0), int(positions.max()) + 1, dtype=np.float64)
    cos, sin = cos[positions], sin[positions]                      # (T, D/2) broadcast over the leading axes
    if interleaved:
        perm = np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])   # evens first, then odds
        out = np.empty_like(x)
        out[..., perm] = kernels.rope(x[..., perm], cos, sin)
        return out
    return kernels.rope(x, cos, sin)


def ref_swiglu(x, wg, wu, wd, variant=""):
    x, wg, wu, wd = (np.asarray(a, np.float64) for a in (x, wg, wu, wd))
    g, u = x @ wg, x @ wu
    if variant == "gate_on_up":
        g, u = u, g
    if variant == "sigmoid":
        return (u / (1.0 + np.exp(-g))) @ wd
    if variant == "after_product":
        return F.silu(g * u) @ wd
    if variant == "relu":
        return (np.maximum(g, 0.0) * u) @ wd
    if variant == "gelu":
        return (0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g ** 3))) * u) @ wd
    if variant == "down_each":
        return (F.silu(g) @ wd) * (u @ wd)
    return kernels.swiglu(g, u) @ wd


def ref_gqa(q, k, v, tiled=False, mask=True, scale=True):
    """``tinyllm.nn.attention.causal_attention`` (float64) with KV head h // G repeated for query head h."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    G = q.shape[1] // k.shape[1]
    k, v = (np.tile(a, (1, G, 1, 1)) if tiled else np.repeat(a, G, axis=1) for a in (k, v))
    if not scale:
        q = q * np.sqrt(q.shape[-1])                               # cancels the library's 1 / sqrt(D)
    if not mask:
        T = q.shape[-2]
        return np.stack([lib_attention(q[..., t:t + 1, :], k, v)[0][..., 0, :] for t in range(T)], axis=-2)
    return lib_attention(q, k, v)[0]


def ref_block(x, w, H, KV, positions, base, eps, variant=""):
    """One Llama block in float64 from the references above (``variant`` names a mistake to reproduce)."""
    x = np.asarray(x, np.float64)
    B, T, _ = x.shape
    D = w["wq"].shape[1] // H
    pos = np.arange(T) if variant == "positions_ignored" else positions
    h = ref_rms(x, w["attn_norm"], eps)

    def heads(a, n):                                               # (B, T, n D) -> (B, n, T, D)
        if variant == "split_by_reshape":
            return a.reshape(B, n, T, D)
        return a.reshape(B, T, n, D).transpose(0, 2, 1, 3)
    q, k, v = heads(h @ w["wq"], H), heads(h @ w["wk"], KV), heads(h @ w["wv"], KV)
    q, k = ref_rope(q, pos, base), ref_rope(k, pos, base)
    if variant == "rope_on_v":
        v = ref_rope(v, pos, base)
    y = ref_gqa(q, k, v)                                           # (B, H, T, D)
    y = y.reshape(B, T, H * D) if variant == "merge_by_reshape" else y.transpose(0, 2, 1, 3).reshape(B, T, H * D)
    attn = y @ w["wo"]
    hh = attn if variant == "no_residual_1" else x + attn
    norm2 = w["attn_norm"] if variant == "attn_norm_twice" else w["ffn_norm"]
    m = ref_swiglu(ref_rms(x if variant == "mlp_reads_input" else hh, norm2, eps), w["w_gate"], w["w_up"], w["w_down"])
    return m + (attn if variant == "no_residual" else hh)


def split_block(weights, i, config):
    """Block i of the library's (fused) weights dict as the exercise's dict of nine (IN, OUT) matrices and
    norms: :meth:`Llama.block_weights`, copied contiguous (the learner's code may write into them)."""
    return {k: np.ascontiguousarray(v) for k, v in Llama(config, weights=weights).block_weights(i).items()}


def final_residual(model, ids):
    """The residual stream after the last block of the library's ``model.forward(ids)`` (B, T, C),
    read at the ``resid_post`` tap point (:meth:`tinyllm.models.llama.Llama.hooks`)."""
    seen = {}

    def keep(x, layer):
        seen[layer] = np.array(x)

    with model.hooks(resid_post=keep):
        model.forward(ids)
    return seen[model.config.n_layers - 1]


def library_residual(config, weights, x):
    """The library's output of block 0 of ``weights`` on the residual stream x (B, T, C), positions 0..T-1:
    a one-block ``Llama`` whose embedding rows are the rows of x."""
    B, T, C = x.shape
    cfg1 = config.replace(n_layers=1, vocab_size=B * T, tie_embeddings=True, context_length=max(T, 8))
    w = {k: v for k, v in weights.items() if k.startswith("blk.0.")}
    w.update(tok_embd=np.ascontiguousarray(x.reshape(B * T, C), dtype=np.float32), norm=np.ones(C, np.float32))
    return final_residual(Llama(cfg1, weights=w), np.arange(B * T).reshape(B, T))       # (B, T, C) float32


# --- RMSNorm -----------------------------------------------------------------------------------
ex = Exercise("rms_norm", "RMSNorm")
xn = (0.5 + rng.standard_normal((3, 5, 24))).astype(np.float32)    # rows with a clear mean: LayerNorm differs
wn = (1.0 + 0.3 * rng.standard_normal(24)).astype(np.float32)
xtiny = (3e-3 * rng.standard_normal((4, 40))).astype(np.float32)  # where eps matters
wtiny = rng.standard_normal(40).astype(np.float32)
alias = (1.0 + rng.standard_normal(12)).astype(np.float32)


def _rms_mistakes(x, w, eps):
    """(feedback, what that mistake returns) for typical RMSNorm mistakes, in float64."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return [
        ("you subtract the mean: that is LayerNorm; RMSNorm divides by sqrt(mean(x^2) + eps) without centring",
         ref_rms(x - x.mean(axis=-1, keepdims=True), w, eps)),
        ("the weight w is missing: multiply the normalised x by w", ref_rms(x, np.ones_like(w), eps)),
        ("you divide by the root of the SUM of squares: RMSNorm uses the MEAN, sqrt(mean(x^2) + eps)",
         x / np.sqrt((x * x).sum(axis=-1, keepdims=True) + eps) * w),
        ("the mean of x^2 is taken over the whole array: RMSNorm normalises each vector over the last axis "
         "(np.mean(x * x, axis=-1, keepdims=True))", x / np.sqrt(np.mean(x * x) + eps) * w),
        ("the square root is missing: divide by sqrt(mean(x^2) + eps), not by mean(x^2) + eps", x / (ms + eps) * w),
        ("eps is added outside the square root: use sqrt(mean(x^2) + eps)", x / (np.sqrt(ms) + eps) * w),
    ]


def _judge_rms(rs):
    y = array(rs[0], "rms_norm(x, w)", shape=xn.shape, dtype=np.float32)
    diagnose(y, ref_rms(xn, wn), _rms_mistakes(xn, wn, 1e-5), rtol=1e-4, atol=1e-4)
    close(y, ref_rms(xn, wn), "rms_norm(x, w)", rtol=1e-4, atol=1e-5, hint="x / sqrt(mean(x**2, axis=-1) + eps) * w")


def _judge_rms_eps(rs):
    y = array(rs[0], "rms_norm(x, w, eps=1e-4) of inputs of size 3e-3", shape=xtiny.shape, floating=True)
    want = ref_rms(xtiny, wtiny, 1e-4)
    diagnose(y, want, _rms_mistakes(xtiny, wtiny, 1e-4)
             + [("the eps argument is ignored (you used 1e-5): with eps=1e-4 the result must change",
                 ref_rms(xtiny, wtiny, 1e-5))], rtol=1e-3, atol=1e-6)
    close(y, want, "rms_norm(x, w, eps=1e-4) of inputs of size 3e-3", rtol=1e-3, atol=1e-6,
          hint="eps goes inside the square root")


def _judge_rms_alias(rs):
    y_copy = array(rs[0], "rms_norm(x, w)", shape=alias.shape, floating=True)
    y_same = array(rs[1], "rms_norm(x, x)", shape=alias.shape, floating=True)
    want = ref_rms(alias, alias)
    close(y_copy, want, "rms_norm(x, w) of a 1-D x", rtol=1e-4, atol=1e-5, hint="normalise over the last axis")
    if not np.allclose(y_same, want, rtol=1e-4, atol=1e-5):
        raise Fail("rms_norm(x, w) gives a different result when w is the same array as x: your function changes "
                   "x in place (x /= ..., x *= ...); compute a new array and leave the inputs alone")


ex.test("matches the reference, float32", 1, [call(xn, wn)], _judge_rms)
ex.test("eps=1e-4, inside the square root", 1, [call(xtiny, wtiny, eps=1e-4)], _judge_rms_eps)
ex.test("leaves its inputs unchanged", 1, [call(alias, alias.copy()), call(alias, alias)], _judge_rms_alias)
EXERCISES.append(ex)

# --- RoPE --------------------------------------------------------------------------------------
ex = Exercise("apply_rope", "Rotary position embeddings (half-split layout)")
xr = rng.standard_normal((2, 3, 5, 8)).astype(np.float32)          # (B, H, T, D)
pos = np.arange(4, 9)                                              # (T,) a decode offset of 4
xr2 = rng.standard_normal((3, 7, 16)).astype(np.float32)           # (H, T, D), no batch axis
pos2 = np.array([0, 3, 4, 10, 11, 12, 30])                         # gaps, as after left padding


def _rope_views(x, positions, base):
    """The mistake of writing the rotated first half into x and then reading the (changed) view for the second."""
    x = np.asarray(x, np.float64).copy()
    h = x.shape[-1] // 2
    cos, sin = rope_tables(x.shape[-1], base, int(np.max(positions)) + 1, dtype=np.float64)
    c, s = cos[positions], sin[positions]
    a, b = x[..., :h], x[..., h:]
    x[..., :h] = a * c - b * s
    x[..., h:] = b * c + a * s
    return x


def _rope_by_hand(x, positions, base, *, first=0, sign=1.0, swap=False):
    """Half-split RoPE in float64 with a mistake: frequencies from i = ``first``, angle times ``sign``, or the
    two rotated halves concatenated in swapped order."""
    x = np.asarray(x, np.float64)
    d = x.shape[-1]
    ang = sign * np.asarray(positions, np.float64)[:, None] * base ** (-2.0 * np.arange(first, first + d // 2) / d)
    a, b = x[..., :d // 2], x[..., d // 2:]
    halves = [a * np.cos(ang) - b * np.sin(ang), b * np.cos(ang) + a * np.sin(ang)]
    return np.concatenate(halves[::-1] if swap else halves, axis=-1)


def _diagnose_rope(y, x, positions, base, what):
    want = ref_rope(x, positions, base)
    mistakes = [
        (ref_rope(x, positions, base, interleaved=True),
         "you rotate interleaved pairs (x[0], x[1]), (x[2], x[3]), ...: this lesson uses the half-split layout, "
         "pairing x[i] with x[i + D/2] (rotate_half)"),
        (ref_rope(x, positions, base, exponent=1.0),
         "the frequencies are base^(-i/D): use theta_i = base^(-2i/D) for i = 0 .. D/2 - 1"),
        (ref_rope(x, np.arange(len(positions)), base),
         "the angles ignore the positions argument (they start at 0): use angle = positions[t] * theta_i"),
        (_rope_views(x, positions, base),
         "the second half is computed from the already-rotated first half: x[..., :D/2] is a view, so writing into "
         "x changes it; build a new array (np.concatenate) from the original halves"),
        (ref_rope(x, positions, 10000.0),
         f"the base argument is ignored: apply_rope(..., base={base:g}) must use theta_i = base^(-2i/D) with that "
         "base, not 10000"),
        (_rope_by_hand(x, positions, base, sign=-1.0),
         "x rotates the wrong way (the signs of the sin terms are swapped): the first half becomes "
         "x1 cos - x2 sin, the second x2 cos + x1 sin"),
        (_rope_by_hand(x, positions, base, swap=True),
         "the two rotated halves are concatenated in the wrong order: [x1 cos - x2 sin, x2 cos + x1 sin]"),
        (_rope_by_hand(x, positions, base, first=1),
         "the frequencies start one too late: theta_i = base^(-2i/D) for i = 0 .. D/2 - 1 (np.arange(D // 2)), "
         "so the first pair turns by exactly positions[t] radians"),
    ]
    for bad, msg in mistakes:
        if not np.allclose(bad, want, atol=1e-4) and np.allclose(y, bad, atol=1e-4):
            raise Fail(msg)
    close(y, want, what, rtol=1e-4, atol=1e-5)


def _judge_rope(rs):
    y = array(rs[0], "apply_rope(x, positions)", shape=xr.shape, dtype=np.float32)
    _diagnose_rope(y, xr, pos, 10000.0, "apply_rope(x, positions)")


def _judge_rope_base(rs):
    if isinstance(rs[0], CallError) and rs[0].type == "IndexError" and "tuple index" in rs[0].message:
        raise Fail(f"apply_rope of a 3-D x (H, T, D) raised IndexError ({rs[0].message}): x may have any number of "
                   "leading axes; index from the end (x.shape[-1], x[..., :D // 2])")
    y = array(rs[0], "apply_rope(x, positions, base=500.0)", shape=xr2.shape, dtype=np.float32)
    _diagnose_rope(y, xr2, pos2, 500.0, "apply_rope(x, positions, base=500.0) at positions with gaps")


def _judge_rope_norm(rs):
    y = array(rs[0], "apply_rope(x, positions)", shape=xr.shape, floating=True)
    if np.allclose(y, xr, atol=1e-6):
        raise Fail("apply_rope(x, positions) returned x unchanged: at positions 4..8 each pair turns by the angle "
                   "positions[t] * theta_i")
    close(np.linalg.norm(y, axis=-1), np.linalg.norm(xr.astype(np.float64), axis=-1), "the vector lengths after RoPE",
          rtol=1e-4, hint="a rotation keeps every head vector's length")
    y0 = array(rs[1], "apply_rope at position 0", shape=xr[:, :, :1].shape, floating=True)
    close(y0, xr[:, :, :1], "apply_rope at position 0", atol=1e-6, hint="position 0 rotates by angle 0: nothing changes")


ex.test("matches the reference (half-split) at a decode offset, float32", 2, [call(xr, pos)], _judge_rope)
ex.test("base=500 and positions with gaps, 3-D input", 2, [call(xr2, pos2, base=500.0)], _judge_rope_base)
ex.test("a rotation: keeps lengths, position 0 unchanged", 1, [call(xr, pos), call(xr[:, :, :1], np.array([0]))],
        _judge_rope_norm)
EXERCISES.append(ex)

# --- SwiGLU ------------------------------------------------------------------------------------
ex = Exercise("swiglu_mlp", "The SwiGLU MLP")
xs = rng.standard_normal((2, 5, 12)).astype(np.float32)
wsg, wsu = (0.4 * rng.standard_normal((2, 12, 20))).astype(np.float32)
wsd = (0.3 * rng.standard_normal((20, 12))).astype(np.float32)
xs2 = (2.0 * rng.standard_normal((7, 16))).astype(np.float32)
ws2 = [(0.5 * rng.standard_normal(s)).astype(np.float32) for s in ((16, 40), (16, 40), (40, 16))]


def _diagnose_swiglu(y, args, what):
    want = ref_swiglu(*args)
    for variant, msg in (("gate_on_up", "SiLU goes on the gate projection x @ w_gate, not on x @ w_up"),
                         ("sigmoid", "the gate uses sigmoid(z): SwiGLU's gate is SiLU(z) = z * sigmoid(z)"),
                         ("after_product", "SiLU is applied after the product: it goes on the gate alone, "
                                           "silu(x @ w_gate) * (x @ w_up)"),
                         ("relu", "the gate uses ReLU: SwiGLU's gate is SiLU(z) = z * sigmoid(z)"),
                         ("gelu", "the gate uses GELU: SwiGLU's gate is SiLU(z) = z * sigmoid(z)"),
                         ("down_each", "w_down is applied to each factor and the results multiplied: w_down projects "
                                       "the product, (silu(x @ w_gate) * (x @ w_up)) @ w_down")):
        bad = ref_swiglu(*args, variant=variant)
        if not np.allclose(bad, want, atol=1e-4) and np.allclose(y, bad, atol=1e-4):
            raise Fail(msg)
    close(y, want, what, rtol=1e-4, atol=1e-5, hint="(silu(x @ w_gate) * (x @ w_up)) @ w_down")


def _no_down(r, x, w_up, what):
    """Fail when the result has the hidden width F = w_up.shape[1]: the w_down projection is missing."""
    r = value(r, what)
    F_ = w_up.shape[1]
    if isinstance(r, np.ndarray) and r.shape == x.shape[:-1] + (F_,) and F_ != x.shape[-1]:
        raise Fail(f"{what} has shape {r.shape}, the hidden width F = {F_}: project back with w_down to "
                   f"{x.shape}")


def _judge_swiglu(rs):
    _no_down(rs[0], xs, wsu, "swiglu_mlp(x, w_gate, w_up, w_down)")
    y = array(rs[0], "swiglu_mlp(x, w_gate, w_up, w_down)", shape=xs.shape, dtype=np.float32)
    _diagnose_swiglu(y, (xs, wsg, wsu, wsd), "swiglu_mlp(x, w_gate, w_up, w_down)")


def _judge_swiglu_2d(rs):
    _no_down(rs[0], xs2, ws2[1], "swiglu_mlp of a (7, 16) input, width 40")
    y = array(rs[0], "swiglu_mlp of a (7, 16) input, width 40", shape=xs2.shape, dtype=np.float32)
    _diagnose_swiglu(y, (xs2, *ws2), "swiglu_mlp of a (7, 16) input, width 40")


ex.test("matches the reference, float32", 2, [call(xs, wsg, wsu, wsd)], _judge_swiglu)
ex.test("another width and a 2-D input", 1, [call(xs2, *ws2)], _judge_swiglu_2d)
EXERCISES.append(ex)

# --- grouped-query attention -------------------------------------------------------------------
ex = Exercise("gqa_attention", "Causal grouped-query attention")
qg = rng.standard_normal((2, 9, 6, 8)).astype(np.float32)          # SmolLM2's grouping: 9 query heads, 3 KV heads
kg, vg = rng.standard_normal((2, 2, 3, 6, 8)).astype(np.float32)
qm = rng.standard_normal((1, 5, 4, 16)).astype(np.float32)         # multi-query: 5 heads, 1 KV head
km, vm = rng.standard_normal((2, 1, 1, 4, 16)).astype(np.float32)
q1 = rng.standard_normal((1, 4, 1, 8)).astype(np.float32)          # one position
k1, v1 = rng.standard_normal((2, 1, 2, 1, 8)).astype(np.float32)
qa = rng.standard_normal((1, 2, 5, 8)).astype(np.float32)          # H == KV, for the aliasing test
_big = np.random.default_rng(808)                                  # scores of about +-700: exp overflows
qbig = (30.0 * _big.standard_normal((1, 4, 6, 16))).astype(np.float32)   # 4 query heads, 2 KV heads
kbig = (30.0 * _big.standard_normal((1, 2, 6, 16))).astype(np.float32)
vbig = _big.standard_normal((1, 2, 6, 16)).astype(np.float32)


def _gqa_by_hand(q, k, v, *, diag=1, scale=None, axis=-1, fill=-np.inf, heads=None):
    """Causal attention in float64 with a mistake: the mask hides keys from ``diag`` positions after the query
    on (1 is right), scores times ``scale`` (1/sqrt(D) is right), the softmax over ``axis``, masked scores set
    to ``fill``, query head h reading KV head ``heads[h]``. Rows with nothing left give NaN, as they would."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    H, T, D = q.shape[1:]
    heads = np.arange(H) // (H // k.shape[1]) if heads is None else heads
    k, v = k[:, heads], v[:, heads]
    s = q @ k.swapaxes(-1, -2) * (1.0 / np.sqrt(D) if scale is None else scale)
    s = np.where(np.triu(np.ones((T, T), dtype=bool), diag), fill, s)
    with np.errstate(all="ignore"):
        e = np.exp(s - s.max(axis=axis, keepdims=True))
        return (e / e.sum(axis=axis, keepdims=True)) @ v


def _diagnose_gqa(y, q, k, v, what):
    want = ref_gqa(q, k, v)
    H, KV = q.shape[1], k.shape[1]
    G = H // KV
    variants = [(f"query head h reads key/value head h % KV: with G = H / KV = {G}, query heads 0..G-1 "
                 "share KV head 0, so head h reads KV head h // G (np.repeat, not np.tile)", ref_gqa(q, k, v, tiled=True)),
                ("attention lets a position see later positions: apply the causal mask "
                 "(key position <= query position)", ref_gqa(q, k, v, mask=False)),
                ("the scores are not scaled: divide q . k by sqrt(D)", ref_gqa(q, k, v, scale=False)),
                ("the mask also hides the diagonal, so position 0 sees nothing (NaN): a position attends to itself, "
                 "mask only key > query (np.triu(..., k=1))", _gqa_by_hand(q, k, v, diag=0)),
                ("the mask is one off: each position also sees the next position; mask key > query "
                 "(np.triu(..., k=1))", _gqa_by_hand(q, k, v, diag=2)),
                ("the scores are divided by D: divide q . k by sqrt(D), not by D",
                 _gqa_by_hand(q, k, v, scale=1.0 / q.shape[-1])),
                ("the softmax runs over the wrong axis (the queries): normalise each query's row over the keys, "
                 "axis=-1", _gqa_by_hand(q, k, v, axis=-2)),
                ("the masked scores are set to 0, which still gets weight after exp: set them to -inf",
                 _gqa_by_hand(q, k, v, fill=0.0))]
    if (np.arange(H) // KV < KV).all():
        variants.append((f"query head h reads KV head h // KV: with G = H / KV = {G} query heads per KV head, head h "
                         "reads KV head h // G", _gqa_by_hand(q, k, v, heads=np.arange(H) // KV)))
    diagnose(y, want, variants, rtol=1e-4, atol=1e-4)
    close(y, want, what, rtol=1e-4, atol=1e-5)


def _judge_gqa(rs):
    y = array(rs[0], "gqa_attention(q, k, v) with 9 query heads and 3 KV heads", shape=qg.shape, dtype=np.float32)
    _diagnose_gqa(y, qg, kg, vg, "gqa_attention(q, k, v) with 9 query heads and 3 KV heads")


def _judge_gqa_mqa(rs):
    y = array(rs[0], "gqa_attention with 5 query heads and 1 KV head", shape=qm.shape, floating=True)
    _diagnose_gqa(y, qm, km, vm, "gqa_attention with 5 query heads and 1 KV head")
    y1 = array(rs[1], "gqa_attention of a single position", shape=q1.shape, floating=True)
    close(y1, np.repeat(v1, 2, axis=1), "gqa_attention of a single position", rtol=1e-5, atol=1e-6,
          hint="one position attends only to itself: the output is its value vector")
    what = "gqa_attention with scores of about +-700"
    yb = array(rs[2], what, shape=qbig.shape, floating=True)
    if not np.isfinite(yb).all():
        raise Fail(f"{what} contains NaN or inf: exp overflows; subtract each row's maximum before np.exp "
                   "(softmax is unchanged by a shift)")
    _diagnose_gqa(yb, qbig, kbig, vbig, what)


def _judge_gqa_alias(rs):
    y_copy = array(rs[0], "gqa_attention(q, k, v)", shape=qa.shape, floating=True)
    y_same = array(rs[1], "gqa_attention(x, x, x)", shape=qa.shape, floating=True)
    want = ref_gqa(qa, qa, qa)
    _diagnose_gqa(y_copy, qa, qa, qa, "gqa_attention(q, k, v) with 2 heads")
    if not np.allclose(y_same, want, rtol=1e-4, atol=1e-5):
        raise Fail("gqa_attention(q, k, v) gives a different result when q, k and v are the same array: your "
                   "function changes an input in place (q *= ..., q /= ...); compute new arrays instead")


ex.test("9 query heads, 3 KV heads (SmolLM2's grouping), float32", 3, [call(qg, kg, vg)], _judge_gqa)
ex.test("one KV head (multi-query), a single position, and scores of about +-700", 1,
        [call(qm, km, vm), call(q1, k1, v1), call(qbig, kbig, vbig)], _judge_gqa_mqa)
ex.test("leaves its inputs unchanged", 1, [call(qa, qa.copy(), qa.copy()), call(qa, qa, qa)], _judge_gqa_alias)
EXERCISES.append(ex)

# --- the Llama block ---------------------------------------------------------------------------
ex = Exercise("llama_block", "A Llama block from your pieces")
# a small random Llama: 4 query heads, 2 KV heads, C = 24 != H D = 32
cfg_b = LlamaConfig(vocab_size=16, dim=24, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=40,
                    rope_base=10000.0, norm_eps=1e-5, context_length=64)
wts_b = random_weights(cfg_b, np.random.default_rng(81), std=0.2)
blk_b = split_block(wts_b, 0, cfg_b)
xb = rng.standard_normal((2, 6, 24)).astype(np.float32)
want_b = library_residual(cfg_b, wts_b, xb)
posb = np.array([0, 2, 3, 7, 8, 20])                               # gapped positions, as after left padding
assert np.allclose(ref_block(xb, blk_b, 4, 2, np.arange(6), 10000.0, 1e-5), want_b, rtol=1e-5, atol=1e-5)

# block 12 of SmolLM2 through the library's weight mapping, on real embedding rows of hidden token ids
_REAL = 12
_rows = np.array([[3575, 282, 5197, 314, 3040, 28], [1097, 3123, 4263, 30, 216, 260]])     # (2, 6) token ids


def _real_block():
    """(x (2, 6, C), the block's nine arrays, the library's output, the config) for SmolLM2's block _REAL."""
    reader = open_gguf()
    cfg = config_from_gguf_metadata(reader.metadata)
    x = reader.dequantize("token_embd.weight")[_rows]                                     # (2, 6, C)

    def tensor(name):
        if name == "token_embd.weight":
            return np.zeros((1, cfg.dim), np.float32)               # the model's embedding is not needed here
        return reader.dequantize(name.replace("blk.0.", f"blk.{_REAL}.", 1))

    wts = weights_from_gguf(cfg.replace(n_layers=1, vocab_size=1), tensor, threads=1)
    want = library_residual(cfg, wts, x)
    blk = split_block(wts, 0, cfg.replace(n_layers=1, vocab_size=1))
    assert np.allclose(ref_block(x, blk, 9, 3, np.arange(6), cfg.rope_base, cfg.norm_eps), want, rtol=1e-4, atol=1e-4)
    return x, blk, want, cfg


try:
    x_real, blk_s, want_s, cfg_s = _real_block()
    _NO_MODEL = None
except ModelNotInstalledError as exc:       # grade the rest; this one test says what the grader's machine lacks
    x_real, blk_s, want_s, cfg_s = xb, blk_b, want_b, cfg_b
    _NO_MODEL = str(exc)

BLOCK_MISTAKES = (
    ("no_residual", "the block's input is not added back: y = h + MLP(RMSNorm(h)) with h = x + attention(...) "
                    "(two residual additions)"),
    ("no_residual_1", "the first residual is missing: h = x + attention(RMSNorm(x)), then y = h + MLP(RMSNorm(h))"),
    ("mlp_reads_input", "the MLP's RMSNorm reads the block input x: it must read h = x + attention(RMSNorm(x))"),
    ("rope_on_v", "RoPE rotates the queries and keys only, not the values"),
    ("positions_ignored", "the positions argument is ignored (you rotate by 0..T-1): pass positions to apply_rope"),
    ("attn_norm_twice", "the MLP's RMSNorm uses w['attn_norm']: the second norm has its own weight, w['ffn_norm']"),
    ("split_by_reshape", "the heads are split by reshaping (B, T, H D) straight to (B, H, T, D), which mixes "
                         "positions and heads: reshape to (B, T, H, D), then transpose(0, 2, 1, 3)"),
    ("merge_by_reshape", "the heads are merged by reshaping (B, H, T, D) straight to (B, T, H D): transpose back to "
                         "(B, T, H, D) before the reshape"),
)


def _diagnose_block(y, x, w, H, KV, positions, base, eps, want, what, atol):
    for variant, msg in BLOCK_MISTAKES:
        bad = ref_block(x, w, H, KV, positions, base, eps, variant)
        if not np.allclose(bad, want, atol=atol) and np.allclose(y, bad, rtol=1e-4, atol=atol):
            raise Fail(msg)
    close(y, want, what, rtol=1e-4, atol=atol,
          hint="check each piece with its own exercise first; then x + attention(RMSNorm(x)), then h + MLP(RMSNorm(h))")


def _head_size(r, what):
    """Fail when the call could not reshape: the head size was taken from C, which differs from H D here."""
    if isinstance(r, CallError) and r.type == "ValueError" and "reshape" in r.message:
        raise Fail(f"{what} raised ValueError ({r.message}): in this block C = 24 but H * D = 4 * 8 = 32; take the "
                   "head size from the weights, D = w['wq'].shape[1] // n_heads, not from x.shape[-1] // n_heads")


def _judge_block_random(rs):
    _head_size(rs[0], "llama_block on a small random block")
    y = array(rs[0], "llama_block on a small random block", shape=xb.shape, dtype=np.float32)
    _diagnose_block(y, xb, blk_b, 4, 2, np.arange(6), 10000.0, 1e-5, want_b,
                    "llama_block on a small random block (against the library's Llama)", 1e-5)


def _judge_block_positions(rs):
    _head_size(rs[0], "llama_block at gapped positions")
    y = array(rs[0], "llama_block at gapped positions, base=500, eps=1e-3", shape=xb.shape, floating=True)
    want = ref_block(xb, blk_b, 4, 2, posb, 500.0, 1e-3)
    if np.allclose(y, ref_block(xb, blk_b, 4, 2, posb, 10000.0, 1e-3), rtol=1e-4, atol=1e-5):
        raise Fail("the base argument does not reach apply_rope: pass base=base")
    if np.allclose(y, ref_block(xb, blk_b, 4, 2, posb, 500.0, 1e-5), rtol=1e-4, atol=1e-5):
        raise Fail("the eps argument does not reach rms_norm: pass eps=eps to both norms")
    _diagnose_block(y, xb, blk_b, 4, 2, posb, 500.0, 1e-3, want,
                    "llama_block at positions [0, 2, 3, 7, 8, 20] with base=500 and eps=1e-3", 1e-5)


def _judge_block_real(rs):
    if _NO_MODEL:
        raise Fail(f"this test runs SmolLM2's block {_REAL}, and the grader's machine does not have the model: {_NO_MODEL}")
    y = array(rs[0], f"llama_block on SmolLM2's block {_REAL}", shape=want_s.shape, dtype=np.float32)
    _diagnose_block(y, x_real, blk_s, 9, 3, np.arange(6), cfg_s.rope_base, cfg_s.norm_eps, want_s,
                    f"llama_block on SmolLM2's block {_REAL} (against the library, tolerance 1e-4)", 1e-4)


ex.test("a small random block (4 query heads, 2 KV heads, C != H D) against the library", 3,
        [call(xb, blk_b, 4, 2, np.arange(6))], _judge_block_random)
ex.test("positions with gaps, base=500, eps=1e-3", 2, [call(xb, blk_b, 4, 2, posb, base=500.0, eps=1e-3)],
        _judge_block_positions)
ex.test(f"SmolLM2's real block {_REAL} against the library, within 1e-4", 3,
        [call(x_real, blk_s, 9, 3, np.arange(6), base=cfg_s.rope_base, eps=cfg_s.norm_eps)], _judge_block_real)
EXERCISES.append(ex)

# --- the whole model ---------------------------------------------------------------------------
ex = Exercise("llama_forward", "Your blocks chained into a Llama: logits")


def _model_case(seed, **config):
    cfg = LlamaConfig(**config)
    wts = random_weights(cfg, np.random.default_rng(seed), std=0.2)
    learner = {"tok_embd": wts["tok_embd"], "norm": wts["norm"],
               "blocks": [split_block(wts, i, cfg) for i in range(cfg.n_layers)]}
    return cfg, wts, learner


cfg_f, wts_f, lw_f = _model_case(82, vocab_size=50, dim=40, n_layers=2, n_heads=6, n_kv_heads=2, head_dim=8,
                                 ffn_dim=56, rope_base=1000.0, norm_eps=1e-4, context_length=64)
ids_f = rng.integers(0, 50, size=(2, 7))
want_f = Llama(cfg_f, weights=wts_f).forward(ids_f)                 # (2, 7, 50) the library's logits
cfg_g, wts_g, lw_g = _model_case(83, vocab_size=37, dim=12, n_layers=3, n_heads=3, n_kv_heads=3, head_dim=4,
                                 ffn_dim=20, rope_base=50.0, norm_eps=0.05, context_length=64)   # eps that matters
ids_g1, ids_g9 = rng.integers(0, 37, size=(3, 1)), rng.integers(0, 37, size=(1, 9))
want_g1, want_g9 = (Llama(cfg_g, weights=wts_g).forward(i) for i in (ids_g1, ids_g9))


def _diagnose_forward(y, cfg, wts, ids, want, what):
    model = Llama(cfg, weights=wts)
    resid = final_residual(model, ids).astype(np.float64)          # (B, T, C)
    E = wts["tok_embd"].astype(np.float64)
    L = cfg.n_layers
    names = tuple(BLOCK_STORAGE)

    def relayered(order):
        return Llama(cfg, weights={**wts, **{f"blk.{i}.{n}": wts[f"blk.{j}.{n}"] for i, j in enumerate(order)
                                             for n in names}}).forward(ids)
    z = want.astype(np.float64) - want.max(axis=-1, keepdims=True)
    variants = [
        ("the final RMSNorm is missing: logits = rms_norm(x, weights['norm'], eps) @ weights['tok_embd'].T",
         resid @ E.T),
        ("the final RMSNorm's weight weights['norm'] is missing: rms_norm(x, weights['norm'], eps)",
         ref_rms(resid, np.ones(cfg.dim), cfg.norm_eps) @ E.T),
        (f"the final rms_norm does not get eps (you used 1e-5, this model has eps = {cfg.norm_eps:g}): "
         "pass eps=eps to it", ref_rms(resid, wts["norm"], 1e-5) @ E.T),
        (f"the base argument does not reach the blocks (you used 10000, this model has base = {cfg.rope_base:g}): "
         "pass base to llama_block", Llama(cfg.replace(rope_base=10000.0), weights=wts).forward(ids)),
        ("the function returns probabilities, not logits: no softmax at the end",
         np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)),
    ]
    if L > 1:
        variants += [("every layer runs the first block's weights: layer i uses weights['blocks'][i]",
                      relayered([0] * L)),
                     ("the blocks run in reverse order: weights['blocks'][0] comes first",
                      relayered(range(L - 1, -1, -1)))]
    diagnose(y, want, variants, rtol=1e-4, atol=1e-4)
    close(y, want, what, rtol=1e-4, atol=1e-4,
          hint="x = tok_embd[ids]; x = llama_block(x, ...) for each block; logits = rms_norm(x, norm, eps) @ tok_embd.T")


def _last_only(r, want, what):
    r = value(r, what)
    if isinstance(r, np.ndarray) and r.shape == want.shape[:1] + want.shape[2:] and want.shape[1] > 1:
        raise Fail(f"{what} has shape {r.shape}: return the logits at every position, {want.shape}")


def _judge_forward(rs):
    _last_only(rs[0], want_f, "llama_forward on a random 2-layer Llama")
    y = array(rs[0], "llama_forward on a random 2-layer Llama", shape=want_f.shape, dtype=np.float32)
    _diagnose_forward(y, cfg_f, wts_f, ids_f, want_f,
                      "llama_forward on a random 2-layer Llama (6 query heads, 2 KV heads, base 1000, eps 1e-4)")


def _judge_forward_mha(rs):
    for r, ids, want in zip(rs, (ids_g1, ids_g9), (want_g1, want_g9)):
        what = f"llama_forward on a random 3-layer multi-head Llama, ids of shape {ids.shape}"
        _last_only(r, want, what)
        _diagnose_forward(array(r, what, shape=want.shape, floating=True), cfg_g, wts_g, ids, want, what)


ex.test("a random 2-layer Llama (6 query heads, 2 KV heads) against the library's logits", 3,
        [call(ids_f, lw_f, 6, 2, base=1000.0, eps=1e-4)], _judge_forward)
ex.test("a random 3-layer multi-head Llama, one token and nine", 2,
        [call(ids_g1, lw_g, 3, 3, base=50.0, eps=0.05), call(ids_g9, lw_g, 3, 3, base=50.0, eps=0.05)],
        _judge_forward_mha)
EXERCISES.append(ex)

# --- end to end: the library's Llama runs on the learner's pieces ---------------------------------------
# A random Llama (6 query heads, 2 KV heads, base 500, eps 1e-4) with one piece plugged in at a time, and the
# real SmolLM2 (all 30 blocks, loaded by the test) with the learner's llama_block in every layer.
E2E_CFG = LlamaConfig(vocab_size=64, dim=40, n_layers=2, n_heads=6, n_kv_heads=2, head_dim=8, ffn_dim=56,
                      rope_base=500.0, norm_eps=1e-4, context_length=64)
E2E_MODEL = Llama(E2E_CFG, weights=random_weights(E2E_CFG, np.random.default_rng(84), std=0.2))
E2E_IDS = rng.integers(0, 64, size=(2, 9))
E2E_REF = E2E_MODEL.forward(E2E_IDS)                                  # (2, 9, 64) the library's own logits
SMOL_IDS = np.array([[3575, 282, 5197, 314, 3040, 28, 1097]])       # hidden token ids, 7 positions


def _smollm2():
    """(SmolLM2 as the library loads it, its logits on SMOL_IDS), loaded when the test runs (not kept: 538 MB)."""
    reader = open_gguf()
    model = llama_from_gguf(reader.metadata, reader.dequantize)
    return model, model.forward(SMOL_IDS)


def _plugged_logits(model, ids, name: str, fn, what: str):
    try:
        with plug.use(**{name: fn}):
            return model.forward(ids)
    except Fail:
        raise
    except Exception as exc:  # noqa: BLE001 - what the learner returned did not fit the library
        raise Fail(f"{what} stopped: {type(exc).__name__}: {exc} (check the shape and dtype your function "
                   "returns)") from None


def _e2e_piece(name: str):
    def run(learner):
        what = f"the library's Llama with your {name}"
        got = _plugged_logits(E2E_MODEL, E2E_IDS, name, getattr(learner, name), what)
        close(got, E2E_REF, f"the logits of {what}", rtol=1e-4, atol=1e-4)
    return run


def _e2e_smollm2(learner):
    if _NO_MODEL:
        raise Fail(f"this test runs SmolLM2, and the grader's machine does not have the model: {_NO_MODEL}")
    model, want = _smollm2()
    what = "SmolLM2 with your llama_block in all 30 layers"
    got = _plugged_logits(model, SMOL_IDS, "llama_block", learner.llama_block, what)
    close(got, want, f"the logits of {what}", rtol=0.0, atol=1e-4)


for _ex in EXERCISES[:4]:
    _ex.end_to_end(f"the library's Llama runs on your {_ex.function}: the same logits", 1, _e2e_piece(_ex.function))
EXERCISES[4].end_to_end("SmolLM2 runs on your llama_block: logits within 1e-4 of the library's", 4, _e2e_smollm2,
                        budget=90)
