"""Training checkpoints: model weights, optimiser state, step and metadata in one safetensors file.

Layout of the file (all in safetensors, so any tool can inspect it):

* ``model.<parameter name>``   the model's parameters (optionally cast to fp16/bf16 with ``dtype=``);
* ``optim.<key>``              the optimiser's state arrays (Adam's ``m.0``, ``v.0``...), always at full precision;
* ``__metadata__["tinyllm"]``  JSON: format version, ``step``, the optimiser's class and scalar state
  (``lr``, step count, hyperparameters) and the caller's ``extra`` dict (e.g. the RNG state, see
  :func:`rng_state`).

Floats go through JSON as their shortest round-trip repr and arrays as raw bytes, so
save -> load restores a run bit for bit: training resumed from a checkpoint continues
exactly as the uninterrupted run would. The write is atomic (temporary file, fsync,
``os.replace``): a crash mid-save leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from tinyllm.backend import get_array_module, to_numpy
from tinyllm.errors import CheckpointError
from tinyllm.io.safetensors import SafetensorsFile, convert_dtype, save_file

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_MODEL, _OPTIM, _META = "model.", "optim.", "tinyllm"


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The state of a NumPy Generator as a JSON-serialisable dict (put it in ``extra``)."""
    return rng.bit_generator.state


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Restore a state from :func:`rng_state` into ``rng`` (same bit generator type)."""
    rng.bit_generator.state = state


def save_checkpoint(path: str | os.PathLike[str], model: Any, optimizer: Any = None, step: int = 0,
                    extra: dict[str, Any] | None = None, dtype: Any = None) -> None:
    """Save ``model`` (a Module), ``optimizer`` (anything with ``state_dict()``), ``step`` and ``extra`` to ``path``.

    ``dtype`` (``"float16"``, ``"bfloat16"``...) casts the model's floating-point weights
    for storage; they are cast back to the model's dtype on load. ``extra`` must be
    JSON-serialisable (use :func:`rng_state` for generators).
    """
    path = os.fspath(path)
    if not hasattr(model, "state_dict"):
        raise TypeError(f"model must be a Module with state_dict(), got {type(model).__name__}")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    weights = {_MODEL + k: to_numpy(v) for k, v in model.state_dict().items()}
    if dtype is not None:
        weights = convert_dtype(weights, dtype)
    tensors = dict(weights)
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "step": int(step), "model_class": type(model).__name__,
                            "extra": extra if extra is not None else {}}
    if optimizer is not None:
        scalars = {}
        for k, v in optimizer.state_dict().items():
            if hasattr(v, "shape") and hasattr(v, "dtype"):
                tensors[_OPTIM + k] = to_numpy(v)
            elif isinstance(v, (bool, int, float, str)) or v is None:
                scalars[k] = v
            elif isinstance(v, (np.integer, np.floating)):
                scalars[k] = v.item()
            else:
                raise TypeError(f"optimizer state {k!r} has type {type(v).__name__}: only arrays and scalars are saved")
        meta["optimizer"] = {"class": type(optimizer).__name__, "scalars": scalars}
    try:
        text = json.dumps(meta, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"extra must be JSON-serialisable: {e}") from None
    save_file(tensors, path, metadata={_META: text})


def _read_meta(f: SafetensorsFile) -> dict[str, Any]:
    try:
        meta = json.loads(f.metadata[_META])
    except KeyError:
        raise CheckpointError(f"{f.path}: not a tinyllm checkpoint (no '{_META}' entry in __metadata__)") from None
    except ValueError as e:
        raise CheckpointError(f"{f.path}: the checkpoint metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{f.path}: unsupported checkpoint format {meta.get('format_version') if isinstance(meta, dict) else meta!r}")
    return meta


def load_checkpoint(path: str | os.PathLike[str], model: Any, optimizer: Any = None) -> dict[str, Any]:
    """Load weights into ``model`` (and state into ``optimizer``) from ``path``.

    Returns ``{"step": int, "extra": dict, "model_class": str}``. Everything is checked
    before anything is written, so a bad file leaves the model untouched; problems raise
    :class:`CheckpointError` naming the file, the tensor and what is wrong.
    """
    f = SafetensorsFile(path)
    meta = _read_meta(f)
    own = model.state_dict()
    stored = {k[len(_MODEL):] for k in f.keys() if k.startswith(_MODEL)}
    missing, unexpected = sorted(set(own) - stored), sorted(stored - set(own))
    if missing:
        raise CheckpointError(f"{f.path}: tensor {_MODEL + missing[0]!r}: missing ({len(missing)} of the model's "
                              f"parameters are not in the checkpoint: {missing[:5]})")
    if unexpected:
        raise CheckpointError(f"{f.path}: tensor {_MODEL + unexpected[0]!r}: not a parameter of {type(model).__name__} "
                              f"({len(unexpected)} unexpected: {unexpected[:5]})")
    for name, p in own.items():
        if f.shape(_MODEL + name) != tuple(p.shape):
            raise CheckpointError(f"{f.path}: tensor {_MODEL + name!r}: shape {f.shape(_MODEL + name)} in the file, "
                                  f"{tuple(p.shape)} in the model")
    opt_state = None
    if optimizer is not None:
        if "optimizer" not in meta:
            raise CheckpointError(f"{f.path}: has no optimiser state, but an optimizer was given to load into")
        info = meta["optimizer"]
        if info.get("class") != type(optimizer).__name__:
            raise CheckpointError(f"{f.path}: optimiser state is for {info.get('class')}, not {type(optimizer).__name__}")
        opt_state = dict(info.get("scalars", {}))
        opt_state.update({k[len(_OPTIM):]: f.get(k) for k in f.keys() if k.startswith(_OPTIM)})
        current = optimizer.state_dict()
        for k, v in current.items():
            if k not in opt_state:
                raise CheckpointError(f"{f.path}: tensor {_OPTIM + k!r}: missing from the optimiser state")
            if hasattr(v, "shape") and tuple(v.shape) != tuple(getattr(opt_state[k], "shape", ())):
                raise CheckpointError(f"{f.path}: tensor {_OPTIM + k!r}: shape {tuple(getattr(opt_state[k], 'shape', ()))} "
                                      f"in the file, {tuple(v.shape)} in the optimiser")
    for name, p in own.items():
        xp = get_array_module(p)
        p[...] = xp.asarray(f.get(_MODEL + name).astype(p.dtype))
    if optimizer is not None:
        try:
            optimizer.load_state_dict(opt_state)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{f.path}: optimiser state does not fit {type(optimizer).__name__}: {e}") from e
    return {"step": int(meta["step"]), "extra": meta.get("extra", {}), "model_class": meta.get("model_class")}
