import math

import numpy as np


def _f(activation):
    return {"relu": lambda z: np.maximum(z, 0.0), "tanh": np.tanh, "linear": lambda z: z}[activation]


def layer_stats__no_chain(x, weights, activation):
    """every layer reads x"""
    f, rows = _f(activation), []
    for W in weights:
        h = f(x @ W)
        rows.append((h.mean(), h.std()))
    return np.array(rows)


def layer_stats__per_unit(x, weights, activation):
    """per unit and averaged"""
    f, h, rows = _f(activation), x, []
    for W in weights:
        h = f(h @ W)
        rows.append((h.mean(axis=0).mean(), h.std(axis=0).mean()))
    return np.array(rows)


def layer_stats__std_mean_swapped(x, weights, activation):
    """columns are (std, mean)"""
    f, h, rows = _f(activation), x, []
    for W in weights:
        h = f(h @ W)
        rows.append((h.std(), h.mean()))
    return np.array(rows)


def layer_stats__transposed(x, weights, activation):
    """None"""
    f, h, rows = _f(activation), x, []
    for W in weights:
        h = f(h @ W)
        rows.append((h.mean(), h.std()))
    return np.array(rows).T


def layer_stats__no_activation(x, weights, activation):
    """the activation is ignored"""
    h, rows = x, []
    for W in weights:
        h = h @ W
        rows.append((h.mean(), h.std()))
    return np.array(rows)


def _experiment(depth, width, seed, x_last=False):
    rng = np.random.default_rng(seed)
    if x_last:
        zs = [rng.standard_normal((width, width)) for _ in range(depth)]
        x = rng.standard_normal((32, width))
    else:
        x = rng.standard_normal((32, width))
        zs = [rng.standard_normal((width, width)) for _ in range(depth)]
    return x, [z / math.sqrt(width) for z in zs]


def _stds(g, activation, x, zs):
    f, h, out = _f(activation), x, []
    for z in zs:
        h = f(h @ (g * z))
        out.append(h.std())
    return np.array(out)


def choose_gain__x_drawn_last(activation, depth=50, width=128, seed=0):
    """draw x first"""
    x, zs = _experiment(depth, width, seed, x_last=True)
    for g in np.round(np.arange(50, 301) / 100, 2):
        s = _stds(g, activation, x, zs)
        if np.all((s >= 0.5) & (s <= 2)):
            return float(g)
    raise ValueError("none")


def choose_gain__fresh_weights_per_gain(activation, depth=50, width=128, seed=0):
    """None"""
    for g in np.round(np.arange(50, 301) / 100, 2):
        x, zs = _experiment(depth, width, seed + int(g * 100))
        s = _stds(g, activation, x, zs)
        if np.all((s >= 0.5) & (s <= 2)):
            return float(g)
    raise ValueError("none")


def choose_gain__coarse_grid(activation, depth=50, width=128, seed=0):
    """None"""
    x, zs = _experiment(depth, width, seed)
    for g in np.arange(0.5, 3.01, 0.1):
        s = _stds(g, activation, x, zs)
        if np.all((s >= 0.5) & (s <= 2)):
            return float(g)
    return 1.0


def choose_gain__upper_bound_one(activation, depth=50, width=128, seed=0):
    """None"""
    x, zs = _experiment(depth, width, seed)
    for g in np.round(np.arange(50, 301) / 100, 2):
        s = _stds(g, activation, x, zs)
        if np.all((s >= 0.5) & (s <= 1)):
            return float(g)
    return 3.0


def linear_weight__xavier(fan_in, fan_out, rng):
    """that is Xavier"""
    return rng.normal(0, math.sqrt(2 / (fan_in + fan_out)), size=(fan_in, fan_out)).astype(np.float32)


def linear_weight__fan_out(fan_in, fan_out, rng):
    """sqrt(2 / fan_out)"""
    return rng.normal(0, math.sqrt(2 / fan_out), size=(fan_in, fan_out)).astype(np.float32)


def linear_weight__uniform(fan_in, fan_out, rng):
    """draw from a normal"""
    a = math.sqrt(6 / fan_in)
    return rng.uniform(-a, a, size=(fan_in, fan_out)).astype(np.float32)


def linear_weight__fixed_seed(fan_in, fan_out, rng):
    """differently seeded generators gave the same array"""
    return np.random.default_rng(0).normal(0, math.sqrt(2 / fan_in), size=(fan_in, fan_out)).astype(np.float32)


def linear_weight__gain_squared(fan_in, fan_out, rng):
    """gain^2 instead of gain"""
    return rng.normal(0, 2 / math.sqrt(fan_in), size=(fan_in, fan_out)).astype(np.float32)
