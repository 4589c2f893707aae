import numpy as np


def linear_backward__dx_transposed(x, W, dy):
    """dx is transposed"""
    return (dy @ W.T).T, x.T @ dy, dy.sum(axis=0)


def linear_backward__dW_mean(x, W, dy):
    """dW is divided by the batch size N"""
    return dy @ W.T, x.T @ dy / len(x), dy.sum(axis=0)


def linear_backward__db_mean(x, W, dy):
    """db is the mean of dy over the batch"""
    return dy @ W.T, x.T @ dy, dy.mean(axis=0)


def linear_backward__db_axis1(x, W, dy):
    """not axis 1"""
    return dy @ W.T, x.T @ dy, dy.sum(axis=1)


def linear_backward__dx_mean(x, W, dy):
    """dx is divided by the batch size N"""
    return dy @ W.T / len(x), x.T @ dy, dy.sum(axis=0)


def relu_backward__at_zero(x, dy):
    """the gradient passes where x == 0"""
    return dy * (x >= 0)


def relu_backward__mask_from_dy(x, dy):
    """the mask comes from dy"""
    return dy * (dy > 0)


def relu_backward__times_activation(x, dy):
    """multiplies dy by relu(x)"""
    return dy * np.maximum(x, 0)


def relu_backward__sign(x, dy):
    """None"""
    return dy * np.sign(x)


def softmax__global_max(x):
    """subtracts the maximum of the whole array"""
    e = np.exp(x - x.max())
    return e / e.sum(axis=-1, keepdims=True)


def softmax__global_sum(x):
    """divides by the sum of the whole array"""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum()


def softmax__float64(x):
    """float64 crept in"""
    z = x.astype(np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax__no_normalise(x):
    """does not normalise"""
    return np.exp(x - x.max(axis=-1, keepdims=True))


def softmax__2d_only(x):
    """normalise over the last axis"""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy__no_max(logits, targets):
    """exp(1000) overflows"""
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return float(-logp[np.arange(len(targets)), targets].mean())


def cross_entropy__block_index(logits, targets):
    """an N x N block"""
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-logp[:, targets].mean())


def cross_entropy__log2(logits, targets):
    """log base 2"""
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))) / np.log(2)
    return float(-logp[np.arange(len(targets)), targets].mean())


def cross_entropy__probabilities(logits, targets):
    """averages the probabilities of the targets"""
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    return float(-p[np.arange(len(targets)), targets].mean())


def cross_entropy__sign(logits, targets):
    """minus the log-probability of the target"""
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(logp[np.arange(len(targets)), targets].mean())


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy_backward__sign(logits, targets):
    """wrong sign"""
    g = _softmax(logits)
    g[np.arange(len(targets)), targets] -= 1
    return -g / len(targets)


def cross_entropy_backward__columns(logits, targets):
    """subtracts 1 in whole columns"""
    g = _softmax(logits)
    g[:, targets] -= 1
    return g / len(targets)


def cross_entropy_backward__no_one_hot(logits, targets):
    """subtract 1 at each row's target before dividing"""
    return _softmax(logits) / len(targets)


def cross_entropy_backward__unstable(logits, targets):
    """exp(1000) overflows"""
    e = np.exp(logits)
    g = e / e.sum(axis=-1, keepdims=True)
    g[np.arange(len(targets)), targets] -= 1
    return g / len(targets)


# Written after the checks, graded once before any change to them (see the report).


def linear_backward__dx_W_not_T(x, W, dy):
    """None"""
    return dy @ W.T[::-1], x.T @ dy, dy.sum(axis=0)


def relu_backward__leaky(x, dy):
    """None"""
    return np.where(x > 0, dy, 0.01 * dy)


def softmax__log(x):
    """None"""
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def cross_entropy__no_mean_over_batch_first(logits, targets):
    """None"""
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-logp[np.arange(len(targets)), targets][0])


def cross_entropy_backward__divide_V(logits, targets):
    """None"""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    g = e / e.sum(axis=-1, keepdims=True)
    g[np.arange(len(targets)), targets] -= 1
    return g / logits.shape[1]
