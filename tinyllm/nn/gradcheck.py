"""Gradient checking: compare a backward pass with central finite differences.

For a scalar function f, the central difference

    df/dx_i ~ (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)

has error O(eps^2). In float64 with eps = 1e-6 the truncation error (~1e-12) and
the rounding error (~1e-16 / 1e-6 = 1e-10) are both tiny, so a correct backward
agrees to better than 1e-6 relative; a wrong one is usually off by O(1).

A module y = m(x) is turned into a scalar by a fixed random projection,
L = sum(y * g), so that dL/dy = g is what ``backward`` receives.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from tinyllm.backend import get_array_module
from tinyllm.nn.module import Module


def numerical_gradient(f: Callable[[Any], float], x: Any, eps: float = 1e-6):
    """dF/dx by central differences: f(x) must return a scalar; x (float64) is perturbed in place and restored.

    One element at a time, so it costs 2 * x.size calls of f: use it on small arrays only.
    """
    if np.dtype(x.dtype) != np.float64:
        raise TypeError(f"x must be float64 for a meaningful finite-difference check, got dtype {x.dtype}")
    xp = get_array_module(x)
    grad = xp.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)  # views of x and grad
    for i in range(flat.size):  # a loop over elements is the point here: one probe per coordinate
        old = float(flat[i])
        flat[i] = old + eps
        f_plus = float(f(x))
        flat[i] = old - eps
        f_minus = float(f(x))
        flat[i] = old
        gflat[i] = (f_plus - f_minus) / (2.0 * eps)
    return grad


def relative_error(analytic: Any, numeric: Any) -> float:
    """max |a - n| / max(max |a|, max |n|): the worst error measured against the gradient's scale."""
    xp = get_array_module(analytic)
    scale = max(float(xp.abs(analytic).max()), float(xp.abs(numeric).max()), 1e-30)
    return float(xp.abs(analytic - numeric).max()) / scale


def to_float64(module: Module) -> Module:
    """Convert a module's parameters (and gradients) to float64 in place; returns the module."""
    for p in module.parameters():
        p.data = p.data.astype(np.float64)
        p.grad = p.grad.astype(np.float64)
    return module


def gradient_errors(module: Module, x: Any, *args: Any, eps: float = 1e-6, seed: int = 12345) -> dict[str, float]:
    """Relative error of ``module``'s gradients for the input ``x`` and every parameter, by name.

    Parameters are converted to float64 in place. Extra ``args`` go to ``forward``
    after x (e.g. the targets of a loss). A module whose forward returns a scalar
    (a loss) gets ``backward(1.0)``; otherwise L = sum(y * g) with g ~ N(0, 1) seeded.
    Integer inputs (token ids) have no gradient and are not checked. The forward
    pass must be deterministic: put a module holding Dropout in ``eval()`` mode first.
    """
    xp = get_array_module(x)
    to_float64(module)
    check_x = np.issubdtype(np.dtype(x.dtype), np.floating)
    if check_x:
        x = x.astype(np.float64)
    y = module.forward(x, *args)
    scalar = np.ndim(y) == 0
    g = 1.0 if scalar else xp.asarray(np.random.default_rng(seed).standard_normal(y.shape))  # dL/dy

    def loss(_=None) -> float:
        out = module.forward(x, *args)
        return float(out) if scalar else float((out * g).sum())

    module.zero_grad()
    module.forward(x, *args)
    dx = module.backward(g)
    errors: dict[str, float] = {}
    if check_x:
        errors["input"] = relative_error(dx, numerical_gradient(loss, x, eps))
    for name, p in module.named_parameters():
        analytic = p.grad.copy()
        errors[name] = relative_error(analytic, numerical_gradient(loss, p.data, eps))
    return errors


def check_module(module: Module, x: Any, *args: Any, eps: float = 1e-6, seed: int = 12345) -> float:
    """The largest relative error over the input gradient and all parameter gradients (see gradient_errors)."""
    return max(gradient_errors(module, x, *args, eps=eps, seed=seed).values())
