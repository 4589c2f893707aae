"""Pick the array module: NumPy on the CPU, CuPy on an NVIDIA GPU.

The whole library is written against the NumPy API. A function never imports
CuPy itself; it asks its inputs which module they belong to::

    xp = get_array_module(x)      # numpy or cupy, whichever owns x
    y = xp.exp(x - x.max(axis=-1, keepdims=True))

so the same call runs on either device. Only this module touches CuPy, and only
lazily, so the CPU path works with no CuPy installed.

The default device comes from the environment variable ``TINYLLM_DEVICE``:

- ``cpu``  - always NumPy;
- ``gpu``  - CuPy on a GPU; if none is usable, fall back to NumPy and say why;
- ``auto`` - (default) the GPU when CuPy and a GPU are both usable, else the CPU.
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

DEVICES = ("cpu", "gpu", "auto")

_cupy: ModuleType | None = None
_cupy_checked = False
_gpu_problem: str | None = None  # why the GPU is not usable, in one line
_fallback_announced = False  # the fallback message is printed once per process
# Advice that works from the clone: the name "tinyllm" on PyPI belongs to an unrelated project.
GPU_INSTALL_ADVICE = 'in the repository, run: pip install -e ".[gpu]" (CuPy for CUDA 12; or pip install cupy-cuda12x)'


def _one_line(exc: BaseException) -> str:
    """``ExcName: message`` on one line (CUDA errors often span several)."""
    message = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {message}" if message else exc.__class__.__name__


def _load_cupy() -> ModuleType | None:
    """Import CuPy once and check that a GPU is really usable; remember why not."""
    global _cupy, _cupy_checked, _gpu_problem
    if _cupy_checked:
        return _cupy
    _cupy_checked = True
    try:
        import cupy  # noqa: PLC0415 - lazy on purpose
    except ImportError:
        _gpu_problem = f"CuPy is not installed ({GPU_INSTALL_ADVICE})"
        return None
    except Exception as exc:  # a broken CUDA install can raise anything on import
        _gpu_problem = f"CuPy failed to import ({_one_line(exc)})"
        return None
    try:
        if not cupy.cuda.is_available():
            _gpu_problem = "CuPy is installed but no usable GPU was found (cupy.cuda.is_available() is False)"
            return None
        cupy.zeros(1)  # a driver too old for the toolkit only shows up on allocation
    except Exception as exc:
        _gpu_problem = f"CuPy is installed but the GPU is not usable ({_one_line(exc)})"
        return None
    _cupy = cupy
    return _cupy


def gpu_available() -> bool:
    """True when CuPy imports and can allocate on a GPU."""
    return _load_cupy() is not None


def gpu_problem() -> str | None:
    """One line saying why the GPU is not usable, or None when it is."""
    _load_cupy()
    return _gpu_problem


def requested_device() -> str:
    """The device asked for in ``TINYLLM_DEVICE`` (default ``auto``), validated."""
    value = os.environ.get("TINYLLM_DEVICE", "auto").strip().lower() or "auto"
    if value not in DEVICES:
        raise ValueError(
            f"TINYLLM_DEVICE={value!r} is not a device: expected one of {', '.join(DEVICES)}"
        )
    return value


def resolve_device(device: str | None = None, *, warn: bool = True) -> str:
    """Turn ``cpu``/``gpu``/``auto`` (or None: read ``TINYLLM_DEVICE``) into ``cpu`` or ``gpu``.

    Asking for ``gpu`` when none is usable falls back to ``cpu`` with a one-line
    explanation (printed once per process) instead of an error deep inside CUDA.
    """
    global _fallback_announced
    if device is None:
        device = requested_device()
    if not isinstance(device, str) or device.lower() not in DEVICES:
        raise ValueError(f"device={device!r} is not a device: expected one of {', '.join(DEVICES)}")
    device = device.lower()
    if device == "cpu":
        return "cpu"
    if gpu_available():
        return "gpu"
    if device == "gpu" and warn and not _fallback_announced:
        _fallback_announced = True
        print(f"tinyllm: GPU requested but unavailable, using the CPU instead: {_gpu_problem}.")
    return "cpu"


def get_xp(device: str | None = None) -> ModuleType:
    """The array module for a device: ``numpy`` or ``cupy``."""
    return _cupy if resolve_device(device) == "gpu" else np  # type: ignore[return-value]


def get_array_module(*arrays: Any) -> ModuleType:
    """The array module that owns the given arrays (NumPy for anything that is not CuPy)."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            return _load_cupy() or np
    return np


def is_gpu_array(x: Any) -> bool:
    return type(x).__module__.startswith("cupy")


def _is_container(x: Any) -> bool:
    """A dict, or a list/tuple holding arrays or dicts (a list of numbers is array data)."""
    if isinstance(x, dict):
        return True
    if isinstance(x, (list, tuple)):
        return any(isinstance(v, (np.ndarray, dict)) or is_gpu_array(v) or _is_container(v) for v in x)
    return False


def _map(fn, x: Any):
    if isinstance(x, dict):
        return {k: fn(v) for k, v in x.items()}
    return type(x)(fn(v) for v in x)


def to_device(x: Any, device: str | None = None):
    """Copy an array (or a dict/list/tuple of arrays) to ``device``; no copy when already there.

    ``device`` is ``cpu``, ``gpu`` or ``auto``; None reads ``TINYLLM_DEVICE``.
    """
    if _is_container(x):
        return _map(lambda v: to_device(v, device), x)
    if resolve_device(device) == "gpu":
        return _cupy.asarray(x)  # type: ignore[union-attr]
    return to_numpy(x)


def to_numpy(x: Any):
    """Bring an array (or a dict/list/tuple of arrays) back to the host as NumPy (a no-op for NumPy input)."""
    if _is_container(x):
        return _map(to_numpy, x)
    if is_gpu_array(x):
        return x.get()
    return np.asarray(x)


def synchronize(x: Any = None) -> None:
    """Wait for the GPU to finish queued work (a no-op on the CPU). Needed before timing."""
    if _cupy is not None and (x is None or is_gpu_array(x)):
        _cupy.cuda.Device().synchronize()


def describe(device: str | None = None) -> str:
    """A sentence telling the learner which device is in use and why."""
    target = resolve_device(device, warn=False)
    if target == "gpu":
        props = _cupy.cuda.runtime.getDeviceProperties(_cupy.cuda.Device().id)  # type: ignore[union-attr]
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"Using the GPU ({name}) through CuPy {_cupy.__version__}."  # type: ignore[union-attr]
    asked = device or requested_device()
    why = "" if asked == "cpu" else f": {gpu_problem()}"
    return f"Using the CPU through NumPy {np.__version__}{why}."
