import numpy as np


def linear_backward__dW_transposed(x, W, dy):
    return dy @ W.T, dy.T @ x, dy.sum(axis=0)


def linear_backward__db_not_summed(x, W, dy):
    return dy @ W.T, x.T @ dy, dy


def relu_backward__mask_only(x, dy):
    return (x > 0).astype(dy.dtype)


def softmax__no_max(x):
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def softmax__axis_zero(x):
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def cross_entropy__log_of_softmax(logits, targets):
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    return float(-np.log(p[np.arange(len(targets)), targets]).mean())


def cross_entropy__sum(logits, targets):
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-logp[np.arange(len(targets)), targets].sum())


def cross_entropy_backward__no_mean(logits, targets):
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    g = z / z.sum(axis=-1, keepdims=True)
    g[np.arange(len(targets)), targets] -= 1
    return g
