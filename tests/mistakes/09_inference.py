import math

import numpy as np


def _softmax_rows(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sampler(logits, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0, previous=None, rng=None,
             flaw=None):
    """A sampler with one flaw switched on (flaw=None: right)."""
    z = np.array(logits, dtype=np.float64)
    B, V = z.shape
    if previous is not None and repetition_penalty != 1.0:
        for b, seen in enumerate(previous):
            ids = list(seen) if flaw == "twice" else np.unique(seen)
            for i in ids:
                v = z[b, i]
                if flaw == "inverted":
                    z[b, i] = v * repetition_penalty if v > 0 else v / repetition_penalty
                else:
                    z[b, i] = v / repetition_penalty if v > 0 else v * repetition_penalty
    if temperature == 0:
        return z.argmax(axis=-1)
    if flaw != "p first":
        z = z / temperature
    if top_k is not None and 0 < top_k < V:
        kth = np.sort(z, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-z, axis=-1)
        p = _softmax_rows(np.take_along_axis(z, order, axis=-1))
        cut = np.cumsum(p, axis=-1) >= top_p if flaw == "crossing" else np.cumsum(p, axis=-1) - p >= top_p
        drop = np.zeros_like(cut)
        np.put_along_axis(drop, order, cut, axis=-1)
        z = np.where(drop, -np.inf, z)
    if flaw == "p first":
        z = z / temperature
    u = rng.random((B, 1))
    return np.minimum((np.cumsum(_softmax_rows(z), axis=-1) < u).sum(axis=-1), V - 1)


def sample_next__top_p_before_temperature(logits, *, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                                          previous=None, rng=None):
    """top-p was applied before the temperature"""
    return _sampler(logits, temperature, top_k, top_p, repetition_penalty, previous, rng, flaw="p first")


def sample_next__drops_crossing_token(logits, *, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                                      previous=None, rng=None):
    """top-p drops the token that crosses the threshold"""
    return _sampler(logits, temperature, top_k, top_p, repetition_penalty, previous, rng, flaw="crossing")


def sample_next__penalty_inverted(logits, *, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                                  previous=None, rng=None):
    """the repetition penalty is inverted"""
    return _sampler(logits, temperature, top_k, top_p, repetition_penalty, previous, rng, flaw="inverted")


def sample_next__penalty_twice(logits, *, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                               previous=None, rng=None):
    """a token seen twice was penalised twice"""
    return _sampler(logits, temperature, top_k, top_p, repetition_penalty, previous, rng, flaw="twice")


def sample_next__divides_logits_in_place(logits, *, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                                         previous=None, rng=None):
    """the call changed its input logits"""
    if temperature == 0:
        return _sampler(logits, 0, top_k, top_p, repetition_penalty, previous, rng)
    logits /= temperature                                        # the caller's array
    return _sampler(logits, 1.0, top_k, top_p, repetition_penalty, previous, rng)


def sample_next__fresh_generator(logits, *, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                                 previous=None, rng=None):
    """take every random number from the rng argument"""
    return _sampler(logits, temperature, top_k, top_p, repetition_penalty, previous, np.random.default_rng())


def sample_next__top_k_smallest(logits, *, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                                previous=None, rng=None):
    """top-k kept the k LEAST likely tokens"""
    z = np.array(logits, dtype=np.float64)
    if temperature != 0 and top_k is not None and 0 < top_k < z.shape[1]:
        kth = np.sort(z, axis=-1)[:, top_k - 1][:, None]
        z = np.where(z > kth, -np.inf, z)
        top_k = None
    return _sampler(z, temperature, top_k, top_p, repetition_penalty, previous, rng)


def _write(cache_k, cache_v, k_new, v_new, pos):
    T = k_new.shape[2]
    if pos < 0 or pos + T > cache_k.shape[2]:
        raise ValueError("does not fit")
    cache_k[:, :, pos:pos + T] = k_new
    cache_v[:, :, pos:pos + T] = v_new
    return T


def _attend_keys(q, keys, values, allowed):
    s = q @ keys.swapaxes(-1, -2) / np.float32(math.sqrt(q.shape[-1]))
    s = np.where(allowed, s, -np.inf)
    w = np.exp(s - s.max(axis=-1, keepdims=True))
    return (w / w.sum(axis=-1, keepdims=True) @ values).astype(np.float32)


def cached_attention__mask_from_zero(q, k_new, v_new, cache_k, cache_v, pos):
    """the causal mask is not shifted by pos"""
    T = _write(cache_k, cache_v, k_new, v_new, pos)
    return _attend_keys(q, cache_k[:, :, :pos + T], cache_v[:, :, :pos + T], np.tri(T, pos + T, dtype=bool))


def cached_attention__no_mask(q, k_new, v_new, cache_k, cache_v, pos):
    """there is no causal mask"""
    T = _write(cache_k, cache_v, k_new, v_new, pos)
    return _attend_keys(q, cache_k[:, :, :pos + T], cache_v[:, :, :pos + T], True)


def cached_attention__next_slot(q, k_new, v_new, cache_k, cache_v, pos):
    """slot pos + 1"""
    T = k_new.shape[2]
    if pos + 1 + T > cache_k.shape[2]:
        raise ValueError("does not fit")
    cache_k[:, :, pos + 1:pos + 1 + T] = k_new
    cache_v[:, :, pos + 1:pos + 1 + T] = v_new
    n = pos + T
    return _attend_keys(q, cache_k[:, :, :n], cache_v[:, :, :n], np.arange(n)[None, :] <= pos + np.arange(T)[:, None])


def cached_attention__new_tokens_only(q, k_new, v_new, cache_k, cache_v, pos):
    """only the new tokens are attended"""
    T = _write(cache_k, cache_v, k_new, v_new, pos)
    return _attend_keys(q, k_new, v_new, np.tri(T, T, dtype=bool))


def cached_attention__exact_fit_raises(q, k_new, v_new, cache_k, cache_v, pos):
    """(an exact fit) raised ValueError"""
    T = k_new.shape[2]
    if pos + T >= cache_k.shape[2]:
        raise ValueError("full")
    _write(cache_k, cache_v, k_new, v_new, pos)
    n = pos + T
    return _attend_keys(q, cache_k[:, :, :n], cache_v[:, :, :n], np.arange(n)[None, :] <= pos + np.arange(T)[:, None])


def cached_attention__float64(q, k_new, v_new, cache_k, cache_v, pos):
    """float64 crept in"""
    T = _write(cache_k, cache_v, k_new, v_new, pos)
    n = pos + T
    s = q @ cache_k[:, :, :n].swapaxes(-1, -2) / math.sqrt(q.shape[-1])
    s = np.where(np.arange(n)[None, :] <= pos + np.arange(T)[:, None], s, -np.inf).astype(np.float64)
    w = np.exp(s - s.max(axis=-1, keepdims=True))
    return w / w.sum(axis=-1, keepdims=True) @ cache_v[:, :, :n]


def generate__crop_front(model, idx, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, seed=None,
                         block_size=None):
    """the context was cut to the FIRST block_size tokens"""
    rng = np.random.default_rng(seed)
    for _ in range(max_new_tokens):
        context = idx if block_size is None else idx[:, :block_size]
        nxt = _sampler(model(context)[:, -1, :], temperature, top_k, top_p, rng=rng)
        idx = np.concatenate([idx, nxt[:, None].astype(idx.dtype)], axis=1)
    return idx


def generate__first_position(model, idx, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, seed=None,
                             block_size=None):
    """the logits of the first position"""
    rng = np.random.default_rng(seed)
    for _ in range(max_new_tokens):
        context = idx if block_size is None else idx[:, -block_size:]
        nxt = _sampler(model(context)[:, 0, :], temperature, top_k, top_p, rng=rng)
        idx = np.concatenate([idx, nxt[:, None].astype(idx.dtype)], axis=1)
    return idx


def generate__new_tokens_only(model, idx, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, seed=None,
                              block_size=None):
    """returned only the"""
    rng = np.random.default_rng(seed)
    new = []
    for _ in range(max_new_tokens):
        context = idx if block_size is None else idx[:, -block_size:]
        nxt = _sampler(model(context)[:, -1, :], temperature, top_k, top_p, rng=rng)
        idx = np.concatenate([idx, nxt[:, None].astype(idx.dtype)], axis=1)
        new.append(nxt)
    return np.stack(new, axis=1).astype(idx.dtype)


def generate__float_ids(model, idx, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, seed=None,
                        block_size=None):
    """token ids are integers"""
    rng = np.random.default_rng(seed)
    out = idx.astype(np.float64)
    for _ in range(max_new_tokens):
        context = out if block_size is None else out[:, -block_size:]
        nxt = _sampler(model(context.astype(np.int64))[:, -1, :], temperature, top_k, top_p, rng=rng)
        out = np.concatenate([out, nxt[:, None]], axis=1)
    return out
