import numpy as np

def linear_backward__einsum(x, W, dy):
    return np.einsum("no,io->ni", dy, W), np.einsum("ni,no->io", x, dy), np.sum(dy, axis=0)

def relu_backward__where(x, dy):
    return np.where(x > 0, dy, np.zeros_like(dy))

def softmax__exp_sub(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return (e / np.sum(e, axis=-1, keepdims=True)).astype(x.dtype)

def cross_entropy__logaddexp(logits, targets):
    lse = np.logaddexp.reduce(logits.astype(np.float64), axis=-1)
    return float(np.mean(lse - logits[np.arange(len(targets)), targets]))

def cross_entropy_backward__onehot(logits, targets):
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    return (p - np.eye(logits.shape[1])[targets]) / len(targets)
