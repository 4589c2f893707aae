"""Graded checks for exercises/13_inside_the_model.ipynb.

References: ``tinyllm.interp`` (``logit_lens``, ``induction_score``, ``direct_logit_attribution``).
The hidden inputs are activations of small random Llamas read through the library's hooks
(``run_with_cache``), with shapes, eps values and token sequences unlike the notebook's examples. The end-to-end
tests give each function SmolLM2's own activations, read through its hooks: the residual streams at the last three
positions of a fact, the attention patterns of a repeated random sequence, and the 61 components of the last residual.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from tinyllm.grading.core import Exercise, Fail, array, call, close, diagnose, freeze, value
from tinyllm.interp import direct_logit_attribution as lib_dla
from tinyllm.interp import induction_score as lib_induction
from tinyllm.interp import logit_lens as lib_lens
from tinyllm.interp import run_with_cache
from tinyllm.models.llama import Llama, LlamaConfig

EXERCISES: list[Exercise] = []
CFG = LlamaConfig(vocab_size=61, dim=24, n_layers=5, n_heads=4, n_kv_heads=2, head_dim=6, ffn_dim=40,
                  norm_eps=1e-6, context_length=64)
MODEL = Llama(CFG, rng=1313)
rng = np.random.default_rng(1313)


def _f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


# --- logit lens ---------------------------------------------------------------------------------
ex = Exercise("logit_lens", "Decode every layer's residual stream through the final norm and head")
ids = rng.integers(0, CFG.vocab_size, (1, 7))
_, cache = run_with_cache(MODEL, ids, ["resid_post"])
RESID = _f32(cache["resid_post"][:, 0])                                # (5, 7, 24)
NORM_W = _f32(MODEL.norm.data)
HEAD = _f32(MODEL.tok_embd.data.T)                                     # (24, 61)
TARGETS = np.append(ids[0, 1:], 3)                                     # the next tokens
# large logits: a plain exp overflows float32; eps far from the default
BIG_RESID = _f32(rng.standard_normal((3, 2, 10)) * 40)
BIG_W = _f32(1 + 0.5 * rng.standard_normal(10))
BIG_HEAD = _f32(rng.standard_normal((10, 33)) * 30)
BIG_TARGETS = np.array([32, 0])
ONE = _f32(rng.standard_normal((1, 1, 10)) * 0.01)                     # tiny: eps dominates the rms
ONE_HEAD = _f32(rng.standard_normal((10, 7)) * 3)                      # logits of order 1: no saturated softmax


def _lens_variants(resid, w, head, targets, eps):
    """What typical mistakes return (prob only), to name the bug."""
    r = resid.astype(np.float64)
    t = np.asarray(targets)

    def prob(z):
        z = z - z.max(-1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        return np.take_along_axis(p, np.broadcast_to(t[None, :, None], p.shape[:2] + (1,)), -1)[..., 0]
    ms = (r ** 2).mean(-1, keepdims=True)
    z = r / np.sqrt(ms + eps) * w @ head                                 # the right logits (L, T, V)
    z = z - z.max(-1, keepdims=True)
    over_layers = np.exp(z - z.max(0, keepdims=True)) / np.exp(z - z.max(0, keepdims=True)).sum(0, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return {
        "the final RMSNorm was skipped: normalise each residual vector (and multiply by the norm weight) before the head":
            prob(r @ head),
        "the norm weight is missing: RMSNorm multiplies by norm_weight after dividing by the rms":
            prob(r / np.sqrt(ms + eps) @ head),
        "eps is outside the square root: x / sqrt(mean(x^2) + eps)":
            prob(r / (np.sqrt(ms) + eps) * w @ head),
        "the eps argument is not used: x / sqrt(mean(x^2) + eps)":
            prob(r / np.sqrt(ms + 1e-5) * w @ head),
        "that is LayerNorm: RMSNorm does not subtract the mean":
            prob((r - r.mean(-1, keepdims=True)) / np.sqrt(r.var(-1, keepdims=True) + eps) * w @ head),
        "the softmax runs over the wrong axis (the layers): normalise over the vocabulary, axis=-1":
            np.take_along_axis(over_layers, np.broadcast_to(t[None, :, None], z.shape[:2] + (1,)), -1)[..., 0],
        "prob is a log-probability: return the probability itself, exp(logit - logsumexp)":
            np.take_along_axis(log_p, np.broadcast_to(t[None, :, None], z.shape[:2] + (1,)), -1)[..., 0],
    }


def _judge_lens(resid, w, head, targets, eps, what):
    L, T = resid.shape[:2]

    def judge(rs):
        got = value(rs[0], what)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Fail(f"{what} must return the tuple (prob, rank), each of shape {(L, T)}")
        prob = array(got[0], f"{what}[0] (prob)", shape=(L, T), floating=True)
        rank = array(got[1], f"{what}[1] (rank)", shape=(L, T))
        want_p, want_r = lib_lens(resid, w, head, targets, eps=eps)
        if not np.isfinite(prob).all():
            raise Fail(f"{what}: prob contains NaN or inf: the logits are large here, so subtract each row's "
                       "maximum before np.exp (softmax is unchanged by a shift)")
        if not np.allclose(prob, want_p, rtol=1e-3, atol=1e-6):
            variants = _lens_variants(resid, w, head, targets, eps)
            # tiny probabilities are compared relatively: a wrong norm moves them by orders of magnitude
            diagnose(prob, want_p, [(f"{what}: {msg}", p) for msg, p in variants.items()], rtol=1e-3, atol=1e-12)
            close(prob, want_p, f"{what} prob", rtol=1e-3, atol=1e-6,
                  hint="prob[l, t] = softmax(RMSNorm(resid[l, t]) @ head)[targets[t]]")
        if np.issubdtype(rank.dtype, np.floating) and not np.all(rank == np.round(rank)):
            raise Fail(f"{what}: rank must hold whole numbers (counts of tokens)")
        if np.array_equal(rank, want_r + 1):
            raise Fail(f"{what}: rank is 1-based: count the tokens with a strictly larger logit, so the top token has rank 0")
        r64 = resid.astype(np.float64)
        top = np.argmax(r64 / np.sqrt((r64 ** 2).mean(-1, keepdims=True) + eps) * w @ head, axis=-1)   # (L, T)
        if np.array_equal(rank, top) and not np.array_equal(top, want_r):
            raise Fail(f"{what}: rank holds the id of the top token (argmax): the rank is the number of tokens whose "
                       "logit is strictly larger than the target's")
        if np.array_equal(rank, head.shape[-1] - 1 - want_r):
            raise Fail(f"{what}: rank counts the tokens with a smaller logit (ascending order): count those with a "
                       "strictly larger logit, so the top token has rank 0")
        if not np.array_equal(rank, want_r):
            bad = tuple(int(i) for i in np.argwhere(rank != want_r)[0])
            raise Fail(f"{what}: rank{bad} = {int(rank[bad])}, expected {int(want_r[bad])}: the rank is the number "
                       "of vocabulary entries whose logit is strictly larger than the target's")
    return judge


ex.test("a small Llama's residual streams (5 layers x 7 positions), its eps = 1e-6", 2,
        [call(RESID, NORM_W, HEAD, TARGETS, eps=CFG.norm_eps)],
        _judge_lens(RESID, NORM_W, HEAD, TARGETS, CFG.norm_eps, "logit_lens(resid (5, 7, 24), ...)"))
ex.test("logits in the thousands (stable softmax) with eps = 0.5", 1,
        [call(BIG_RESID, BIG_W, BIG_HEAD, BIG_TARGETS, eps=0.5)],
        _judge_lens(BIG_RESID, BIG_W, BIG_HEAD, BIG_TARGETS, 0.5, "logit_lens(big logits, eps=0.5)"))
ex.test("one layer, one position, a tiny residual where eps dominates (eps = 0.01)", 1,
        [call(ONE, BIG_W, ONE_HEAD, np.array([6]), eps=0.01)],
        _judge_lens(ONE, BIG_W, ONE_HEAD, np.array([6]), 0.01, "logit_lens(resid (1, 1, 10), eps=0.01)"))
EXERCISES.append(ex)


# --- induction score ----------------------------------------------------------------------------
ex = Exercise("induction_score", "Each head's attention from a repeated token to the token after its previous occurrence")


def _patterns(tokens):
    _, c = run_with_cache(MODEL, np.asarray(tokens)[None], ["attn_pattern"])
    return _f32(c["attn_pattern"][:, 0])                                # (L, H, T, T)


half = rng.permutation(CFG.vocab_size)[:9]
REPEAT = np.concatenate([half, half])                                  # two halves, T = 18
OFFSET = np.concatenate([[60, 59, 58], half[:6], half[:6]])           # three other tokens first, T = 15
TRIPLE = np.array([4, 9, 4, 2, 9, 4, 7, 2, 4, 9, 11])                  # tokens occurring up to four times
# a planted induction head on top of the model's own patterns, so that the score has signal
PLANTED = _patterns(OFFSET)
PLANTED[2, 1] = 0
for i in range(9, 15):
    PLANTED[2, 1, i, i - 6 + 1] = 1.0
PLANTED[2, 1, :9, 0] = 1.0


def _score_variants(p, tokens):
    t = np.asarray(tokens)
    T = len(t)
    last, k_first, q, k_prev, first_k = {}, {}, [], [], []
    for i, tok in enumerate(t.tolist()):
        if tok in last:
            q.append(i)
            k_prev.append(last[tok])
            first_k.append(k_first[tok] + 1)
        else:
            k_first[tok] = i
        last[tok] = i
    out = {"that is attention to the previous occurrence itself: the induction head attends to the token AFTER it "
           "(key j + 1)": p[:, :, q, k_prev].mean(-1)}
    if first_k != [kk + 1 for kk in k_prev]:
        out["the first occurrence was used: take the most recent earlier occurrence of the token"] = p[:, :, q, first_k].mean(-1)
    n = T // 2
    i = np.arange(n, T)
    out["the sequence was assumed to be two equal halves: find each token's previous occurrence instead"] = \
        p[:, :, i, i - n + 1].mean(-1)
    full = np.zeros(p.shape[:2])
    for i, j in zip(q, k_prev):
        full += p[:, :, i, j + 1]
    out[f"the sum was divided by all {T} positions: average only over the positions whose token occurred before"] = full / T
    out["that is the sum over the repeated positions: take their mean"] = full
    q, k_next = np.array(q), np.array(k_prev) + 1
    out["the query and key indices are swapped: patterns[l, h, i, j] is the attention of query i to key j, so read "
        "patterns[:, :, i, prev + 1]"] = p[:, :, k_next, q].mean(-1)
    out["that is the previous position (i - 1), a previous-token head: read the token after the previous occurrence "
        "of the same token"] = p[:, :, q, q - 1].mean(-1)
    return out


def _judge_score(p, tokens, what):
    def judge(rs):
        got = value(rs[0], what)
        n = len(tokens) - len(set(np.asarray(tokens).tolist()))      # positions whose token occurred before
        if isinstance(got, np.ndarray) and got.shape == (p.shape[0], n) and n != p.shape[1]:
            raise Fail(f"{what} has shape {got.shape}: you averaged over the heads; average over the {n} repeated "
                       f"positions (the last axis) for one score per layer and head, {p.shape[:2]}")
        got = array(got, what, shape=p.shape[:2], floating=True)
        want = lib_induction(p, tokens)
        if not np.allclose(got, want, rtol=1e-4, atol=1e-6):
            diagnose(got, want, [(f"{what}: {msg}", v) for msg, v in _score_variants(p, tokens).items()],
                     rtol=1e-4, atol=1e-6)
            close(got, want, what, rtol=1e-4, atol=1e-6,
                  hint="score[l, h] = mean over repeated positions i of patterns[l, h, i, j + 1], j the previous occurrence")
    return judge


ex.test("a random 9-token sequence repeated twice (18 positions)", 2, [call(_patterns(REPEAT), REPEAT)],
        _judge_score(_patterns(REPEAT), REPEAT, "induction_score(patterns (5, 4, 18, 18), tokens)"))
ex.test("three other tokens first, then a 6-token repeat (not two halves); one planted induction head", 1,
        [call(PLANTED, OFFSET)], _judge_score(PLANTED, OFFSET, "induction_score(patterns (5, 4, 15, 15), tokens)"))
ex.test("tokens occurring up to four times: the most recent occurrence counts", 1,
        [call(_patterns(TRIPLE), TRIPLE)],
        _judge_score(_patterns(TRIPLE), TRIPLE, "induction_score(patterns (5, 4, 11, 11), tokens)"))
EXERCISES.append(ex)


# --- direct logit attribution -------------------------------------------------------------------
ex = Exercise("direct_logit_attribution", "How much each sublayer writes along the answer direction")
ids = rng.integers(0, CFG.vocab_size, (1, 9))
logits, c = run_with_cache(MODEL, ids, ["resid_pre", "attn_out", "mlp_out", "resid_post"])
FINAL = _f32(c["resid_post"][-1, 0, -1])                               # (24,)
PARTS = _f32(np.concatenate([c["resid_pre"][0, 0, -1][None], c["attn_out"][:, 0, -1], c["mlp_out"][:, 0, -1]]))  # (11, 24)
A, B_ = 17, 40
DIRECTION = _f32(HEAD[:, A] - HEAD[:, B_])
LOGIT_DIFF = float(logits[0, -1, A] - logits[0, -1, B_])
GRID = _f32(np.stack([c["attn_out"][:, 0, -3:], c["mlp_out"][:, 0, -3:]]))   # (2, 5, 3, 24): a batch of components
SMALL = _f32(FINAL * 0.02)


def _dla_variants(parts, final, w, direction, eps):
    f = final.astype(np.float64)
    scale = 1 / np.sqrt((f ** 2).mean() + eps)
    own = 1 / np.sqrt((parts.astype(np.float64) ** 2).mean(-1) + eps)
    return {
        "each component was divided by its own rms: use the one frozen scale 1 / rms(final_resid) of the final norm":
            (parts @ (w * direction)) * own,
        "the norm weight is missing: the direction the final norm reads is norm_weight * direction":
            (parts @ direction) * scale,
        "the final norm's scale is missing: divide by rms(final_resid) = sqrt(mean(final_resid^2) + eps)":
            parts @ (w * direction),
        "the eps argument is not used: rms = sqrt(mean(final_resid^2) + eps)":
            (parts @ (w * direction)) / np.sqrt((f ** 2).mean() + 1e-5),
        "the sign is reversed: the attribution is components . direction (positive = towards the first answer)":
            -(parts @ (w * direction)) * scale,
        "eps is outside the square root: rms = sqrt(mean(final_resid^2) + eps)":
            (parts @ (w * direction)) / (np.sqrt((f ** 2).mean()) + eps),
        "the result is multiplied by rms(final_resid): the final norm divides by it":
            (parts @ (w * direction)) / scale,
        "the rms uses the SUM of squares: rms = sqrt(MEAN(final_resid^2) + eps)":
            (parts @ (w * direction)) / np.sqrt((f ** 2).sum() + eps),
        "the direction is divided by norm_weight: the final norm multiplies by it, so read norm_weight * direction":
            (parts @ (direction / w)) * scale,
    }


def _judge_dla(parts, final, w, direction, eps, what, total=None):
    def judge(rs):
        got = array(rs[0], what, shape=parts.shape[:-1], floating=True)
        want = lib_dla(parts, final, w, direction, eps=eps)
        if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            variants = _dla_variants(parts, final, w, direction, eps)
            diagnose(got, want, [(f"{what}: {msg}", v) for msg, v in variants.items()], rtol=1e-4, atol=1e-6)
            close(got, want, what, rtol=1e-4, atol=1e-5,
                  hint="components @ (norm_weight * direction) / sqrt(mean(final_resid^2) + eps)")
        if total is not None and not np.isclose(float(got.sum()), total, rtol=1e-3, atol=1e-4):
            raise Fail(f"{what}: the attributions sum to {float(got.sum()):.5g}, not to the logit difference {total:.5g}")
    return judge


ex.test("embedding and every sublayer of a small Llama add up to its logit difference", 2,
        [call(PARTS, FINAL, NORM_W, DIRECTION, eps=CFG.norm_eps)],
        _judge_dla(PARTS, FINAL, NORM_W, DIRECTION, CFG.norm_eps, "direct_logit_attribution(parts (11, 24), ...)",
                   total=LOGIT_DIFF))
ex.test("a (2, 5, 3, 24) batch of components, a small final residual and eps = 0.05", 1,
        [call(GRID, SMALL, NORM_W, DIRECTION, eps=0.05)],
        _judge_dla(GRID, SMALL, NORM_W, DIRECTION, 0.05, "direct_logit_attribution(components (2, 5, 3, 24), eps=0.05)"))
EXERCISES.append(ex)


# --- end-to-end: SmolLM2's own activations, read through the model's hooks ------------------------

@lru_cache(maxsize=1)
def _smollm2():
    """SmolLM2-135M's weights and activations (read by ``run_with_cache``) on a fact and on a repeated random sequence."""
    from tinyllm.models.smollm2 import load_smollm2

    model, tok = load_smollm2("cpu")
    fact = np.array([tok.encode("The Eiffel Tower is in the city of")])       # (1, T)
    _, fact_cache = run_with_cache(model, fact, ["resid_pre", "resid_post", "attn_out", "mlp_out"])
    seq = np.random.default_rng(1313).integers(1000, 20000, 12)
    rep = np.concatenate([[0], seq, seq[:9]])                               # 22 tokens, the repeat cut short
    _, rep_cache = run_with_cache(model, rep[None], ["attn_pattern"])
    return freeze({"fact": fact, "answer": tok.encode(" Paris")[0], "other": tok.encode(" Rome")[0],
                   "cache": fact_cache, "rep": rep, "patterns": _f32(rep_cache["attn_pattern"][:, 0]),  # (30, 9, 22, 22)
                   "head": _f32(model.tok_embd.data.T), "norm": _f32(model.norm.data),   # (C, V) contiguous, (C,)
                   "eps": model.config.norm_eps, "L": model.config.n_layers})   # read-only: sent to the sandbox once


def _run_lens(learner):
    m = _smollm2()
    resid = _f32(m["cache"]["resid_post"][:, 0, -3:])                      # (30, 3, 576): the last three positions
    targets = np.append(m["fact"][0, -2:], m["answer"])                    # the next tokens there
    want_p, want_r = lib_lens(resid, m["norm"], m["head"], targets, eps=m["eps"])
    prob, rank = learner.logit_lens(resid.copy(), m["norm"].copy(), m["head"], targets, m["eps"])   # copies: what the
    # learner's call changes in its arguments comes back here; the frozen head cannot change
    close(array(prob, "logit_lens on SmolLM2: prob", shape=want_p.shape), want_p,
          "the logit lens of SmolLM2 (30 layers, 3 positions): prob", rtol=1e-3, atol=1e-6)
    rank = array(rank, "logit_lens on SmolLM2: rank", shape=want_r.shape)
    if not np.array_equal(rank, want_r):
        raise Fail(f"the logit lens of SmolLM2: ' Paris' ranks {rank[:, -1].tolist()} over the 30 layers, expected "
                   f"{want_r[:, -1].tolist()}")


def _run_induction(learner):
    m = _smollm2()
    want = lib_induction(m["patterns"], m["rep"])
    got = array(learner.induction_score(m["patterns"], m["rep"].copy()), "induction_score on SmolLM2",
                shape=m["patterns"].shape[:2], floating=True)
    close(got, want,
          "SmolLM2's induction scores (30 layers x 9 heads, a repeat of 9 of 12 random tokens)", rtol=1e-4, atol=1e-6)


def _run_dla(learner):
    m = _smollm2()
    c = m["cache"]
    parts = _f32(np.concatenate([c["resid_pre"][0, 0, -1][None], c["attn_out"][:, 0, -1],
                                 c["mlp_out"][:, 0, -1]]))                  # (1 + 2L, C)
    final = _f32(c["resid_post"][-1, 0, -1]).copy()
    direction = _f32(m["head"][:, m["answer"]] - m["head"][:, m["other"]])
    want = lib_dla(parts, final, m["norm"], direction, eps=m["eps"])
    x = final / np.sqrt((final.astype(np.float64) ** 2).mean() + m["eps"]) * m["norm"]
    got = array(learner.direct_logit_attribution(parts, final.copy(), m["norm"].copy(), direction, m["eps"]),
                "direct_logit_attribution on SmolLM2", shape=(1 + 2 * m["L"],), floating=True)
    close(got, want,
          "the direct logit attribution of SmolLM2's 61 components to ' Paris' - ' Rome'", rtol=1e-4, atol=1e-4)
    close(got.sum(), float(x @ direction), "the sum of your attributions (SmolLM2's logit difference)", rtol=1e-3,
          atol=1e-3)


EXERCISES[0].end_to_end("SmolLM2's residual streams, read by run_with_cache: where ' Paris' ranks at each depth",
                        1, _run_lens)
EXERCISES[1].end_to_end("SmolLM2's attention patterns, read by run_with_cache: every head's induction score", 1,
                        _run_induction)
EXERCISES[2].end_to_end("SmolLM2's 61 components of the residual stream add up to its logit difference", 1, _run_dla)
