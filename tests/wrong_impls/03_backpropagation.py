import math

import numpy as np


class _WLinear:
    def __init__(self, n_in, n_out, rng, bug=""):
        self.W = rng.normal(0.0, math.sqrt(2.0 / n_in), size=(n_in, n_out))
        self.b = np.zeros(n_out)
        self.bug = bug

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dy):
        n = len(dy)
        self.dW = self.x.T @ dy / (n if self.bug == "dW_mean" else 1)
        self.db = dy.mean(axis=0) if self.bug == "db_mean" else dy.sum(axis=0)
        return dy @ self.W.T

    def step(self, lr):
        sign = -1 if self.bug == "uphill" else 1
        self.W = self.W - sign * lr * self.dW
        self.b = self.b - sign * lr * self.db


class _WReLU:
    def __init__(self, bug=""):
        self.bug = bug

    def forward(self, x):
        self.x = x
        return np.maximum(x, 0.0)

    def backward(self, dy):
        if self.bug == "at_zero":
            return dy * (self.x >= 0)
        if self.bug == "mask_only":
            return (self.x > 0).astype(float)
        return dy * (self.x > 0)


class _WCE:
    def __init__(self, bug=""):
        self.bug = bug

    def forward(self, z, t):
        n = len(t)
        if self.bug == "no_max":
            logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        else:
            zs = z - z.max(axis=-1, keepdims=True)
            logp = zs - np.log(np.exp(zs).sum(axis=-1, keepdims=True))
        self.p, self.t = np.exp(logp), t
        picked = logp[np.arange(n), t]
        return float(-picked.sum() if self.bug == "sum" else -picked.mean())

    def backward(self):
        n = len(self.t)
        g = self.p.copy()
        g[np.arange(n), self.t] -= 1
        return g if self.bug == "no_mean" else g / n


class _WMLP:
    def __init__(self, sizes, rng, bug=""):
        self.layers, self.bug = [], bug
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            self.layers.append(_WLinear(a, b, rng))
            if i < len(sizes) - 2 or bug == "relu_on_logits":
                self.layers.append(_WReLU())

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, d):
        layers = self.layers if self.bug == "forward_order" else reversed(self.layers)
        for layer in layers:
            d = layer.backward(d)
        return d

    def step(self, lr):
        for layer in self.layers:
            if isinstance(layer, _WLinear) and not (self.bug == "first_only" and layer is not self.layers[0]):
                layer.step(lr)


def Linear__dW_mean(in_features, out_features, rng):
    """dW is divided by the batch size N"""
    return _WLinear(in_features, out_features, rng, "dW_mean")


def Linear__db_mean(in_features, out_features, rng):
    """db is the mean of dy over the batch"""
    return _WLinear(in_features, out_features, rng, "db_mean")


def Linear__uphill(in_features, out_features, rng):
    """moved W along the gradient (uphill)"""
    return _WLinear(in_features, out_features, rng, "uphill")


def ReLU__at_zero():
    """lets the gradient pass where x == 0"""
    return _WReLU("at_zero")


def ReLU__mask_only():
    """returned the mask itself"""
    return _WReLU("mask_only")


def SoftmaxCrossEntropy__no_max():
    """exp(1000) overflows"""
    return _WCE("no_max")


def SoftmaxCrossEntropy__sum():
    """summed over the batch: return the mean"""
    return _WCE("sum")


def SoftmaxCrossEntropy__no_mean():
    """N times too large"""
    return _WCE("no_mean")


def MLP__relu_on_logits(sizes, rng):
    """gets no ReLU"""
    return _WMLP(sizes, rng, "relu_on_logits")


def MLP__forward_order(sizes, rng):
    """raised"""
    return _WMLP(sizes, rng, "forward_order")


def MLP__first_layer_only(sizes, rng):
    """below 97%"""
    return _WMLP(sizes, rng, "first_only")
