import math

import numpy as np


def _f(activation):
    return {"relu": lambda z: np.maximum(z, 0.0), "tanh": np.tanh, "linear": lambda z: z}[activation]


def layer_stats__pre_activation(x, weights, activation):
    """before the activation"""
    f, h, rows = _f(activation), x, []
    for W in weights:
        z = h @ W
        h = f(z)
        rows.append((z.mean(), z.std()))
    return np.array(rows)


def layer_stats__includes_input(x, weights, activation):
    """report the output of each layer, not the input x"""
    f, h, rows = _f(activation), x, [(x.mean(), x.std())]
    for W in weights:
        h = f(h @ W)
        rows.append((h.mean(), h.std()))
    return np.array(rows)


def layer_stats__ddof1(x, weights, activation):
    """ddof=1"""
    f, h, rows = _f(activation), x, []
    for W in weights:
        h = f(h @ W)
        rows.append((h.mean(), h.std(ddof=1)))
    return np.array(rows)


def _experiment(depth, width, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((32, width))
    return x, [rng.standard_normal((width, width)) / math.sqrt(width) for _ in range(depth)]


def _stds(g, activation, x, zs):
    f, h, out = _f(activation), x, []
    for z in zs:
        h = f(h @ (g * z))
        out.append(h.std())
    return np.array(out)


def choose_gain__last_layer_only(activation, depth=50, width=128, seed=0):
    """not every layer's"""
    x, zs = _experiment(depth, width, seed)
    for g in np.round(np.arange(50, 301) / 100, 2):
        if 0.5 <= _stds(g, activation, x, zs)[-1] <= 2:
            return float(g)
    raise ValueError("none")


def choose_gain__largest(activation, depth=50, width=128, seed=0):
    """return the smallest"""
    x, zs = _experiment(depth, width, seed)
    for g in np.round(np.arange(300, 49, -1) / 100, 2):
        s = _stds(g, activation, x, zs)
        if np.all((s >= 0.5) & (s <= 2)):
            return float(g)
    raise ValueError("none")


def choose_gain__theory(activation, depth=50, width=128, seed=0):
    """pick one of the candidate gains"""
    return {"relu": math.sqrt(2), "tanh": 5 / 3, "linear": 1.0}[activation]


def linear_weight__variance_as_std(fan_in, fan_out, rng):
    """the variance passed as the standard deviation"""
    return rng.normal(0.0, 2.0 / fan_in, size=(fan_in, fan_out)).astype(np.float32)


def linear_weight__no_gain(fan_in, fan_out, rng):
    """the gain sqrt(2) for ReLU is missing"""
    return rng.normal(0.0, 1.0 / math.sqrt(fan_in), size=(fan_in, fan_out)).astype(np.float32)


def linear_weight__global_rng(fan_in, fan_out, rng):
    """draw every number from the rng argument"""
    return np.random.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_in, fan_out)).astype(np.float32)


def linear_weight__float64(fan_in, fan_out, rng):
    """dtype float64, expected float32"""
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_in, fan_out))
