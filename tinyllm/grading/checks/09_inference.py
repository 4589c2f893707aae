"""Graded checks for exercises/09_inference.ipynb.

References: top-p from ``tinyllm.generate.top_p_filter`` (the library's nucleus
filter) and RMSNorm (Zhang & Sennrich, 2019) from ``tinyllm.nn.functional.rms_norm``
in float64; the KV-cache write is checked against the slots the engine's ``KVCache``
fills (see below). (RoPE is graded in exercises 08.)
"""
from __future__ import annotations

import numpy as np

from tinyllm.generate import top_p_filter as lib_top_p
from tinyllm.grading.core import CallError, Exercise, Fail, array, call, close, value
from tinyllm.models.llama import Llama, LlamaConfig
from tinyllm.nn import functional as F

rng = np.random.default_rng(808)
EXERCISES: list[Exercise] = []

# --- top-p -------------------------------------------------------------------------------------
ex = Exercise("top_p_filter", "Nucleus (top-p) filtering")
probs = np.array([[0.5, 0.3, 0.2, 0.0001], [0.1, 0.6, 0.25, 0.05]])
small = np.log(probs / probs.sum(axis=1, keepdims=True)).astype(np.float64)
rand = (2.0 * rng.standard_normal((3, 50))).astype(np.float64)


def _kept(a):
    return np.isfinite(a)


def _judge_topp_threshold(rs):
    out = array(rs[0], "top_p_filter(logits, 0.7)", shape=small.shape, floating=True)
    want = lib_top_p(small, 0.7)
    if np.array_equal(_kept(out), _kept(lib_top_p(small, 0.7)) & (small >= np.sort(small, axis=1)[:, -1:])):
        raise Fail("top-p drops the token that crosses the threshold: with probabilities [0.5, 0.3, 0.2] and p = 0.7, "
                   "keep 0.5 AND 0.3 (the smallest set whose mass reaches p), not just 0.5")
    if not np.array_equal(_kept(out), _kept(want)):
        raise Fail(f"top_p_filter kept tokens {np.argwhere(_kept(out)).tolist()}, expected {np.argwhere(_kept(want)).tolist()}: "
                   "keep the most probable tokens until their mass reaches p (the crossing token stays)")
    if (out[_kept(out)] != small[_kept(out)]).any():
        raise Fail("kept logits must be returned unchanged (filter, do not renormalise)")
    if not np.all(out[~_kept(out)] == -np.inf):
        raise Fail("removed tokens must be set to -inf")


def _judge_topp_random(rs):
    for p, r in zip((0.9, 0.5, 1.0), rs):
        out = array(r, f"top_p_filter(logits, {p})", shape=rand.shape, floating=True)
        want = lib_top_p(rand, p)
        if not np.array_equal(_kept(out), _kept(want)):
            raise Fail(f"top_p_filter(logits, {p}) keeps {int(_kept(out).sum())} tokens, expected {int(_kept(want).sum())}"
                       + (": p = 1.0 keeps every token" if p == 1.0 else ": sort by probability (softmax of the logits, "
                          "highest first) and keep tokens while the mass of the better ones is below p"))
        close(np.where(_kept(out), out, 0), np.where(_kept(want), want, 0), f"the kept logits for p = {p}")


ex.test("keeps the token that crosses the threshold", 2, [call(small, 0.7)], _judge_topp_threshold)
ex.test("matches the library on random logits (p = 0.9, 0.5, 1.0)", 2,
        [call(rand, 0.9), call(rand, 0.5), call(rand, 1.0)], _judge_topp_random)
EXERCISES.append(ex)

# --- KV cache ----------------------------------------------------------------------------------
ex = Exercise("kv_cache_update", "Write new keys and values into a preallocated KV cache")
B, H, TMAX, D = 1, 2, 8, 4
# The engine fills the cache: a tiny random Llama (one layer, H key/value heads of size D) prefills 3 tokens
# and decodes 1 into a KVCache of TMAX slots. The keys and values it wrote are the exercise's inputs and
# its cache after each step (layer 0, laid out (B, H, TMAX, D) as in the exercise) is the expected result.
_cfg = LlamaConfig(vocab_size=16, dim=H * D, n_layers=1, n_heads=H, n_kv_heads=H, head_dim=D, ffn_dim=8,
                   context_length=TMAX)
_model = Llama(_cfg, rng=np.random.default_rng(808))
_cache = _model.new_cache(B, TMAX)
ck, cv = _cache.k[0].copy(), _cache.v[0].copy()                    # (B, H, TMAX, D) empty
_model.forward(np.array([[1, 5, 9]]), _cache)
prefilled_k, prefilled_v = _cache.k[0].copy(), _cache.v[0].copy()  # slots 0..2 written by the engine
kn, vn = prefilled_k[:, :, :3].copy(), prefilled_v[:, :, :3].copy()
_model.forward(np.array([[3]]), _cache)
decoded_k, decoded_v = _cache.k[0].copy(), _cache.v[0].copy()      # slot 3 written by the engine
k1, v1 = decoded_k[:, :, 3:4].copy(), decoded_v[:, :, 3:4].copy()
try:                                                               # the engine refuses to overflow its cache
    _model.forward(np.array([[1, 2, 3, 4, 5]]), _cache)
    raise AssertionError("the engine's KVCache accepted more positions than it holds")
except ValueError:
    pass
assert np.allclose(ck, 0) and not np.allclose(kn, 0) and not np.allclose(k1, 0)


def _caches(r, what):
    r = value(r, what)
    if not isinstance(r, (tuple, list)) or len(r) != 2:
        raise Fail(f"{what} must return the tuple (cache_k, cache_v)")
    out = []
    for name, c in zip(("cache_k", "cache_v"), r):
        c = array(c, f"the returned {name}", floating=True)
        if c.shape != ck.shape:
            raise Fail(f"the cache changed shape from {ck.shape} to {c.shape}: write into the preallocated slots "
                       "cache[:, :, pos:pos + T] instead of concatenating")
        out.append(c)
    return out


def _judge_prefill(rs):
    k_out, v_out = _caches(rs[0], "kv_cache_update(cache_k, cache_v, k, v, pos=0)")
    close(k_out, prefilled_k, "cache_k after the prefill of 3 positions", hint="cache_k[:, :, pos:pos + T] = k_new")
    close(v_out, prefilled_v, "cache_v after the prefill of 3 positions", hint="cache_v[:, :, pos:pos + T] = v_new")


def _judge_decode(rs):
    k_out, v_out = _caches(rs[0], "kv_cache_update(..., pos=3)")
    want_k, want_v = decoded_k, decoded_v
    if np.allclose(k_out[:, :, 4:5], k1):
        raise Fail("the decode step wrote the new key at position pos + 1: position pos is the next free slot")
    if np.allclose(k_out[:, :, 2:3], k1):
        raise Fail("the decode step overwrote position pos - 1: write at pos, the next free slot")
    close(k_out, want_k, "cache_k after a decode step at pos=3", hint="only slot 3 changes; slots 0-2 keep the prefill")
    close(v_out, want_v, "cache_v after a decode step at pos=3")


def _judge_overflow(rs):
    r = rs[0]
    if isinstance(r, CallError) and r.type == "ValueError":
        return
    if isinstance(r, CallError) and r.type == "NotImplementedError":
        value(r, "")
    raise Fail("writing 3 positions at pos=7 into a cache of 8 must raise ValueError (the cache is full), "
               "not " + (f"raise {r.type}" if isinstance(r, CallError) else "return silently"))


ex.test("prefill writes positions 0..T-1", 2, [call(ck, cv, kn, vn, 0)], _judge_prefill)
ex.test("a decode step writes position pos only", 2, [call(prefilled_k, prefilled_v, k1, v1, 3)], _judge_decode)
ex.test("a full cache raises ValueError", 1, [call(ck, cv, kn, vn, 7)], _judge_overflow)
EXERCISES.append(ex)

# --- RMSNorm -----------------------------------------------------------------------------------
ex = Exercise("rms_norm", "RMSNorm")
xn = (1.0 + rng.standard_normal((3, 4, 16))).astype(np.float32)
wn = rng.standard_normal(16).astype(np.float32)
xtiny = (1e-3 * rng.standard_normal((2, 16))).astype(np.float32)


def ref_rms(x, w, eps=1e-5):
    return F.rms_norm(x.astype(np.float64), np.asarray(w, dtype=np.float64), eps)


def _judge_rms(rs):
    y = array(rs[0], "rms_norm(x, w)", shape=xn.shape, dtype=np.float32)
    xc = xn - xn.mean(axis=-1, keepdims=True)
    if np.allclose(y, ref_rms(xc, wn), atol=1e-4):
        raise Fail("you subtract the mean: that is LayerNorm; RMSNorm divides by sqrt(mean(x^2) + eps) without centring")
    close(y, ref_rms(xn, wn), "rms_norm(x, w)", rtol=1e-4, atol=1e-5, hint="x / sqrt(mean(x**2, axis=-1) + eps) * w")


def _judge_rms_eps(rs):
    y = array(rs[0], "rms_norm of tiny inputs", shape=xtiny.shape, floating=True)
    rms = np.sqrt(np.mean(xtiny.astype(np.float64) ** 2, axis=-1, keepdims=True))
    if np.allclose(y, xtiny / (rms + 1e-5) * wn, rtol=1e-3):
        raise Fail("eps is added outside the square root: use sqrt(mean(x^2) + eps)")
    close(y, ref_rms(xtiny, wn), "rms_norm of inputs of size 1e-3 (where eps matters)", rtol=1e-3, atol=1e-6,
          hint="eps goes inside the square root, and the default eps is 1e-5")


ex.test("matches the reference, float32", 2, [call(xn, wn)], _judge_rms)
ex.test("eps inside the square root", 1, [call(xtiny, wn)], _judge_rms_eps)
EXERCISES.append(ex)
