"""Run your own function in place of the library's: the one way learner code enters tinyllm.

A library function that a learner can replace is marked as a *plug point*::

    @plug.point("rms_norm")
    def rms_norm(x, w, eps=1e-5): ...

and keeps doing its own work unless a ``with plug.use(...)`` block is active::

    with plug.use(rms_norm=my_rms_norm, llama_block=my_block):
        logits = model.forward(ids)        # every call of the points above runs your functions
    plug.in_use()                          # -> {} again: nothing stays plugged after the block

Rules, so that it cannot be left on by accident:

- it is off by default, and only :func:`use` turns it on, for the body of a ``with`` block; the previous state
  comes back when the block ends, also when it ends with an exception;
- the state lives in a :class:`contextvars.ContextVar`, so one thread's (or one asyncio task's) plugs do not
  leak into another's;
- :func:`use` accepts only known point names and callables, and each replacement receives exactly the
  arguments of the library function it replaces (the point's signature, see :func:`points`).

Plug points are listed by :func:`points`; the lessons' exercises use the same names and signatures.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from tinyllm.errors import TinyLLMError


class PlugError(TinyLLMError, ValueError):
    """An unknown plug point, or a replacement that is not a function."""


_POINTS: dict[str, Callable] = {}                  # name -> the library's own function (unwrapped)
_ACTIVE: contextvars.ContextVar[dict[str, Callable]] = contextvars.ContextVar("tinyllm_plugs", default={})


def point(name: str) -> Callable[[Callable], Callable]:
    """Decorator: make ``fn`` a plug point called ``name``. Unplugged, the wrapper costs one lookup."""
    def mark(fn: Callable) -> Callable:
        if name in _POINTS and _POINTS[name] is not fn:
            raise PlugError(f"plug point {name!r} is defined twice ({_POINTS[name].__qualname__} and {fn.__qualname__})")
        _POINTS[name] = fn

        @functools.wraps(fn)
        def dispatch(*args: Any, **kwargs: Any) -> Any:
            plugged = _ACTIVE.get()
            if plugged:
                replacement = plugged.get(name)
                if replacement is not None:
                    return replacement(*args, **kwargs)
            return fn(*args, **kwargs)

        dispatch.plug_point = name               # type: ignore[attr-defined]
        dispatch.library = fn                    # type: ignore[attr-defined]  the library's own version
        return dispatch
    return mark


def points() -> dict[str, str]:
    """Every plug point: name -> the signature a replacement must accept."""
    _load_all()
    return {name: f"{name}{inspect.signature(fn)}" for name, fn in sorted(_POINTS.items())}


@contextmanager
def use(**replacements: Callable) -> Iterator[dict[str, Callable]]:
    """Run ``replacements`` (point name -> function) in place of the library's functions inside the block."""
    _load_all()
    unknown = sorted(set(replacements) - set(_POINTS))
    if unknown:
        raise PlugError(f"no plug point named {', '.join(unknown)}; the points are: {', '.join(sorted(_POINTS))}")
    for name, fn in replacements.items():
        if not callable(fn):
            raise PlugError(f"plug.use({name}=...) needs a function, got {type(fn).__name__}")
    token = _ACTIVE.set({**_ACTIVE.get(), **replacements})
    try:
        yield dict(_ACTIVE.get())
    finally:
        _ACTIVE.reset(token)


def library(name: str) -> Callable:
    """The library's own function of the point ``name`` (what runs when nothing is plugged in)."""
    _load_all()
    if name not in _POINTS:
        raise PlugError(f"no plug point named {name}; the points are: {', '.join(sorted(_POINTS))}")
    return _POINTS[name]


def in_use() -> dict[str, Callable]:
    """The replacements active here and now (empty outside :func:`use`)."""
    return dict(_ACTIVE.get())


# Modules that define plug points: imported on first use of :func:`use` / :func:`points`, so that every point
# is known even when the caller has not imported its module yet.
_MODULES = ("tinyllm.init", "tinyllm.optim", "tinyllm.kernels", "tinyllm.nn.functional", "tinyllm.nn.attention",
            "tinyllm.models.gpt", "tinyllm.models.llama", "tinyllm.generate", "tinyllm.parallel", "tinyllm.evaluate",
            "tinyllm.io.ggml", "tinyllm.compress.gptq", "tinyllm.compress.prune", "tinyllm.compress.distill",
            "tinyllm.compress.smoothquant", "tinyllm.interp", "tinyllm.tokenizers.bpe")


def _load_all() -> None:
    import importlib

    for m in _MODULES:
        importlib.import_module(m)
