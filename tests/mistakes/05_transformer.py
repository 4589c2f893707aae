import math

import numpy as np


def causal_mask__inverted(T):
    """the mask is inverted"""
    return ~np.tril(np.ones((T, T), dtype=bool))


def causal_mask__transposed(T):
    """the mask is transposed"""
    return np.triu(np.ones((T, T), dtype=bool))


def causal_mask__additive(T):
    """the additive float mask"""
    return np.where(np.tril(np.ones((T, T), dtype=bool)), 0.0, -np.inf)


def causal_mask__ints(T):
    """expected bool"""
    return np.tril(np.ones((T, T), dtype=np.int64))


def causal_mask__future(T):
    """may see position i + 1"""
    return np.tril(np.ones((T, T), dtype=bool), 1)


def _softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def causal_attention__no_mask(q, k, v):
    """attention lets position 0 see position 5"""
    s = q @ np.swapaxes(k, -1, -2) / np.float32(math.sqrt(q.shape[-1]))
    return (_softmax(s) @ v).astype(q.dtype)


def causal_attention__divide_by_d(q, k, v):
    """divided by D"""
    T, D = q.shape[-2], q.shape[-1]
    s = q @ np.swapaxes(k, -1, -2) / np.float32(D)
    s = np.where(np.tril(np.ones((T, T), dtype=bool)), s, -np.inf)
    return (_softmax(s) @ v).astype(q.dtype)


def causal_attention__mask_after_softmax(q, k, v):
    """the mask is applied after the softmax"""
    T, D = q.shape[-2], q.shape[-1]
    s = q @ np.swapaxes(k, -1, -2) / np.float32(math.sqrt(D))
    w = _softmax(s) * np.tril(np.ones((T, T), dtype=np.float32))
    return (w @ v).astype(q.dtype)


def causal_attention__zero_fill(q, k, v):
    """attention lets position 0 see position 5"""
    T, D = q.shape[-2], q.shape[-1]
    s = q @ np.swapaxes(k, -1, -2) / np.float32(math.sqrt(D))
    s = s * np.tril(np.ones((T, T), dtype=np.float32))
    return (_softmax(s) @ v).astype(q.dtype)


def causal_attention__returns_v(q, k, v):
    """returned v itself"""
    return v


def causal_attention__softmax_queries(q, k, v):
    """the softmax runs over the queries"""
    T, D = q.shape[-2], q.shape[-1]
    s = q @ np.swapaxes(k, -1, -2) / np.float32(math.sqrt(D))
    s = np.where(np.tril(np.ones((T, T), dtype=bool)), s, -np.inf)
    w = np.nan_to_num(_softmax(s, axis=-2))
    return (w @ v).astype(q.dtype)


def layer_norm__eps_outside(x, w, b, eps=1e-5):
    """eps is added outside the square root"""
    mu = x.mean(axis=-1, keepdims=True)
    return ((x - mu) / (np.sqrt(x.var(axis=-1, keepdims=True)) + np.float32(eps)) * w + b).astype(x.dtype)


def layer_norm__fixed_eps(x, w, b, eps=1e-5):
    """does not depend on eps"""
    mu = x.mean(axis=-1, keepdims=True)
    return ((x - mu) / np.sqrt(x.var(axis=-1, keepdims=True) + np.float32(1e-5)) * w + b).astype(x.dtype)


def layer_norm__no_affine(x, w, b, eps=1e-5):
    """not scaled and shifted"""
    mu = x.mean(axis=-1, keepdims=True)
    return ((x - mu) / np.sqrt(x.var(axis=-1, keepdims=True) + np.float32(eps))).astype(x.dtype)


def layer_norm__no_centering(x, w, b, eps=1e-5):
    """the mean is not subtracted"""
    return (x / np.sqrt(x.var(axis=-1, keepdims=True) + np.float32(eps)) * w + b).astype(x.dtype)


def layer_norm__all_axes(x, w, b, eps=1e-5):
    """taken over every axis"""
    return ((x - x.mean()) / np.sqrt(x.var() + np.float32(eps)) * w + b).astype(x.dtype)


def layer_norm__std_for_var(x, w, b, eps=1e-5):
    """eps is added outside the square root"""
    mu = x.mean(axis=-1, keepdims=True)
    return ((x - mu) / (x.std(axis=-1, keepdims=True) + np.float32(eps)) * w + b).astype(x.dtype)


# Written after the checks, graded once before any change to them (see the report).


def causal_mask__all_true(T):
    """None"""
    return np.ones((T, T), dtype=bool)


def causal_attention__k_not_transposed_scale_T(q, k, v):
    """None"""
    T = q.shape[-2]
    s = q @ np.swapaxes(k, -1, -2) / np.float32(math.sqrt(T))
    s = np.where(np.tril(np.ones((T, T), dtype=bool)), s, -np.inf)
    w = np.exp(s - s.max(axis=-1, keepdims=True))
    return (w / w.sum(axis=-1, keepdims=True) @ v).astype(q.dtype)


def layer_norm__b_times(x, w, b, eps=1e-5):
    """None"""
    mu = x.mean(axis=-1, keepdims=True)
    return ((x - mu) / np.sqrt(x.var(axis=-1, keepdims=True) + np.float32(eps)) * (w + b)).astype(x.dtype)
