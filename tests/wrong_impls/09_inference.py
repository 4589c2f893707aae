import numpy as np


def top_p_filter__drops_crossing_token(logits, p):
    order = np.argsort(-logits, axis=-1)
    z = np.take_along_axis(logits, order, axis=-1)
    probs = np.exp(z - z.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    keep_sorted = np.cumsum(probs, axis=-1) < p
    keep_sorted[:, 0] = True
    keep = np.zeros(logits.shape, dtype=bool)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return np.where(keep, logits, -np.inf)


def kv_cache_update__concatenate(cache_k, cache_v, k_new, v_new, pos):
    return np.concatenate([cache_k, k_new], axis=2), np.concatenate([cache_v, v_new], axis=2)


def kv_cache_update__next_slot(cache_k, cache_v, k_new, v_new, pos):
    T = k_new.shape[2]
    if pos + 1 + T > cache_k.shape[2]:
        raise ValueError("full")
    cache_k[:, :, pos + 1:pos + 1 + T] = k_new
    cache_v[:, :, pos + 1:pos + 1 + T] = v_new
    return cache_k, cache_v
