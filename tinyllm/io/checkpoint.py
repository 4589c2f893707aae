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
``os.replace``): a crash mid-save leaves the previous checkpoint intact. Loading checks the
whole file before it writes into the model or the optimiser.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from tinyllm.backend import get_array_module, to_numpy
from tinyllm.errors import CheckpointError
from tinyllm.io.files import parse_json
from tinyllm.io.safetensors import DTYPES, SafetensorsFile, convert_dtype, save_file

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
    try:  # what load_checkpoint would refuse is refused now
        parse_json(text.encode("utf-8"), "extra", CheckpointError, allow_nan=True)
    except CheckpointError as e:
        raise ValueError(f"{e} (the checkpoint could not be loaded back)") from None
    save_file(tensors, path, metadata={_META: text})


_SCALAR_TYPES = (bool, int, float, str, type(None))


def _read_meta(f: SafetensorsFile) -> dict[str, Any]:
    """The checkpoint's metadata JSON, every field checked: format_version, step, model_class,
    extra and, when present, the optimiser's class and scalars."""
    if _META not in f.metadata:
        raise CheckpointError(f"{f.path}: not a tinyllm checkpoint (no '{_META}' entry in __metadata__)")
    meta = parse_json(f.metadata[_META].encode("utf-8"), f"{f.path}: checkpoint metadata", CheckpointError, allow_nan=True)

    def bad(problem: str) -> CheckpointError:
        return CheckpointError(f"{f.path}: checkpoint metadata: {problem}"[:400])

    if not isinstance(meta, dict):
        raise bad(f"must be a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise bad(f"unsupported format_version {version!r} (this reader knows {FORMAT_VERSION})")
    step = meta.get("step")
    if type(step) is not int or not 0 <= step < 1 << 63:
        raise bad(f"step must be an int in [0, 2**63), got {step!r}")
    if not isinstance(meta.get("model_class"), str):
        raise bad(f"model_class must be a string, got {meta.get('model_class')!r}")
    if not isinstance(meta.get("extra"), dict):
        raise bad(f"extra must be an object, got {meta.get('extra')!r}")
    if "optimizer" in meta:
        info = meta["optimizer"]
        if not (isinstance(info, dict) and isinstance(info.get("class"), str) and isinstance(info.get("scalars"), dict)):
            raise bad(f"optimizer must be an object with a string 'class' and an object 'scalars', got {info!r}")
        for k, v in info["scalars"].items():
            if not isinstance(v, _SCALAR_TYPES):
                raise bad(f"optimiser scalar {k!r} must be a number, string, bool or null, got {v!r}")
    return meta


def _is_float(dt: np.dtype) -> bool:
    return dt.kind == "f" or dt in (DTYPES["BF16"], DTYPES["F8_E4M3"], DTYPES["F8_E5M2"])


def load_checkpoint(path: str | os.PathLike[str], model: Any, optimizer: Any = None) -> dict[str, Any]:
    """Load weights into ``model`` (and state into ``optimizer``) from ``path``.

    Returns ``{"step": int, "extra": dict, "model_class": str}``. Everything is checked
    before anything is written (the file's header and metadata, every tensor's name, shape
    and dtype, and the optimiser state through ``optimizer.check_state_dict``), so a bad file
    leaves model and optimiser untouched; problems raise :class:`CheckpointError` naming the
    file, the tensor and what is wrong.
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
        key, dt = _MODEL + name, np.dtype(p.dtype)
        if f.shape(key) != tuple(p.shape):
            raise CheckpointError(f"{f.path}: tensor {key!r}: shape {f.shape(key)} in the file, {tuple(p.shape)} in the model")
        if f.dtype(key) != dt and not (_is_float(dt) and _is_float(f.dtype(key))):
            raise CheckpointError(f"{f.path}: tensor {key!r}: dtype {f.dtype(key)} in the file, {dt} in the model")
    opt_state = None
    if optimizer is not None:
        if "optimizer" not in meta:
            raise CheckpointError(f"{f.path}: has no optimiser state, but an optimizer was given to load into")
        info = meta["optimizer"]
        if info["class"] != type(optimizer).__name__:
            raise CheckpointError(f"{f.path}: optimiser state is for {info['class']}, not {type(optimizer).__name__}")
        arrays = {k[len(_OPTIM):]: f.get(k) for k in f.keys() if k.startswith(_OPTIM)}
        current = optimizer.state_dict()
        for k, x in arrays.items():
            if k in info["scalars"]:
                raise CheckpointError(f"{f.path}: tensor {_OPTIM + k!r}: also an optimiser scalar")
            if hasattr(current.get(k), "dtype") and x.dtype != np.dtype(current[k].dtype):
                raise CheckpointError(f"{f.path}: tensor {_OPTIM + k!r}: dtype {x.dtype} in the file, "
                                      f"{np.dtype(current[k].dtype)} in the optimiser")
        opt_state = {**info["scalars"], **arrays}
        try:
            opt_state = optimizer.check_state_dict(opt_state)
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{f.path}: optimiser state does not fit {type(optimizer).__name__}: "
                                  f"{e.args[0] if e.args else e}"[:400]) from None
    # everything checked: now write
    for name, p in own.items():
        xp = get_array_module(p)
        p[...] = xp.asarray(f.get(_MODEL + name).astype(p.dtype))
    if optimizer is not None:
        optimizer.load_state_dict(opt_state)
    return {"step": meta["step"], "extra": meta["extra"], "model_class": meta["model_class"]}
