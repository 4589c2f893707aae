import numpy as np


def _sorted_probs(logits, descending=True):
    order = np.argsort(-logits if descending else logits, axis=-1, kind="stable")
    z = np.take_along_axis(logits, order, axis=-1)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return order, e / e.sum(axis=-1, keepdims=True)


def _unsort(order, keep_sorted):
    keep = np.zeros(keep_sorted.shape, dtype=bool)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return keep


def top_p_filter__unnormalised(logits, p):
    """only the most probable token is kept in every row, whatever p"""
    order = np.argsort(-logits, axis=-1, kind="stable")
    z = np.take_along_axis(logits, order, axis=-1)
    probs = np.exp(z - z.max(axis=-1, keepdims=True))
    keep = _unsort(order, (np.cumsum(probs, axis=-1) - probs) < p)
    return np.where(keep, logits, -np.inf)


def top_p_filter__ascending(logits, p):
    """the least probable tokens are kept"""
    order, probs = _sorted_probs(logits, descending=False)
    keep = _unsort(order, (np.cumsum(probs, axis=-1) - probs) < p)
    return np.where(keep, logits, -np.inf)


def top_p_filter__zeros(logits, p):
    """sets the removed tokens to 0"""
    order, probs = _sorted_probs(logits)
    keep = _unsort(order, (np.cumsum(probs, axis=-1) - probs) < p)
    return np.where(keep, logits, 0.0)


def top_p_filter__unsorted(logits, p):
    """the original token order"""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)
    return np.where((np.cumsum(probs, axis=-1) - probs) < p, logits, -np.inf)


def top_p_filter__returns_probs(logits, p):
    """returns probabilities where tokens are kept"""
    order, probs = _sorted_probs(logits)
    keep = _unsort(order, (np.cumsum(probs, axis=-1) - probs) < p)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.where(keep, e / e.sum(axis=-1, keepdims=True), -np.inf)


def top_p_filter__p_one_special(logits, p):
    """None"""
    order, probs = _sorted_probs(logits)
    keep = _unsort(order, (np.cumsum(probs, axis=-1) - probs) < min(p, 0.999))
    return np.where(keep, logits, -np.inf)


def kv_cache_update__copy(cache_k, cache_v, k_new, v_new, pos):
    """the caller's cache_k was not written"""
    T = k_new.shape[2]
    if pos + T > cache_k.shape[2]:
        raise ValueError("does not fit")
    k, v = cache_k.copy(), cache_v.copy()
    k[:, :, pos:pos + T] = k_new
    v[:, :, pos:pos + T] = v_new
    return k, v


def kv_cache_update__first_position_only(cache_k, cache_v, k_new, v_new, pos):
    """only position pos was written"""
    if pos + k_new.shape[2] > cache_k.shape[2]:
        raise ValueError("does not fit")
    cache_k[:, :, pos] = k_new[:, :, 0]
    cache_v[:, :, pos] = v_new[:, :, 0]
    return cache_k, cache_v


def kv_cache_update__exact_fit_raises(cache_k, cache_v, k_new, v_new, pos):
    """raise only when pos + T > T_max"""
    T = k_new.shape[2]
    if pos + T >= cache_k.shape[2]:
        raise ValueError("does not fit")
    cache_k[:, :, pos:pos + T] = k_new
    cache_v[:, :, pos:pos + T] = v_new
    return cache_k, cache_v


def kv_cache_update__keys_twice(cache_k, cache_v, k_new, v_new, pos):
    """the keys were written into both caches"""
    T = k_new.shape[2]
    if pos + T > cache_k.shape[2]:
        raise ValueError("does not fit")
    cache_k[:, :, pos:pos + T] = k_new
    cache_v[:, :, pos:pos + T] = k_new
    return cache_k, cache_v


def kv_cache_update__always_raises(cache_k, cache_v, k_new, v_new, pos):
    """None"""
    raise ValueError("the cache is full")


def kv_cache_update__ignores_pos(cache_k, cache_v, k_new, v_new, pos):
    """at position 0 whatever pos is"""
    T = k_new.shape[2]
    if pos + T > cache_k.shape[2]:
        raise ValueError("does not fit")
    cache_k[:, :, :T] = k_new
    cache_v[:, :, :T] = v_new
    return cache_k, cache_v


# Written after the checks, graded once before any change to them (see the report).


def top_p_filter__keep_top_k(logits, p):
    """None"""
    k = max(1, int(p * logits.shape[-1] / 10))
    thr = np.sort(logits, axis=-1)[:, -k][:, None]
    return np.where(logits >= thr, logits, -np.inf)


def kv_cache_update__returns_new_only(cache_k, cache_v, k_new, v_new, pos):
    """None"""
    return k_new, v_new
