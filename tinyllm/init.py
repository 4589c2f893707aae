"""Parameter initialisation, all drawn from a seeded generator.

Shapes follow the math convention ``W: (IN, OUT)`` (fan_in = shape[0],
fan_out = shape[1]); for higher-rank shapes fan_in is the product of all but the
last axis.

Watch the parameterisation of the normal distribution: N(mu, sigma^2) takes
the *variance* sigma^2, while :func:`normal` (like ``numpy.random.normal``) takes
the *standard deviation* sigma. N(0, 0.1) means std = sqrt(0.1) ~ 0.316, not 0.1.
Pass ``var=`` when you have a variance in hand.

References: Glorot & Bengio (2010) "Understanding the difficulty of training deep
feedforward neural networks"; He et al. (2015) "Delving Deep into Rectifiers";
Radford et al. (2019) "Language Models are Unsupervised Multitask Learners" (GPT-2
scales residual projections by 1/sqrt(2 * n_layers)).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from tinyllm import plug
from tinyllm.backend import get_xp
from tinyllm.shapes import as_shape

Shape = Sequence[int]

GAINS = {"linear": 1.0, "identity": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3.0, "relu": math.sqrt(2.0), "gelu": math.sqrt(2.0)}


def fans(shape: Shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of math shape (IN, OUT) or (..., OUT)."""
    shape = as_shape(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    return int(np.prod(shape[:-1])), shape[-1]


def _nonzero_fans(shape: Shape, name: str) -> tuple[int, int]:
    fan_in, fan_out = fans(shape)
    if fan_in == 0 or fan_out == 0:
        raise ValueError(f"{name} needs fan_in and fan_out > 0, got shape {as_shape(shape)}")
    return fan_in, fan_out


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def _finish(w: np.ndarray, dtype: Any, device: str | None):
    xp = get_xp(device) if device is not None else np
    return xp.asarray(w.astype(dtype, copy=False))


def _gain(nonlinearity: str) -> float:
    if nonlinearity not in GAINS:
        raise ValueError(f"nonlinearity={nonlinearity!r} is unknown: expected one of {sorted(GAINS)}")
    return GAINS[nonlinearity]


def normal(shape: Shape, mean: float = 0.0, std: float | None = None, *, var: float | None = None,
           rng=None, dtype=np.float32, device: str | None = None):
    """Draw from N(mean, std^2) (std defaults to 1). Give ``var`` instead of ``std`` to pass the variance sigma^2."""
    if std is not None and var is not None:
        raise ValueError(f"give either std (sigma) or var (sigma^2), not both: got std={std}, var={var}")
    if var is not None:
        if not var >= 0:
            raise ValueError(f"var must be >= 0, got {var}")
        std = math.sqrt(var)
    elif std is None:
        std = 1.0
    if not std >= 0:
        raise ValueError(f"std must be >= 0, got {std}")
    return _finish(_rng(rng).normal(mean, std, size=as_shape(shape)), dtype, device)


def uniform(shape: Shape, low: float = -1.0, high: float = 1.0, *, rng=None, dtype=np.float32, device: str | None = None):
    """Draw from U(low, high); its variance is (high - low)^2 / 12."""
    if high < low:
        raise ValueError(f"uniform needs low <= high, got low={low}, high={high}")
    return _finish(_rng(rng).uniform(low, high, size=as_shape(shape)), dtype, device)


def zeros(shape: Shape, *, dtype=np.float32, device: str | None = None, rng=None):
    return _finish(np.zeros(as_shape(shape)), dtype, device)


def ones(shape: Shape, *, dtype=np.float32, device: str | None = None, rng=None):
    return _finish(np.ones(as_shape(shape)), dtype, device)


def xavier_normal(shape: Shape, gain: float = 1.0, *, rng=None, dtype=np.float32, device: str | None = None):
    """Glorot normal: Var[w] = 2 / (fan_in + fan_out), times gain^2."""
    fan_in, fan_out = _nonzero_fans(shape, "xavier_normal")
    return normal(shape, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), rng=rng, dtype=dtype, device=device)


def xavier_uniform(shape: Shape, gain: float = 1.0, *, rng=None, dtype=np.float32, device: str | None = None):
    """Glorot uniform: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _nonzero_fans(shape, "xavier_uniform")
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform(shape, -a, a, rng=rng, dtype=dtype, device=device)


def kaiming_normal(shape: Shape, nonlinearity: str = "relu", *, rng=None, dtype=np.float32, device: str | None = None):
    """He normal (fan_in mode): Var[w] = gain^2 / fan_in, gain = sqrt(2) for ReLU."""
    fan_in, _ = _nonzero_fans(shape, "kaiming_normal")
    return normal(shape, 0.0, _gain(nonlinearity) / math.sqrt(fan_in), rng=rng, dtype=dtype, device=device)


def kaiming_uniform(shape: Shape, nonlinearity: str = "relu", *, rng=None, dtype=np.float32, device: str | None = None):
    """He uniform (fan_in mode): U(-a, a) with a = gain * sqrt(3 / fan_in)."""
    fan_in, _ = _nonzero_fans(shape, "kaiming_uniform")
    a = _gain(nonlinearity) * math.sqrt(3.0 / fan_in)
    return uniform(shape, -a, a, rng=rng, dtype=dtype, device=device)


@plug.point("linear_weight")
def linear_weight(fan_in: int, fan_out: int, rng: np.random.Generator):
    """The starting weight (fan_in, fan_out) of :class:`tinyllm.nn.Linear`, drawn from ``rng``, float64.

    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for ``nn.Linear``; its std 1/sqrt(3 fan_in) shrinks
    the signal of a deep ReLU stack layer by layer (lesson 01 measures it and replaces this function through
    the plug point ``linear_weight``). Linear casts the result to its dtype.
    """
    a = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-a, a, size=(fan_in, fan_out))


def gpt2_residual(shape: Shape, n_layers: int, std: float = 0.02, *, rng=None, dtype=np.float32, device: str | None = None):
    """GPT-2's residual projections: N(0, (std / sqrt(2 * n_layers))^2).

    Each block adds two residual branches (attention and MLP); scaling their
    output projections keeps the residual stream's variance from growing with depth.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    return normal(shape, 0.0, std / math.sqrt(2 * n_layers), rng=rng, dtype=dtype, device=device)


INITIALIZERS: dict[str, Callable[..., Any]] = {
    "normal": normal,
    "uniform": uniform,
    "zeros": zeros,
    "ones": ones,
    "xavier_normal": xavier_normal,
    "xavier_uniform": xavier_uniform,
    "kaiming_normal": kaiming_normal,
    "kaiming_uniform": kaiming_uniform,
    "gpt2_residual": gpt2_residual,
}


def initialize(name: str, shape: Shape, **kwargs: Any):
    """Initialise by name, e.g. ``initialize("kaiming_normal", (784, 256), rng=0)``."""
    if name not in INITIALIZERS:
        raise ValueError(f"initializer {name!r} is unknown: expected one of {sorted(INITIALIZERS)}")
    return INITIALIZERS[name](shape, **kwargs)
