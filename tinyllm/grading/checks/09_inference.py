"""Graded checks for exercises/09_inference.ipynb.

References: top-p from ``tinyllm.generate.top_p_filter`` (the library's nucleus
filter); the KV-cache write is checked against the slots the engine's ``KVCache``
fills (see below). (RoPE is graded in exercises 08.)
"""
from __future__ import annotations

import numpy as np

from tinyllm.generate import top_p_filter as lib_top_p
from tinyllm.grading.core import (CallError, Exercise, Fail, array, call, call_seeing_args, close, diagnose,
                                  matches, value, with_args)
from tinyllm.models.llama import Llama, LlamaConfig

rng = np.random.default_rng(808)
more = np.random.default_rng(8081)       # inputs added later: the ones drawn from rng stay as they were
EXERCISES: list[Exercise] = []

# --- top-p -------------------------------------------------------------------------------------
ex = Exercise("top_p_filter", "Nucleus (top-p) filtering")
probs = np.array([[0.5, 0.3, 0.2, 0.0001], [0.1, 0.6, 0.25, 0.05], [0.28, 0.26, 0.24, 0.22]])
small = np.log(probs / probs.sum(axis=1, keepdims=True)).astype(np.float64)
rand = (2.0 * rng.standard_normal((3, 50))).astype(np.float64)
wide = (3.0 * more.standard_normal((2, 2000))).astype(np.float32)   # a large vocabulary, float32 logits
TOPP_MAIN = [(small, 0.7)]
TOPP_MORE = [(rand, 0.9), (rand, 0.5), (rand, 1.0), (wide, 0.95), (rand, 0.05)]


def _kept(a):
    return np.isfinite(a)


def _keep_by(logits, p, score, rule, descending=True):
    """The kept tokens of a top-p variant: ``score`` turns sorted logits into per-token masses, ``rule`` turns
    the masses into a keep mask (both over the sorted row)."""
    x = np.asarray(logits, dtype=np.float64)
    order = np.argsort(-x if descending else x, axis=-1, kind="stable")
    keep_sorted = rule(score(np.take_along_axis(x, order, axis=-1)), p)
    keep = np.zeros(x.shape, dtype=bool)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return keep


def _probs(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _before(m, p):
    return (np.cumsum(m, axis=-1) - m) < p


def _through(m, p):
    keep = np.cumsum(m, axis=-1) < p
    keep[..., 0] = True
    return keep


TOPP_MISTAKES = [
    (lambda x, p: _keep_by(x, p, _probs, _through),
     "top-p drops the token that crosses the threshold: with probabilities [0.5, 0.3, 0.2] and p = 0.7, keep 0.5 "
     "AND 0.3 (the smallest set whose mass reaches p), not just 0.5"),
    (lambda x, p: _keep_by(x, p, lambda z: np.exp(z - z.max(axis=-1, keepdims=True)), _before),
     "only the most probable token is kept in every row, whatever p: the running total must add normalised "
     "probabilities (softmax: exp(z - max) divided by its sum), which reach p only after several tokens"),
    (lambda x, p: _keep_by(x, p, _probs, _before, descending=False),
     "the least probable tokens are kept: sort by probability from the highest down"),
    (lambda x, p: _before(_probs(np.asarray(x, np.float64)), p),
     "the running total is taken in the original token order: sort the tokens by probability first"),
]


def _judge_topp(cases):
    def judge(rs):
        outs = []
        for (x, p), r in zip(cases, rs):
            outs.append(array(r, f"top_p_filter(logits {x.shape}, {p})", shape=x.shape, floating=True))
        wants = [lib_top_p(x.astype(np.float64), p) for x, p in cases]
        for (x, p), out, want in zip(cases, outs, wants):
            what = f"top_p_filter(logits {x.shape}, {p})"
            if np.array_equal(_kept(out), _kept(want)):
                continue
            if np.all(_kept(out)) and matches(out, np.where(_kept(want), x, 0.0)):
                raise Fail(f"{what} sets the removed tokens to 0: set them to -inf, so that softmax gives them "
                           "probability 0")
            for fn, why in TOPP_MISTAKES:                   # named only when every call shows the same mistake
                if all(np.array_equal(_kept(o), fn(xx, pp)) for (xx, pp), o in zip(cases, outs)):
                    raise Fail(why)
            row = int(np.argmax((_kept(out) != _kept(want)).any(axis=-1)))
            got_k, want_k = np.flatnonzero(_kept(out)[row]), np.flatnonzero(_kept(want)[row])
            show = (lambda a: str(a.tolist()) if len(a) <= 12 else f"{len(a)} tokens")
            raise Fail(f"{what} keeps {show(got_k)} in row {row}, expected {show(want_k)}: keep the most probable "
                       "tokens until their mass reaches p (the crossing token stays)")
        for (x, p), out, want in zip(cases, outs, wants):
            what = f"top_p_filter(logits {x.shape}, {p})"
            kept = _kept(want)
            if not np.all(out[~kept] == -np.inf):
                raise Fail(f"{what}: removed tokens must be set to -inf")
            if matches(out[kept], _probs(x.astype(np.float64))[kept], rtol=1e-5, atol=1e-7):
                raise Fail(f"{what} returns probabilities where tokens are kept: return the kept logits unchanged")
            close(out[kept], x[kept], f"the kept logits of {what}", rtol=1e-6, atol=1e-6,
                  hint="return the kept logits unchanged (filter, do not rescale or renormalise)")
    return judge


ex.test("keeps the token that crosses the threshold", 2, [call(x, p) for x, p in TOPP_MAIN], _judge_topp(TOPP_MAIN))
ex.test("matches the library on random logits (p = 0.9, 0.5, 1.0, 0.05; 2000 tokens)", 2,
        [call(x, p) for x, p in TOPP_MORE], _judge_topp(TOPP_MORE))
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


# other sizes, filled exactly to capacity: the reference is the definition, cache[:, :, pos:pos + T] = new
TMAX2 = 11
ck2, cv2 = (more.standard_normal((2, 3, TMAX2, 5)).astype(np.float32) for _ in range(2))
kn2, vn2 = (more.standard_normal((2, 3, 3, 5)).astype(np.float32) for _ in range(2))


def _caches(r, what, shape):
    got, after = with_args(r)
    got = value(got, what)
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise Fail(f"{what} must return the tuple (cache_k, cache_v)")
    out = []
    for name, c in zip(("cache_k", "cache_v"), got):
        c = array(c, f"the returned {name} of {what}", floating=True)
        if c.shape != shape:
            grown = len(c.shape) == 4 and c.shape[:2] == shape[:2] and c.shape[3] == shape[3] and c.shape[2] > shape[2]
            raise Fail(f"{what}: the cache changed shape from {shape} to {c.shape}: "
                       + ("write into the preallocated slots cache[:, :, pos:pos + T] instead of concatenating" if grown
                          else "return the preallocated caches, written at cache[:, :, pos:pos + T]"))
        out.append(c)
    return out, after


def _judge_write(before_k, before_v, new_k, new_v, pos, want_k, want_v, what):
    def judge(rs):
        (k_out, v_out), after = _caches(rs[0], what, before_k.shape)
        T = new_k.shape[2]

        def written(at, k_src, v_src, width):
            kk, vv = before_k.astype(np.float64).copy(), before_v.astype(np.float64).copy()
            kk[:, :, at:at + width] = k_src[:, :, :width]
            vv[:, :, at:at + width] = v_src[:, :, :width]
            return np.concatenate([kk.ravel(), vv.ravel()])

        got, want = np.concatenate([k_out.ravel(), v_out.ravel()]), np.concatenate([want_k.ravel(), want_v.ravel()])
        variants = [("the new keys and values were written at position pos + 1: position pos is the next free slot",
                     written(pos + 1, new_k, new_v, min(T, before_k.shape[2] - pos - 1)))]
        if pos > 0:
            variants += [("the new keys and values were written at pos - 1, overwriting the last cached position: "
                          "write at pos, the next free slot", written(pos - 1, new_k, new_v, T)),
                         ("the new keys and values were written at position 0 whatever pos is: write at "
                          "cache[:, :, pos:pos + T]", written(0, new_k, new_v, T))]
        if T > 1:
            variants.append(("only position pos was written: write all T new positions, cache[:, :, pos:pos + T]",
                             written(pos, new_k, new_v, 1)))
        variants.append(("the keys were written into both caches: cache_v gets v_new",
                         written(pos, new_k, new_k, T)))
        diagnose(got, want, variants, atol=1e-6)
        close(k_out, want_k, f"cache_k after {what}", hint="cache_k[:, :, pos:pos + T] = k_new; the other slots keep their values")
        close(v_out, want_v, f"cache_v after {what}", hint="cache_v[:, :, pos:pos + T] = v_new")
        if after is not None:
            for name, a, w in (("cache_k", after[0], want_k), ("cache_v", after[1], want_v)):
                if not (isinstance(a, np.ndarray) and a.shape == w.shape and np.allclose(a, w, atol=1e-6)):
                    raise Fail(f"{what}: the caller's {name} was not written: write into {name} itself "
                               f"({name}[:, :, pos:pos + T] = ...), in place, and return it")
    return judge


def _judge_capacity(rs):
    fit = "kv_cache_update writing 3 positions at pos=8 into a cache of 11 (an exact fit)"
    r = rs[0]
    if isinstance(r, CallError) and r.type == "ValueError":
        raise Fail(f"{fit} raised ValueError ({r.message}): positions pos .. pos + T - 1 fit when pos + T == T_max; "
                   "raise only when pos + T > T_max")
    _judge_write(ck2, cv2, kn2, vn2, 8, *_definition(ck2, cv2, kn2, vn2, 8), fit)([r])
    for k, (what, r) in enumerate(zip(("3 positions at pos=7 into a cache of 8", "3 positions at pos=9 into a cache of 11"),
                                      rs[1:])):
        if isinstance(r, CallError) and r.type == "ValueError":
            continue
        if isinstance(r, CallError) and r.type == "NotImplementedError":
            value(r, "")
        raise Fail(f"writing {what} must raise ValueError (they do not fit), not "
                   + (f"raise {r.type}" if isinstance(r, CallError) else "return"))


def _definition(ck_, cv_, kn_, vn_, pos_):
    k_, v_ = ck_.astype(np.float64).copy(), cv_.astype(np.float64).copy()
    k_[:, :, pos_:pos_ + kn_.shape[2]] = kn_
    v_[:, :, pos_:pos_ + vn_.shape[2]] = vn_
    return k_, v_


ex.test("prefill writes positions 0..T-1 in place", 2, [call_seeing_args(ck, cv, kn, vn, 0)],
        _judge_write(ck, cv, kn, vn, 0, prefilled_k, prefilled_v, "kv_cache_update(cache_k, cache_v, k, v, pos=0)"))
ex.test("a decode step writes position pos only, in place", 2, [call_seeing_args(prefilled_k, prefilled_v, k1, v1, 3)],
        _judge_write(prefilled_k, prefilled_v, k1, v1, 3, decoded_k, decoded_v, "kv_cache_update(..., pos=3)"))
ex.test("fills the cache exactly to capacity; raises ValueError beyond it", 1,
        [call_seeing_args(ck2, cv2, kn2, vn2, 8), call(ck, cv, kn, vn, 7), call(ck2, cv2, kn2, vn2, 9)], _judge_capacity)
EXERCISES.append(ex)
