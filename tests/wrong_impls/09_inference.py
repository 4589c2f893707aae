import math

import numpy as np


def _draw(z, rng):
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.minimum((np.cumsum(p, axis=-1) < rng.random((z.shape[0], 1))).sum(axis=-1), z.shape[1] - 1)


def sample_next__temperature_multiplies(logits, *, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                                        previous=None, rng=None):
    z = np.array(logits, dtype=np.float64)
    if temperature == 0:
        return z.argmax(axis=-1)
    return _draw(z * temperature, rng)


def sample_next__global_random(logits, *, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                               previous=None, rng=None):
    z = np.array(logits, dtype=np.float64)
    if temperature == 0:
        return z.argmax(axis=-1)
    return _draw(z / temperature, np.random)


def _attention(q, keys, values, pos):
    T, S = q.shape[2], keys.shape[2]
    s = q @ keys.swapaxes(-1, -2) / math.sqrt(q.shape[-1])
    s = np.where(np.arange(S)[None, :] <= pos + np.arange(T)[:, None], s, -np.inf)
    w = np.exp(s - s.max(axis=-1, keepdims=True))
    return (w / w.sum(axis=-1, keepdims=True) @ values).astype(np.float32)


def cached_attention__all_slots(q, k_new, v_new, cache_k, cache_v, pos):
    T = q.shape[2]
    if pos < 0 or pos + T > cache_k.shape[2]:
        raise ValueError("does not fit")
    cache_k[:, :, pos:pos + T] = k_new
    cache_v[:, :, pos:pos + T] = v_new
    if T > 1:
        return _attention(q, cache_k, cache_v, pos)
    s = q @ cache_k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])          # one new token: "no mask needed"
    w = np.exp(s - s.max(axis=-1, keepdims=True))
    return (w / w.sum(axis=-1, keepdims=True) @ cache_v).astype(np.float32)


def cached_attention__copy_not_in_place(q, k_new, v_new, cache_k, cache_v, pos):
    T = q.shape[2]
    if pos < 0 or pos + T > cache_k.shape[2]:
        raise ValueError("does not fit")
    keys = np.concatenate([cache_k[:, :, :pos], k_new], axis=2)
    values = np.concatenate([cache_v[:, :, :pos], v_new], axis=2)
    return _attention(q, keys, values, pos)


def generate__reseed(model, idx, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, seed=None,
                     block_size=None):
    for _ in range(max_new_tokens):
        rng = np.random.default_rng(seed)
        context = idx if block_size is None else idx[:, -block_size:]
        z = np.asarray(model(context)[:, -1, :], dtype=np.float64)
        nxt = z.argmax(axis=-1) if temperature == 0 else _draw(z / temperature, rng)
        idx = np.concatenate([idx, nxt[:, None].astype(idx.dtype)], axis=1)
    return idx


def generate__no_crop(model, idx, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, seed=None,
                      block_size=None):
    rng = np.random.default_rng(seed)
    for _ in range(max_new_tokens):
        z = np.asarray(model(idx)[:, -1, :], dtype=np.float64)
        nxt = z.argmax(axis=-1) if temperature == 0 else _draw(z / temperature, rng)
        idx = np.concatenate([idx, nxt[:, None].astype(idx.dtype)], axis=1)
    return idx
