"""Graded checks for exercises/11_compression.ipynb.

References (all in the grader's process; the learner's code sees only the inputs):

- GGML's Q4_1 encoder ``quantize_row_q4_1_ref``: ``tinyllm.io.ggml.quantize``, checked at import to
  be byte-identical to the ``gguf`` package's ``gguf.quants.quantize`` on the hidden inputs (when it is installed);
- GPTQ (Frantar et al. 2023) for one layer: ``tinyllm.compress.gptq.gptq_layer`` (the library's ``gptq_quantize``),
  round-to-nearest on the same grid from ``tinyllm.compress.quantize.fake_quantize``; a float64 rewrite below with
  one mistake switched on at a time names the bug when the learner's result reproduces it;
- 2:4 semi-structured magnitude pruning (Mishra et al. 2021): ``tinyllm.compress.prune.prune_n_m``;
- the distillation loss of Hinton et al. (2015): ``tinyllm.compress.distill.distillation_loss`` in float64, its
  gradient checked against central finite differences of that loss;
- SmoothQuant's migration factor (Xiao et al. 2023, eq. 4): ``tinyllm.compress.smoothquant.smooth_scales``.

End-to-end tests (the library in the grader, the learner's function plugged in): SmolLM2 cut to two blocks is
quantised to Q4_1 by ``Llama.quantize_weights`` (bytes, logits and perplexity equal to the library's) and pruned 2:4
(logits and perplexity); ``gptq_model`` quantises a small Llama sequentially through the learner's ``gptq_layer``;
``train_student`` distils a small GPT through the learner's ``distillation_loss`` (the same losses).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from tinyllm import plug
from tinyllm.compress import prune as _prune
from tinyllm.compress.distill import distillation_loss as lib_distill
from tinyllm.compress.distill import train_student
from tinyllm.compress.gptq import gptq_layer as lib_gptq
from tinyllm.compress.gptq import gptq_model, hessian
from tinyllm.compress.patch import linear_weights, replace_weights, restore_weights
from tinyllm.compress.prune import prune_n_m
from tinyllm.compress.quantize import fake_quantize
from tinyllm.grading.core import (Exercise, Fail, array, call, call_seeing_args, close, diagnose, diagnose_cases,
                                  number, unchanged, value, with_args)
from tinyllm.io import ggml
from tinyllm.models.gpt import GPT, GPTConfig
from tinyllm.models.llama import Llama, LlamaConfig

rng = np.random.default_rng(1111)
EXERCISES: list[Exercise] = []


# --- Q4_1 quantise -----------------------------------------------------------------------------
ex = Exercise("quantize_q4_1", "GGML's Q4_1 quantiser, byte for byte")
QA = rng.standard_normal((3, 96)).astype(np.float32)                  # (3, 96): 9 blocks
QA[0, 32:64] = 0.75                                                    # a constant block: d = 0, every code 0
QA[1, :32] = -np.abs(QA[1, :32]) - 2.0                                 # a block of negative weights only
QA[2, 70] = 40.0                                                       # an outlier
QB = (rng.standard_normal((2, 2, 64)) * np.repeat(10.0 ** rng.integers(-3, 4, (2, 2, 2)), 32, axis=-1)).astype(np.float32)
QD = rng.standard_normal((64, 256)).astype(np.float32)                  # many blocks: last-bit differences show


def _halves(lo, top):
    """A block from lo to lo + top whose other values sit at odd multiples of d / 2: exact ties in float32."""
    k = np.arange(30) % 15
    b = np.float32(lo) + np.float32(top) * (2 * k + 1).astype(np.float32) / np.float32(30)
    return np.concatenate([np.float32([lo, lo + top]), b.astype(np.float32)])


QC = np.stack([np.concatenate([_halves(0.0, 1.0), _halves(-0.45, 0.7)]),
               np.concatenate([_halves(0.2, 3.0), _halves(0.2, 0.3)])]).astype(np.float32)   # (2, 64)


def _q4_1_bytes(x, *, div=15.0, m_rule="min", rounding="trunc", inv_from_f16=False, layout="ggml", f64=False):
    """Q4_1 bytes of x (..., K) with one mistake switched on: the reference when every argument is its default."""
    ft = np.float64 if f64 else np.float32
    b = x.astype(ft).reshape(-1, 32)
    lo = b.min(axis=1, keepdims=True)
    d = (b.max(axis=1, keepdims=True) - lo) / ft(div)
    m = {"min": lo, "zero": np.zeros_like(lo), "min0": np.minimum(lo, 0)}[m_rule]
    if m_rule == "min0":
        d = (np.maximum(b.max(axis=1, keepdims=True), 0) - m) / ft(div)
    dd = d.astype(np.float16).astype(ft) if inv_from_f16 else d
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(dd == 0, ft(0), ft(1) / np.where(dd == 0, ft(1), dd))
        v = (b - m) * inv
    q = {"trunc": np.trunc(v + ft(0.5)), "round": np.round(v), "floor": np.floor(v)}[rounding]
    q = np.clip(q, 0, 15).astype(np.uint8)
    packed = (q[:, :16] | (q[:, 16:] << 4)) if layout == "ggml" else (q[:, 0::2] | (q[:, 1::2] << 4)) if layout == "pairs" \
        else (q[:, 16:] | (q[:, :16] << 4))
    rec = np.concatenate([d.astype(np.float16).view(np.uint8), m.astype(np.float16).view(np.uint8), packed], axis=1)
    return rec.reshape(*x.shape[:-1], -1)


def ref_q4_1(x):
    return ggml.quantize(x, "Q4_1")


try:                                                                   # the gguf package's encoder is a second reference
    import gguf as _gguf
    from gguf import quants as _gq

    for _x in (QA, QB, QC, QD):
        assert np.array_equal(_gq.quantize(_x, _gguf.GGMLQuantizationType.Q4_1), ref_q4_1(_x)), "Q4_1 != gguf"
except ImportError:                                                    # not installed: the library alone
    pass
assert all(np.array_equal(_q4_1_bytes(_x), ref_q4_1(_x)) for _x in (QA, QB, QC, QD))


def _q4_1_mistakes(x):
    return [
        ("the nibbles are interleaved: byte j holds code j in its low nibble and code j + 16 in its high nibble "
         "(not codes 2j and 2j + 1)", _q4_1_bytes(x, layout="pairs")),
        ("the two halves are swapped: code j goes in the LOW nibble of byte j and code j + 16 in the high nibble",
         _q4_1_bytes(x, layout="swapped")),
        ("d divides the range by 16: the 4-bit codes run from 0 to 15, so d = (max - min) / 15",
         _q4_1_bytes(x, div=16.0)),
        ("m is not the block minimum: Q4_1 stores m = min(x) of the block (not 0, not min(x, 0))",
         _q4_1_bytes(x, m_rule="min0")),
        ("m is not the block minimum: Q4_1 stores m = min(x) of the block (not 0, not min(x, 0))",
         _q4_1_bytes(x, m_rule="zero")),
        ("codes use np.round (ties to even) where GGML truncates x + 0.5: a value exactly halfway rounds up, "
         "q = trunc((x - m) * (1/d) + 0.5)", _q4_1_bytes(x, rounding="round")),
        ("codes are truncated without adding 0.5: q = trunc((x - m) * (1/d) + 0.5)", _q4_1_bytes(x, rounding="floor")),
        ("1/d is taken from the float16-rounded d: GGML divides by the float32 d and rounds d to float16 only to "
         "store it", _q4_1_bytes(x, inv_from_f16=True)),
        ("the codes are computed in float64: GGML works in float32 (keep x, d, 1/d and the 0.5 as float32), and at "
         "exact halves the last bit decides", _q4_1_bytes(x, f64=True)),
    ]


def _judge_q4_1(cases):
    def judge(rs):
        for (x, what), r in zip(cases, rs):
            _judge_one_q4_1(x, what, r)
    return judge


def _judge_one_q4_1(x, what, r):
    r = array(r, what)
    want = ref_q4_1(x)
    if r.dtype != np.uint8:
        raise Fail(f"{what} has dtype {r.dtype}: return the bytes as np.uint8 (view the structured blocks as uint8)")
    if r.shape != want.shape:
        if r.size == want.size:
            raise Fail(f"{what} has shape {r.shape}: keep the leading axes of x, (..., K // 32 * 20) = {want.shape}")
        raise Fail(f"{what} has shape {r.shape}, expected {want.shape}: 20 bytes (f16 d, f16 m, 16 bytes of codes) "
                   f"per block of 32")
    if np.array_equal(r, want):
        return
    diagnose(r, want, [(f"{what}: {m}", v) for m, v in _q4_1_mistakes(x)], rtol=0.0, atol=0.0)
    blocks, wb = r.reshape(-1, 20), want.reshape(-1, 20)
    part = next(k for k, sl in (("d (bytes 0-1)", slice(0, 2)), ("m (bytes 2-3)", slice(2, 4)),
                                ("the codes (bytes 4-19)", slice(4, 20)))
                if not np.array_equal(blocks[:, sl], wb[:, sl]))
    b = int(np.flatnonzero((blocks != wb).any(axis=1))[0])
    raise Fail(f"{what}: block {b} differs from GGML's in {part}; d = (max - min) / 15 and m = min as float16, "
               "q = min(15, trunc((x - m) * (1/d) + 0.5)) in float32, byte j = q_j | q_(j+16) << 4")


ex.test("three rows of 96 (a constant block, a negative block, an outlier)", 3, [call(QA.copy())],
        _judge_q4_1([(QA, "quantize_q4_1(x of shape (3, 96))")]))
ex.test("three axes, blocks from 1e-3 to 1e3; a (64, 256) weight", 1, [call(QB.copy()), call(QD.copy())],
        _judge_q4_1([(QB, "quantize_q4_1(x of shape (2, 2, 64))"), (QD, "quantize_q4_1(x of shape (64, 256))")]))
ex.test("values exactly halfway between two codes (GGML's float32 rounding)", 1, [call(QC.copy())],
        _judge_q4_1([(QC, "quantize_q4_1(x with exact halves)")]))
EXERCISES.append(ex)


# --- GPTQ --------------------------------------------------------------------------------------
ex = Exercise("gptq_layer", "GPTQ: round one layer, column by column, on calibration inputs")


def _calib(n, d_in, rank, seed):
    """(n, d_in) correlated inputs: a few strong directions plus noise, channels of different sizes."""
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, rank)) @ g.standard_normal((rank, d_in)) + 0.3 * g.standard_normal((n, d_in))
    return x * g.uniform(0.3, 2.0, d_in)


GX1, GX2 = _calib(400, 64, 12, 1), _calib(60, 96, 8, 2)               # the second: fewer rows than inputs
GW1 = rng.standard_normal((24, 64)).astype(np.float32)
GW2 = (rng.standard_normal((16, 96)) * 0.1 + 0.05).astype(np.float32)
GH1, GH2 = hessian(GX1), hessian(GX2)
GCASES = [  # (w, h, x, keyword arguments)
    (GW1, GH1, GX1, dict(bits=4, group_size=16)),
    (GW2, GH2, GX2, dict(bits=3, group_size=32, symmetric=False, damp=0.1)),
]


def _out_err(x, w, w_hat):
    d = (w.astype(np.float64) - w_hat) @ x.T
    return float(np.linalg.norm(d) / np.linalg.norm(w.astype(np.float64) @ x.T))


def _rtn(w, bits=4, group_size=128, symmetric=True, damp=0.01):
    return fake_quantize(w, bits, symmetric=symmetric, granularity="group", group_size=group_size)


def _gptq_variant(w, h, bits=4, group_size=128, symmetric=True, damp=0.01, *, update="cholesky", static=False,
                  damp_used=None):
    """A float64 GPTQ with one mistake: update 'cholesky' (right), 'none' (RTN), 'inverse' (rows of H^-1 as they
    are); static: group scales from the original weights; damp_used: the damp actually applied."""
    n_out, n_in = w.shape
    damp = damp if damp_used is None else damp_used
    W = w.astype(np.float64).copy()
    H = h + damp * np.mean(np.diag(h)) * np.eye(n_in)
    Hinv = np.linalg.inv(H)
    U = np.linalg.cholesky(Hinv).T if update == "cholesky" else Hinv
    lo_c, hi_c = (-2 ** (bits - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    Q = np.zeros_like(W)
    W0 = W.copy()
    for j in range(n_in):
        if j % group_size == 0:
            g = (W0 if static else W)[:, j:j + group_size]
            if symmetric:
                scale, zero = np.abs(g).max(axis=1) / hi_c, np.zeros(n_out)
            else:
                lo, hi = np.minimum(g.min(axis=1), 0), np.maximum(g.max(axis=1), 0)
                scale = (hi - lo) / hi_c
                zero = np.clip(np.rint(-lo / np.where(scale > 0, scale, 1)), 0, hi_c)
            inv = np.where(scale > 0, 1 / np.where(scale > 0, scale, 1), 0)
        Q[:, j] = (np.clip(np.rint(W[:, j] * inv) + zero, lo_c, hi_c) - zero) * scale
        if update != "none":
            e = (W[:, j] - Q[:, j]) / U[j, j]
            W[:, j + 1:] -= np.outer(e, U[j, j + 1:])
    return Q


def _agree(a, b, scale):
    """Share of entries of a and b equal within a thousandth of the weights' size (rounding flips allowed)."""
    return float((np.abs(np.asarray(a, np.float64) - b) <= 1e-3 * scale).mean())


def _gptq_mistakes(w, h, kw):
    out = [
        ("the rounding error is never passed on: after rounding column j, the later columns must absorb it, "
         "W[:, j+1:] -= outer((w_j - q_j) / U[j, j], U[j, j+1:]); as it is, this is round-to-nearest",
         _gptq_variant(w, h, **kw, update="none")),
        ("the update uses the rows of H^-1 as they are: GPTQ uses the rows of the upper Cholesky factor U of H^-1 "
         "(H^-1 = U^T U), which stand for the inverse Hessian of the columns not yet rounded",
         _gptq_variant(w, h, **kw, update="inverse")),
        ("each group's scale comes from the original weights: compute it when the group's first column is reached, "
         "from the weights as updated so far", _gptq_variant(w, h, **kw, static=True)),
    ]
    try:
        out.append(("damping is missing: add damp * mean(diag H) to the diagonal of H before inverting it",
                    _gptq_variant(w, h, **kw, damp_used=0.0)))
    except np.linalg.LinAlgError:                                      # singular H: an undamped solution raises too
        pass
    if kw.get("damp", 0.01) != 0.01:
        out.append(("the damp argument is ignored: add damp * mean(diag H) to the diagonal with the damp you are given",
                    _gptq_variant(w, h, **kw, damp_used=0.01)))
    if not kw.get("symmetric", True):
        out.append(("symmetric=False is ignored: the asymmetric grid has a zero point, "
                    "codes clip(round(w / s) + z, 0, 2^b - 1), value s (c - z)",
                    _gptq_variant(w, h, **{**kw, "symmetric": True})))
    return out


def _judge_gptq(cases, *, part):
    def judge(rs):
        for (w, h, x, kw), r in zip(cases, rs):
            args = ", ".join(f"{k}={v}" for k, v in kw.items())
            what = f"gptq_layer(w {w.shape}, h, {args})"
            got = array(r, what, shape=w.shape, floating=True)
            if not np.isfinite(got).all():
                raise Fail(f"{what} contains NaN or inf" + ("; H is singular here (fewer calibration rows than "
                           "inputs): add damp * mean(diag H) to its diagonal before inverting" if x.shape[0] < x.shape[1] else ""))
            want = lib_gptq(w, h, **kw)
            size = float(np.abs(w).max())
            gs = kw["group_size"]
            distinct = max(len(np.unique(g)) for g in got.reshape(-1, gs))
            if distinct > 2 ** kw["bits"]:
                raise Fail(f"{what}: a group of {gs} holds {distinct} different values, more than the "
                           f"{2 ** kw['bits']} codes of {kw['bits']} bits: return the dequantised codes, scale * code")
            if part == "equal":
                if _agree(got, want, size) >= 0.97:
                    continue
                for msg, v in _gptq_mistakes(w, h, kw):
                    if _agree(v, want, size) < 0.9 and _agree(got, v, size) >= 0.97:
                        raise Fail(f"{what}: {msg}")
                raise Fail(f"{what}: only {_agree(got, want, size):.0%} of the weights equal GPTQ's (rounding flips "
                           "aside, nearly all should): round column j on the group's grid, then spread its error over "
                           "the later columns with row j of U")
            else:
                e_got, e_lib = _out_err(x, w, got), _out_err(x, w, want)
                e_rtn = _out_err(x, w, _rtn(w, **kw))
                if e_got < 0.9 * e_lib:
                    raise Fail(f"{what}: output error {e_got:.4f}, below GPTQ's own {e_lib:.4f}: the weights are not "
                               "rounded to the grid; return the dequantised codes")
                if e_got > 0.97 * e_rtn or e_got > 1.05 * e_lib + 1e-6:
                    raise Fail(f"{what}: output error ||X (W - W_hat)^T|| / ||X W^T|| = {e_got:.4f}; round-to-nearest "
                               f"gives {e_rtn:.4f} and GPTQ {e_lib:.4f}")
    return judge


ex.test("4 bits, groups of 16: the same rounding as GPTQ (a flip here and there allowed)", 3,
        [call(GW1.copy(), GH1.copy(), **GCASES[0][3])], _judge_gptq(GCASES[:1], part="equal"))
ex.test("3 bits, asymmetric, groups of 32, damp 0.1, fewer calibration rows than inputs", 3,
        [call(GW2.copy(), GH2.copy(), **GCASES[1][3])], _judge_gptq(GCASES[1:], part="equal"))
ex.test("output error on the calibration inputs clearly below round-to-nearest's (both layers)", 2,
        [call(w.copy(), h.copy(), **kw) for w, h, _, kw in GCASES], _judge_gptq(GCASES, part="error"))
EXERCISES.append(ex)


# --- 2:4 pruning -------------------------------------------------------------------------------
ex = Exercise("prune_2_4", "2:4 semi-structured magnitude pruning along an axis, with its mask")
PW1 = rng.standard_normal((16, 8)).astype(np.float32)                 # (IN, OUT): groups along axis 0 by default
PW1[:4, 0] = [-5.0, 0.1, -4.0, 0.2]                                   # large negative weights must survive
PW2 = rng.standard_normal((3, 8, 12))                                 # float64, groups along axis 1
PW3 = rng.standard_normal((8, 16)).astype(np.float32)                 # axis=-1
PCASES = [(PW1, {}), (PW3, {"axis": -1}), (PW2, {"axis": 1})]


def _prune_mistakes(w, axis):
    def along(x, ax, rank_key=np.abs, drop=slice(0, 2)):
        moved = np.moveaxis(x, ax, -1)
        g = moved.reshape(*moved.shape[:-1], -1, 4)
        idx = np.argsort(rank_key(g), axis=-1, kind="stable")[..., drop]
        mask = np.ones(g.shape, bool)
        np.put_along_axis(mask, idx, False, axis=-1)
        return np.moveaxis(mask.reshape(moved.shape), -1, ax)

    out = [
        ("large negative weights were pruned: rank by magnitude |w|, not by the signed value",
         along(w, axis, rank_key=lambda g: g)),
        ("the 2 largest |w| of each group were zeroed: keep them and zero the 2 smallest",
         along(w, axis, drop=slice(2, 4))),
        ("3 of every 4 weights were zeroed: 2:4 keeps exactly 2 of every 4 consecutive weights",
         along(w, axis, drop=slice(0, 3))),
    ]
    if w.shape[-1] % 4 == 0 and axis % w.ndim != w.ndim - 1:
        out.append((f"the groups of 4 run along the last axis: group them along axis={axis} (np.moveaxis)",
                    along(w, -1)))
    if w.shape[0] % 4 == 0 and axis % w.ndim != 0:
        out.append((f"the groups of 4 run along axis 0: group them along axis={axis} (np.moveaxis)", along(w, 0)))
    return out


def _judge_prune(cases):
    def judge(rs):
        for (w, kw), r in zip(cases, rs):
            what = f"prune_2_4(w {w.shape} {w.dtype}" + (f", axis={kw['axis']})" if kw else ")")
            got, after = with_args(r)
            got = value(got, what)
            if isinstance(got, np.ndarray) or not isinstance(got, (tuple, list)) or len(got) != 2:
                raise Fail(f"{what} must return the tuple (pruned, mask)")
            pruned = array(got[0], f"{what}[0] (pruned)", shape=w.shape, floating=True)
            mask = array(got[1], f"{what}[1] (mask)", shape=w.shape)
            want_p, want_m = prune_n_m(w, 2, 4, axis=kw.get("axis", 0))
            if mask.dtype != bool:
                raise Fail(f"{what}: the mask has dtype {mask.dtype}: return a boolean array (True where a weight is kept)")
            if np.array_equal(mask, ~want_m) and np.array_equal(pruned, want_p):
                raise Fail(f"{what}: the mask is inverted: True marks the weights that are KEPT")
            diagnose(mask, want_m, [(f"{what}: {m}", v) for m, v in _prune_mistakes(w, kw.get("axis", 0))],
                     rtol=0, atol=0)
            if not np.array_equal(mask, want_m):
                raise Fail(f"{what}: the mask keeps the wrong weights: in each group of 4 consecutive weights along "
                           "the axis, keep the 2 largest |w|")
            if pruned.dtype != w.dtype:
                raise Fail(f"{what}: pruned has dtype {pruned.dtype}, expected {w.dtype} (keep w's dtype)")
            close(pruned, want_p, f"{what}[0] (pruned)", rtol=0, atol=0, hint="pruned = w * mask: kept weights keep "
                  "their values, the others are 0")
            unchanged(after[0] if after else None, w, "w", "compute w * mask")
    return judge


ex.test("groups along the inputs (axis 0, the default) of an (IN, OUT) weight", 2,
        [call_seeing_args(PW1.copy())], _judge_prune(PCASES[:1]))
ex.test("groups along axis -1, and along axis 1 of a float64 (3, 8, 12) array", 3,
        [call_seeing_args(w.copy(), **kw) for w, kw in PCASES[1:]], _judge_prune(PCASES[1:]))
EXERCISES.append(ex)


# --- distillation loss and gradient ------------------------------------------------------------
ex = Exercise("distillation_loss", "Knowledge distillation: the loss and its gradient")
DS = rng.standard_normal((2, 4, 9))                                    # (B, T, V) float64 student logits
DT = 2.0 * rng.standard_normal((2, 4, 9))                              # teacher
DY = rng.integers(0, 9, (2, 4))
DY_IGN = DY.copy()
DY_IGN[0, 1] = DY_IGN[1, 3] = -1                                       # ignored positions (ignore_index=-1)
DISTILL = [(2.0, 0.5), (4.0, 0.3)]                                     # (temperature, alpha)


def ref_distill(s, t, y, T=2.0, alpha=0.5, ignore_index=-100):
    return lib_distill(s.astype(np.float64), t.astype(np.float64), y, temperature=T, alpha=alpha,
                       ignore_index=ignore_index)


def _numeric_grad(s, t, y, T, alpha, ignore_index=-100, h=1e-5):
    g = np.zeros_like(s, dtype=np.float64)
    s = s.astype(np.float64)
    for i in np.ndindex(s.shape):
        e = np.zeros_like(s)
        e[i] = h
        g[i] = (ref_distill(s + e, t, y, T, alpha, ignore_index)[0] - ref_distill(s - e, t, y, T, alpha, ignore_index)[0]) / (2 * h)
    return g


def _pair(r, what, shape):
    r = value(r, what)
    if not isinstance(r, (tuple, list)) or len(r) != 2:
        raise Fail(f"{what} must return the tuple (loss, grad)")
    return number(r[0], f"{what}[0] (the loss)"), array(r[1], f"{what}[1] (the gradient)", shape=shape, floating=True)


def _parts(s, t, y, T):
    """(mean KL(p||q), mean KL(q||p), CE at temperature 1, CE at temperature T, summed KL) in float64."""
    def logsm(z):
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    V = s.shape[-1]
    s, t, y = s.reshape(-1, V), t.reshape(-1, V), y.reshape(-1)
    lq, lp = logsm(s / T), logsm(t / T)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    rkl = (np.exp(lq) * (lq - lp)).sum(axis=-1)
    n = np.arange(len(y))
    return kl.mean(), rkl.mean(), -logsm(s)[n, y].mean(), -logsm(s / T)[n, y].mean(), kl.sum()


def _judge_distill_loss(rs):
    gots = [_pair(r, f"distillation_loss(..., temperature={T}, alpha={a})", DS.shape)[0] for (T, a), r in zip(DISTILL, rs)]
    wants = [ref_distill(DS, DT, DY, T, a)[0] for T, a in DISTILL]
    bad = next((k for k, (g, w) in enumerate(zip(gots, wants)) if not np.isclose(g, w, rtol=1e-6, atol=1e-8)), None)
    if bad is None:
        return
    T, a = DISTILL[bad]
    what = f"distillation_loss(..., temperature={T}, alpha={a})[0] = {gots[bad]:.6g}, expected {wants[bad]:.6g}"
    parts = [_parts(DS, DT, DY, T_) for T_, _ in DISTILL]

    def each(f):
        return [f(T_, a_, *pp) for (T_, a_), pp in zip(DISTILL, parts)]

    diagnose_cases(gots, wants, [
        ("the soft term is not multiplied by T^2: Hinton et al. scale it by T^2 so its gradients keep their size",
         each(lambda T_, a_, kl, rkl, ce, ceT, kls: a_ * kl + (1 - a_) * ce)),
        ("the soft term is multiplied by T, not T^2", each(lambda T_, a_, kl, rkl, ce, ceT, kls: a_ * T_ * kl + (1 - a_) * ce)),
        ("the KL divergence is reversed: use KL(teacher || student) = sum p_teacher * (log p_teacher - log p_student)",
         each(lambda T_, a_, kl, rkl, ce, ceT, kls: a_ * T_ * T_ * rkl + (1 - a_) * ce)),
        ("the cross-entropy is taken at temperature T: the hard-label term uses the student's plain logits (T = 1)",
         each(lambda T_, a_, kl, rkl, ce, ceT, kls: a_ * T_ * T_ * kl + (1 - a_) * ceT)),
        ("the KL divergence is summed over the positions: take its mean over the N positions",
         each(lambda T_, a_, kl, rkl, ce, ceT, kls: a_ * T_ * T_ * kls + (1 - a_) * ce)),
        ("alpha weighs the wrong term: alpha * T^2 * KL + (1 - alpha) * CE",
         each(lambda T_, a_, kl, rkl, ce, ceT, kls: (1 - a_) * T_ * T_ * kl + a_ * ce)),
        ("the temperature is 2 whatever the temperature argument says",
         [ref_distill(DS, DT, DY, 2.0, a_)[0] for _, a_ in DISTILL]),
    ], what=what, rtol=1e-6, atol=1e-8)
    raise Fail(f"{what}: alpha * T^2 * mean KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * mean cross-entropy(s, y)")


def _judge_distill_grad(rs):
    for (T, a), r in zip(DISTILL, rs):
        what = f"the gradient of distillation_loss(..., temperature={T}, alpha={a})"
        _, g = _pair(r, what, DS.shape)
        num = _numeric_grad(DS, DT, DY, T, a)
        if np.allclose(g, num, rtol=1e-5, atol=1e-7):
            continue
        q = np.exp(DS / T - np.log(np.exp(DS / T).sum(-1, keepdims=True)))
        p = np.exp(DT / T - np.log(np.exp(DT / T).sum(-1, keepdims=True)))
        sm = np.exp(DS - np.log(np.exp(DS).sum(-1, keepdims=True)))
        hot = np.eye(DS.shape[-1])[DY]
        N = DY.size
        diagnose(g, num, [
            ("the soft term's gradient lacks its factor T: d(T^2 KL)/dz = T (q - p)",
             (a * (q - p) + (1 - a) * (sm - hot)) / N),
            ("the soft term's gradient has T^2 where it needs T: d(T^2 KL)/dz = T^2 (q - p) / T = T (q - p)",
             (a * T * T * (q - p) + (1 - a) * (sm - hot)) / N),
            ("the gradient is not divided by N, the number of positions averaged over",
             a * T * (q - p) + (1 - a) * (sm - hot)),
            ("the hard term's gradient misses the one-hot: d CE/dz = softmax(z) - onehot(y)",
             (a * T * (q - p) + (1 - a) * sm) / N),
            ("the gradient has the wrong sign: it is dL/dz_student, (q - p) and (softmax - onehot), not their negatives",
             -(a * T * (q - p) + (1 - a) * (sm - hot)) / N),
            ("the gradient is taken with respect to the wrong distribution: the soft term's is T (q - p) with q the "
             "STUDENT's softened softmax", (a * T * (p - q) + (1 - a) * (sm - hot)) / N),
        ], rtol=1e-5, atol=1e-7)
        close(g, num, what, rtol=1e-5, atol=1e-7,
              hint="compared with central finite differences of the loss: alpha T (q - p) / N + (1 - alpha) (softmax(z) - onehot(y)) / N")


def _judge_distill_edges(rs):
    loss, g = _pair(rs[0], "distillation_loss(..., ignore_index=-1)", DS.shape)
    want, want_g = ref_distill(DS, DT, DY_IGN, 3.0, 0.6, ignore_index=-1)
    if not np.isclose(loss, want, rtol=1e-6, atol=1e-8):
        kept = DY_IGN != -1
        as_label = ref_distill(DS, DT, np.where(kept, DY_IGN, DS.shape[-1] - 1), 3.0, 0.6)[0]   # -1 read as a label
        if np.isclose(loss, as_label, rtol=1e-6):
            raise Fail("distillation_loss(..., ignore_index=-1): the ignore_index argument is not used (-100 assumed), "
                       "so the targets -1 were read as the last token")
        if np.isclose(loss, want * kept.sum() / kept.size, rtol=1e-6):
            raise Fail("distillation_loss(..., ignore_index=-1): N counts the ignored positions: divide by the number "
                       "of positions that count")
        raise Fail(f"distillation_loss(..., temperature=3.0, alpha=0.6, ignore_index=-1)[0] = {loss:.6g}, expected "
                   f"{want:.6g} (positions whose target is ignore_index are left out of both terms and of N)")
    if g[0, 1].any() or g[1, 3].any():
        raise Fail("distillation_loss(..., ignore_index=-1): an ignored position has a non-zero gradient: leave it "
                   "out of both terms")
    close(g, want_g, "the gradient with ignored positions", rtol=1e-5, atol=1e-7)
    loss2, g2 = _pair(rs[1], "distillation_loss(student, teacher, None, alpha=1.0)", DS.shape)
    want2, want_g2 = lib_distill(DS, DT, None, temperature=1.5, alpha=1.0)
    close(loss2, want2, "the pure soft loss (targets=None, alpha=1, temperature 1.5)", rtol=1e-6, atol=1e-8)
    close(g2, want_g2, "its gradient", rtol=1e-5, atol=1e-7)


def _judge_distill_dtype(rs):
    loss, g = _pair(rs[0], "distillation_loss(float32 logits, ...)", DS.shape)
    if g.dtype != np.float32:
        raise Fail(f"the gradient of float32 logits has dtype {g.dtype}: return it in the student's dtype "
                   "(.astype(student_logits.dtype))")
    close(g, ref_distill(DS, DT, DY, 2.0, 0.5)[1], "the gradient of float32 logits", rtol=1e-3, atol=1e-5)
    close(loss, ref_distill(DS, DT, DY)[0], "the loss of float32 logits", rtol=1e-4, atol=1e-6)


ex.test("the loss of (2, 4, 9) logits at temperature 2, alpha 0.5 and temperature 4, alpha 0.3", 2,
        [call(DS.copy(), DT.copy(), DY.copy(), temperature=T, alpha=a) for T, a in DISTILL], _judge_distill_loss)
ex.test("the gradient equals central finite differences of the loss", 3,
        [call(DS.copy(), DT.copy(), DY.copy(), temperature=T, alpha=a) for T, a in DISTILL], _judge_distill_grad)
ex.test("ignored positions (ignore_index=-1); targets=None with alpha=1", 2,
        [call(DS.copy(), DT.copy(), DY_IGN.copy(), temperature=3.0, alpha=0.6, ignore_index=-1),
         call(DS.copy(), DT.copy(), None, temperature=1.5, alpha=1.0)], _judge_distill_edges)
ex.test("float32 logits give a float32 gradient", 1,
        [call(DS.astype(np.float32), DT.astype(np.float32), DY.copy())], _judge_distill_dtype)
EXERCISES.append(ex)

# --- SmoothQuant's migration factor ------------------------------------------------------------
# Xiao et al. (2023), "SmoothQuant", eq. 4: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), from
# ``tinyllm.compress.smoothquant.smooth_scales`` (channels with a zero maximum get s_j = 1).
from tinyllm.compress.smoothquant import smooth_scales as lib_smooth  # noqa: E402

ex = Exercise("smooth_scales", "SmoothQuant: the per-channel migration factor")
IN_, OUT_ = 9, 5                                                     # not square: the axis of the weight maximum matters
sq_w = rng.standard_normal((IN_, OUT_)).astype(np.float32)           # (IN, OUT), y = x @ W
sq_a = rng.uniform(0.05, 3.0, IN_).astype(np.float32)
sq_a[[1, 6]] = [40.0, 25.0]                                          # two outlier channels
sq_a0, sq_w0 = sq_a.copy(), sq_w.copy()
sq_a0[3] = 0.0                                                       # a channel never active
sq_w0[7] = 0.0                                                       # a channel whose weights are all 0


def ref_smooth(a, w, alpha):
    return lib_smooth(a.astype(np.float64), w.astype(np.float64), alpha).astype(np.float64)


def _s(r, what):
    s = array(r, what, floating=True)
    if s.shape == (OUT_,):
        raise Fail(f"{what} has one entry per output channel ({OUT_}): W is (IN, OUT), so max|W_j| is "
                   "np.abs(w).max(axis=1), one value per input channel")
    if s.shape != (IN_,):
        raise Fail(f"{what} has shape {s.shape}, expected ({IN_},): one factor per input channel")
    return s


def _smooth_mistakes(a, w, alpha):
    """(feedback, what that mistake returns) for typical mistakes of s = max|X_j|^alpha / max|W_j|^(1 - alpha)."""
    a, w = a.astype(np.float64), w.astype(np.float64)
    right = ref_smooth(a, w, alpha)
    with np.errstate(all="ignore"):
        return [
            ("the exponents are swapped: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha); "
             "alpha is the share of the difficulty moved into the weights", ref_smooth(a, w, 1 - alpha)),
            ("max|W_j| is the largest |w| of input channel j (np.abs(w).max(axis=1)), not of the whole matrix",
             a ** alpha / np.abs(w).max() ** (1 - alpha)),
            ("max|W_j| is the largest |w| of input channel j, not its mean",
             a ** alpha / np.abs(w).mean(axis=1) ** (1 - alpha)),
            ("max|W_j| is taken without the absolute value: a channel whose largest weight is negative needs "
             "np.abs(w).max(axis=1)", a ** alpha / w.max(axis=1) ** (1 - alpha)),
            ("s is inverted: the activations are divided by s, so s must grow with max|X_j|", 1.0 / right),
            (f"the alpha argument is ignored (you used 0.5): with alpha = {alpha:g}, s_j = max|X_j|^{alpha:g} / "
             f"max|W_j|^{1 - alpha:g}", ref_smooth(a, w, 0.5)),
        ]


def _judge_smooth(rs):
    for r, alpha in zip(rs, (0.5, 0.8)):
        what = f"smooth_scales(act_absmax, w, alpha={alpha})"
        s = _s(r, what)
        want = ref_smooth(sq_a, sq_w, alpha)
        diagnose(s, want, _smooth_mistakes(sq_a, sq_w, alpha), rtol=1e-4, atol=1e-6)
        if not np.isfinite(s).all():
            raise Fail(f"{what} contains NaN or inf")
        close(s, want, what, rtol=1e-4, hint="s = act_absmax ** alpha / np.abs(w).max(axis=1) ** (1 - alpha)")


def _judge_smooth_edges(rs):
    s = _s(rs[0], "smooth_scales with a zero channel")
    if not np.isfinite(s).all() or s[3] == 0 or s[7] == 0:
        raise Fail("a channel whose activation maximum or weight maximum is 0 must get s_j = 1 "
                   "(nothing to migrate), not 0, NaN or inf")
    close(s, ref_smooth(sq_a0, sq_w0, 0.5), "smooth_scales with zero channels", rtol=1e-4,
          hint="use s_j = 1 where max|X_j| == 0 or max|W_j| == 0")
    s1 = _s(rs[1], "smooth_scales(..., alpha=0.0)")
    diagnose(s1, ref_smooth(sq_a, sq_w, 0.0), _smooth_mistakes(sq_a, sq_w, 0.0), rtol=1e-4, atol=1e-6)
    close(s1, ref_smooth(sq_a, sq_w, 0.0), "smooth_scales(..., alpha=0.0)", rtol=1e-4,
          hint="alpha = 0 gives s_j = 1 / max|W_j|")


ex.test("matches s = max|X|^alpha / max|W|^(1-alpha) (alpha 0.5 and 0.8)", 3,
        [call(sq_a.copy(), sq_w.copy(), 0.5), call(sq_a.copy(), sq_w.copy(), 0.8)], _judge_smooth)
ex.test("zero channels get 1; alpha = 0", 2,
        [call(sq_a0.copy(), sq_w0.copy(), 0.5), call(sq_a.copy(), sq_w.copy(), 0.0)],
        _judge_smooth_edges)
EXERCISES.append(ex)


# --- end-to-end: the library runs with the learner's functions plugged in ------------------------

E2E_CFG = LlamaConfig(vocab_size=90, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96,
                      context_length=64)
E2E_IDS = np.random.default_rng(1112).integers(0, E2E_CFG.vocab_size, (2, 24))


def _nll(logits, ids):
    """Mean next-token cross-entropy of ``logits`` (B, T, V) of ``ids`` (B, T): the log of the perplexity."""
    z = logits[:, :-1].astype(np.float64)                               # (B, T-1, V)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, ids[:, 1:, None], -1).mean())


@lru_cache(maxsize=1)
def _smollm2_two_blocks():
    """SmolLM2-135M cut to its first two blocks (its embedding, final norm and tied head kept), and a prompt."""
    from tinyllm.models.smollm2 import load_smollm2

    model, tok = load_smollm2("cpu")
    model.blocks = model.blocks[:2]
    ids = np.array([tok.encode("Quantisation stores each weight in a few bits, and the model still works.")])
    return model, ids


def _run_q4_1(learner):
    model, ids = _smollm2_two_blocks()
    targets = linear_weights(model)
    fp = [getattr(b, k).data for b, k in targets]
    try:                                                                # the cached model stays as it was loaded
        model.quantize_weights("Q4_1", head=None)
        ref_blocks = [getattr(b, k).data.blocks for b, k in targets]
        ref_logits = model.forward(ids)
        restore_weights(targets, fp)
        with plug.use(quantize_q4_1=learner.quantize_q4_1):
            model.quantize_weights("Q4_1", head=None)
        for (blk, k), want in zip(targets, ref_blocks):
            got = getattr(blk, k).data.blocks
            if got.shape != want.shape or not np.array_equal(got, want):
                raise Fail(f"SmolLM2's {k} quantised by your quantize_q4_1 differs from GGML's Q4_1 bytes")
        logits = model.forward(ids)
        close(_nll(logits, ids), _nll(ref_logits, ids), "SmolLM2's log-perplexity (2 blocks, Q4_1 by your quantiser)",
              rtol=0, atol=0)
        close(logits, ref_logits, "SmolLM2's logits (2 blocks, Q4_1 by your quantiser)", rtol=0, atol=0)
    finally:
        restore_weights(targets, fp)


def _run_gptq(learner):
    model = Llama(E2E_CFG, rng=1113)
    calib = np.random.default_rng(1114).integers(0, E2E_CFG.vocab_size, (6, 32))
    kw = dict(bits=3, group_size=32, symmetric=False, damp=0.05, act_order=False, sequential=True)
    want = gptq_model(model, calib, **kw)
    with plug.use(gptq_layer=learner.gptq_layer):
        got = gptq_model(model, calib, **kw)
    targets = linear_weights(model)
    for (blk, k), g, w in zip(targets, got, want):
        if _agree(g, w, float(np.abs(w).max())) < 0.95:
            raise Fail(f"GPTQ of the whole model (sequential, 3 bits, groups of 32) with your gptq_layer: block "
                       f"{model.blocks.index(blk)}'s {k} differs from the library's in {1 - _agree(g, w, float(np.abs(w).max())):.0%} of its weights")
    nll = []
    for ws in (want, got):
        old = replace_weights(targets, lambda _w, it=iter(ws): next(it))
        try:
            nll.append(_nll(model.forward(E2E_IDS), E2E_IDS))
        finally:
            restore_weights(targets, old)
    if abs(nll[1] - nll[0]) > 0.01 * abs(nll[0]):
        raise Fail(f"the GPTQ-quantised model's log-perplexity with your gptq_layer is {nll[1]:.4f}, the library's "
                   f"{nll[0]:.4f}")


def _run_prune(learner):
    model, ids = _smollm2_two_blocks()
    targets = linear_weights(model)
    fp = [getattr(b, k).data for b, k in targets]
    # SmolLM2's weights came from Q4_1 blocks, so magnitudes tie within groups of 4 and which tied weight survives
    # is up to the sort; scaling the 4 inputs of each group by 1, 1 + 1e-5, 1 + 2e-5, 1 + 3e-5 breaks the ties
    jittered = [w * (1 + np.float32(1e-5) * (np.arange(w.shape[0], dtype=np.float32) % 4))[:, None] for w in fp]
    try:
        restore_weights(targets, jittered)
        replace_weights(targets, lambda w: _prune.prune_2_4(w, axis=0)[0])
        ref_logits = model.forward(ids)
        restore_weights(targets, jittered)
        with plug.use(prune_2_4=learner.prune_2_4):                     # copies: the cached weights stay intact
            replace_weights(targets, lambda w: _prune.prune_2_4(w.copy(), axis=0)[0])
        logits = model.forward(ids)
        close(_nll(logits, ids), _nll(ref_logits, ids), "SmolLM2's log-perplexity (2 blocks) pruned 2:4 by your "
              "prune_2_4", rtol=1e-6)
        close(logits, ref_logits, "SmolLM2's logits (2 blocks) pruned 2:4 by your prune_2_4", rtol=1e-6, atol=1e-6)
    finally:
        restore_weights(targets, fp)                                    # the cached model stays as it was loaded


def _run_distill(learner):
    cfg = GPTConfig(vocab_size=24, context_length=16, n_layers=1, n_heads=2, dim=32)
    tokens = np.random.default_rng(1115).integers(0, cfg.vocab_size, 3000)
    teacher = GPT(cfg, rng=1)
    kw = dict(teacher=teacher, steps=3, batch_size=4, lr=1e-2, temperature=3.0, alpha=0.8, seed=5,
              eval_tokens=tokens[-500:], eval_every=3, eval_batches=2, progress=False)
    want = train_student(GPT(cfg, rng=2), tokens, **kw)
    with plug.use(distillation_loss=learner.distillation_loss):
        got = train_student(GPT(cfg, rng=2), tokens, **kw)
    close(np.array(got["train_loss"]), np.array(want["train_loss"]),
          "the student's training losses (3 steps of train_student with your distillation_loss)", rtol=1e-5)
    close(np.array(got["eval_loss"]), np.array(want["eval_loss"]),
          "the student's held-out losses after distillation with your distillation_loss", rtol=1e-5)


EXERCISES[0].end_to_end("SmolLM2 (two blocks) quantised to Q4_1 by your quantiser: the library's bytes, logits and "
                        "perplexity", 2, _run_q4_1)
EXERCISES[1].end_to_end("GPTQ of a whole Llama (sequential, 3 bits) with your gptq_layer: the library's weights and "
                        "perplexity", 2, _run_gptq)
EXERCISES[2].end_to_end("SmolLM2 (two blocks) pruned 2:4 by your prune_2_4: the library's logits and perplexity", 1,
                        _run_prune)
EXERCISES[3].end_to_end("train_student distils a small GPT with your distillation_loss: the library's losses", 2,
                        _run_distill)
