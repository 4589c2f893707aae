"""Parameters and the Module base class that every layer builds on.

A layer holds :class:`Parameter` objects (a value ``data`` and its gradient
``grad``), computes ``forward`` and, with what it cached there, ``backward``:

    y  = layer.forward(x)        # caches what backward needs
    dx = layer.backward(dy)      # accumulates dL/dparam into each .grad, returns dL/dx

Gradients *accumulate* (``+=``), as in PyTorch, so a weight used twice (a tied
embedding and output head) receives both contributions. Call ``zero_grad()``
before each step.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from tinyllm.backend import get_array_module, to_device


class Parameter:
    """A trainable array ``data`` and its gradient ``grad`` (same shape, dtype and device)."""

    __slots__ = ("data", "grad")

    def __init__(self, data: Any):
        self.data = data
        self.grad = get_array_module(data).zeros_like(data)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def size(self) -> int:
        return int(self.data.size)

    def zero_grad(self) -> None:
        self.grad[...] = 0

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: finds Parameters and sub-Modules among attributes (and lists of them)."""

    training: bool = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")

    def backward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.backward is not implemented")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # ---- traversal -------------------------------------------------------
    def _children(self) -> Iterator[tuple[str, Any]]:
        for name, value in vars(self).items():
            if isinstance(value, (Parameter, Module)):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, (Parameter, Module)):
                        yield f"{name}.{i}", item

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Yield ``(dotted.name, Parameter)`` pairs, each Parameter once (tied weights appear once)."""
        seen: set[int] = set()
        for name, p in self._named_parameters_all(prefix):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def _named_parameters_all(self, prefix: str) -> Iterator[tuple[str, Parameter]]:
        for name, child in self._children():
            full = f"{prefix}{name}"
            if isinstance(child, Parameter):
                yield full, child
            else:
                yield from child._named_parameters_all(full + ".")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def modules(self) -> Iterator["Module"]:
        yield self
        for _, child in self._children():
            if isinstance(child, Module):
                yield from child.modules()

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    # ---- modes and devices -----------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def to(self, device: str) -> "Module":
        """Move every parameter (and its gradient) to ``cpu`` or ``gpu``."""
        for p in self.parameters():
            p.data = to_device(p.data, device)
            p.grad = to_device(p.grad, device)
        return self

    # ---- state -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{name: array}`` of every parameter (the arrays themselves, not copies)."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy arrays into the parameters, checking names and shapes first."""
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"state dict does not match {type(self).__name__}: missing {missing}, unexpected {unexpected}")
        for name, p in own.items():
            value = state[name]
            if tuple(value.shape) != p.shape:
                raise ValueError(f"parameter {name!r}: expected shape {p.shape}, got {tuple(value.shape)}")
            xp = get_array_module(p.data)
            p.data[...] = xp.asarray(value, dtype=p.data.dtype)


def _check_float_array(x: Any, name: str, ndim: int | tuple[int, ...] | None = None, last_dim: int | None = None) -> None:
    """Raise a clear TypeError/ValueError when ``x`` is not a float array of the expected rank/width."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(x).__name__}")
    if not np.issubdtype(np.dtype(x.dtype), np.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if x.ndim not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(x.shape)}")
    if last_dim is not None and x.shape[-1] != last_dim:
        raise ValueError(f"{name} must have last dimension {last_dim}, got shape {tuple(x.shape)}")
