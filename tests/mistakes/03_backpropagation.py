import math

import numpy as np


class _MLinear:
    def __init__(self, n_in, n_out, rng, bug=""):
        std = {"no_gain": 1.0 / math.sqrt(n_in), "xavier": math.sqrt(2.0 / (n_in + n_out))}.get(bug, math.sqrt(2.0 / n_in))
        self.W = rng.normal(0.0, std, size=(n_in, n_out))
        self.b = np.zeros(n_out)
        self.bug = bug

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dy):
        self.dW = self.x.T @ dy
        self.db = dy.sum(axis=0)
        if self.bug == "dx_mean":
            return dy @ self.W.T / len(dy)
        if self.bug == "dx_no_transpose":
            return dy @ self.W.T[::-1]
        return dy @ self.W.T

    def step(self, lr):
        self.W = self.W - lr * self.dW
        if self.bug != "b_frozen":
            self.b = self.b - lr * self.db


class _MReLU:
    def __init__(self, bug=""):
        self.bug = bug
        self.x = None

    def forward(self, x):
        if not (self.bug == "first_input" and self.x is not None):
            self.x = x
        return np.maximum(x, 0.0)

    def backward(self, dy):
        if self.bug == "mask_from_dy":
            return dy * (dy > 0)
        if self.bug == "times_activation":
            return dy * np.maximum(self.x, 0)
        if self.bug == "leaky":
            return np.where(self.x > 0, dy, 0.01 * dy)
        return dy * (self.x > 0)


class _MCE:
    def __init__(self, bug=""):
        self.bug = bug

    def forward(self, z, t):
        n = len(t)
        zs = z - z.max(axis=-1, keepdims=True)
        logp = zs - np.log(np.exp(zs).sum(axis=-1, keepdims=True))
        self.p, self.t = np.exp(logp), t
        if self.bug == "sign":
            return float(logp[np.arange(n), t].mean())
        if self.bug == "probabilities":
            return float(-self.p[np.arange(n), t].mean())
        if self.bug == "block":
            return float(-logp[:, t].mean())
        return float(-logp[np.arange(n), t].mean())

    def backward(self):
        n = len(self.t)
        g = self.p.copy()
        if self.bug == "no_one_hot":
            return g / n
        g[np.arange(n), self.t] -= 1
        return -g / n if self.bug == "grad_sign" else g / n


class _MMLP:
    def __init__(self, sizes, rng, bug=""):
        self.layers, self.bug = [], bug
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            self.layers.append(_MLinear(a, b, rng, "b_frozen" if bug == "b_frozen" else ""))
            if i < len(sizes) - 2 and bug != "no_relu":
                self.layers.append(_MReLU())

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, d):
        for layer in reversed(self.layers):
            out = layer.backward(d)
            d = out if self.bug != "returns_dlogits" else d if out.shape != d.shape else out
        return d

    def step(self, lr):
        for layer in self.layers:
            if isinstance(layer, _MLinear):
                layer.step(lr * (0.001 if self.bug == "tiny_lr" else 1))


def Linear__dx_mean(in_features, out_features, rng):
    """dx is divided by the batch size N"""
    return _MLinear(in_features, out_features, rng, "dx_mean")


def Linear__no_gain(in_features, out_features, rng):
    """He initialisation has mean 0 and std"""
    return _MLinear(in_features, out_features, rng, "no_gain")


def Linear__b_frozen(in_features, out_features, rng):
    """b after"""
    return _MLinear(in_features, out_features, rng, "b_frozen")


def Linear__xavier(in_features, out_features, rng):
    """He initialisation has mean 0 and std"""
    return _MLinear(in_features, out_features, rng, "xavier")


def ReLU__mask_from_dy():
    """takes the mask from dy"""
    return _MReLU("mask_from_dy")


def ReLU__times_activation():
    """multiplies dy by relu(x)"""
    return _MReLU("times_activation")


def ReLU__leaky():
    """None"""
    return _MReLU("leaky")


def ReLU__first_input():
    """used the input of the first forward call"""
    return _MReLU("first_input")


def SoftmaxCrossEntropy__sign():
    """the loss has the wrong sign"""
    return _MCE("sign")


def SoftmaxCrossEntropy__probabilities():
    """averages the probabilities of the targets"""
    return _MCE("probabilities")


def SoftmaxCrossEntropy__block():
    """an N x N block"""
    return _MCE("block")


def SoftmaxCrossEntropy__no_one_hot():
    """forgot the one-hot"""
    return _MCE("no_one_hot")


def SoftmaxCrossEntropy__grad_sign():
    """backward has the wrong sign"""
    return _MCE("grad_sign")


def MLP__no_relu(sizes, rng):
    """NaN or inf loss"""
    return _MMLP(sizes, rng, "no_relu")


def MLP__tiny_lr(sizes, rng):
    """below 97%"""
    return _MMLP(sizes, rng, "tiny_lr")


def MLP__b_frozen(sizes, rng):
    """below 97%"""
    return _MMLP(sizes, rng, "b_frozen")
