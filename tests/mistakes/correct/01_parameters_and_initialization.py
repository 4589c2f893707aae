import math

import numpy as np


def layer_stats__einsum_and_stack(x, weights, activation):
    if activation == "relu":
        f = lambda z: z * (z > 0)          # noqa: E731
    elif activation == "tanh":
        f = np.tanh
    elif activation == "linear":
        f = lambda z: z                    # noqa: E731
    else:
        raise ValueError(activation)
    out = np.empty((len(weights), 2))
    h = x.copy()
    for i, W in enumerate(weights):
        h = f(np.einsum("ni,io->no", h, W))
        out[i] = h.mean(), np.sqrt(np.mean((h - h.mean()) ** 2))
    return out


def choose_gain__bisect_free_scan(activation, depth=50, width=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((32, width))
    zs = np.stack([rng.standard_normal((width, width)) for _ in range(depth)]) / np.sqrt(width)
    f = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "linear": lambda z: z}[activation]
    for k in range(50, 301):
        g, h, ok = k / 100, x, True
        for z in zs:
            h = f(h @ (g * z))
            if not 0.5 <= h.std() <= 2:
                ok = False
                break
        if ok:
            return round(g, 2)
    raise ValueError("no gain works")


def linear_weight__standard_normal(fan_in, fan_out, rng):
    return (rng.standard_normal((fan_in, fan_out)) * math.sqrt(2 / fan_in)).astype(np.float32)
