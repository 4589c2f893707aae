"""The safetensors format, written from scratch: a JSON header and raw little-endian bytes.

A ``.safetensors`` file is (format description: huggingface/safetensors README):

    N        8 bytes   little-endian uint64: the length of the header
    header   N bytes   UTF-8 JSON: {"__metadata__": {str: str},
                                    name: {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
                       padded with spaces so that the data start at a multiple of 8
    data     the tensors' bytes, C order, little-endian; offsets are relative to the start of the data

Nothing but data and a flat JSON header: no pickle, so loading cannot run code, and
any tensor can be read in place through a memory map without reading the rest.

A big model is split into *shards* plus an index file mapping each tensor to its
shard (``model.safetensors.index.json``: ``{"metadata": {"total_size": ...},
"weight_map": {name: file}}``), the layout Hugging Face uses.

Every problem with a file raises :class:`tinyllm.errors.CheckpointError` naming the
file, the tensor and what is wrong. Writes are atomic: a temporary file in the same
directory, flushed and fsynced, then ``os.replace``.
"""
from __future__ import annotations

import json
import math
import mmap as _mmap
import os
import tempfile
from typing import Any, Iterator, Mapping

import ml_dtypes
import numpy as np

from tinyllm.backend import to_numpy
from tinyllm.errors import CheckpointError

__all__ = [
    "DTYPES", "save_file", "load_file", "SafetensorsFile", "save_sharded", "load_sharded",
    "convert_dtype", "INDEX_NAME", "atomic_write",
]

#: safetensors dtype string -> NumPy dtype (little-endian).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {dt: name for name, dt in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100_000_000  # as the reference reader


def _dtype_name(dt: np.dtype, what: str) -> str:
    dt = np.dtype(dt).newbyteorder("<") if np.dtype(dt).byteorder == ">" else np.dtype(dt)
    try:
        return _NAMES[dt]
    except KeyError:
        raise TypeError(f"{what}: dtype {dt} cannot be stored in safetensors (supported: {', '.join(DTYPES)})") from None


def convert_dtype(tensors: Mapping[str, Any], dtype: Any) -> dict[str, np.ndarray]:
    """Cast every floating-point array to ``dtype`` (``"float16"``, ``"bfloat16"``, ``np.float32``...); others unchanged."""
    target = np.dtype(ml_dtypes.bfloat16) if str(dtype) in ("bfloat16", "bf16", "BF16") else np.dtype(dtype)
    out = {}
    for name, x in tensors.items():
        x = to_numpy(x)
        is_float = np.issubdtype(x.dtype, np.floating) or x.dtype in (DTYPES["BF16"], DTYPES["F8_E4M3"], DTYPES["F8_E5M2"])
        out[name] = x.astype(target) if is_float and x.dtype != target else x
    return out


# ---- writing -------------------------------------------------------------------

def atomic_write(path: str | os.PathLike[str], write: Any) -> None:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync it, then rename it onto ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _prepare(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None) -> tuple[bytes, list[np.ndarray]]:
    """The padded header bytes and the arrays in file order."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a dict of name -> array, got {type(tensors).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for name, x in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"tensor names must be non-empty strings other than '__metadata__', got {name!r}")
        if not hasattr(x, "dtype") or not hasattr(x, "shape"):
            raise TypeError(f"tensor {name!r}: expected an array, got {type(x).__name__}")
        x = np.asarray(to_numpy(x))
        if not x.flags.c_contiguous:
            x = x.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
        if x.dtype.byteorder == ">":
            x = x.astype(x.dtype.newbyteorder("<"))
        _dtype_name(x.dtype, f"tensor {name!r}")
        arrays[name] = x
    # Largest items first, then by name, keeps every tensor naturally aligned in the file.
    order = sorted(arrays, key=lambda n: (-arrays[n].dtype.itemsize, n))
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata must be a dict of str -> str (serialise other values with json.dumps)")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name in order:
        x = arrays[name]
        header[name] = {"dtype": _NAMES[x.dtype], "shape": list(x.shape), "data_offsets": [offset, offset + x.nbytes]}
        offset += x.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(len(raw) + 8) % 8)  # pad so the data start 8-byte aligned
    return raw, [arrays[n] for n in order]


def save_file(tensors: Mapping[str, Any], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``{name: array}`` (NumPy or CuPy) to ``path`` as safetensors, atomically."""
    header, arrays = _prepare(tensors, metadata)

    def write(f):
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for x in arrays:
            if x.nbytes:
                f.write(memoryview(x.reshape(-1).view(np.uint8)))

    atomic_write(path, write)


# ---- reading -------------------------------------------------------------------

class SafetensorsFile:
    """A safetensors file opened lazily: the header is parsed, the data memory-mapped.

    ``keys()``, ``get(name)`` (a read-only view into the map, or a copy with ``copy=True``),
    ``shape(name)``, ``dtype(name)``, ``metadata`` (the ``__metadata__`` dict).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                self.file_size = os.fstat(f.fileno()).st_size
                head = f.read(8)
                if len(head) < 8:
                    raise self._error(None, f"file truncated: {len(head)} bytes, a safetensors file starts with an 8-byte header length")
                n = int.from_bytes(head, "little")
                if n > MAX_HEADER_BYTES or 8 + n > self.file_size:
                    raise self._error(None, f"header length {n} is impossible for a {self.file_size}-byte file (truncated or corrupt)")
                raw = f.read(n)
                self._map = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ) if self.file_size > 8 + n else None
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot open safetensors file: {e.strerror or e}") from e
        self.data_start = 8 + n
        self._parse_header(raw)
        buf = np.frombuffer(self._map, dtype=np.uint8) if self._map is not None else np.zeros(0, np.uint8)
        self._data = buf[self.data_start:]

    def _error(self, name: str | None, problem: str) -> CheckpointError:
        where = f"{self.path}" if name is None else f"{self.path}: tensor {name!r}"
        return CheckpointError(f"{where}: {problem}")

    def _parse_header(self, raw: bytes) -> None:
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise self._error(None, f"header is not valid UTF-8 JSON ({e})") from None
        if not isinstance(header, dict):
            raise self._error(None, f"header must be a JSON object, got {type(header).__name__}")
        meta = header.pop("__metadata__", None)
        if meta is not None and (not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values())):
            raise self._error(None, "__metadata__ must be an object of string values")
        self.metadata: dict[str, str] = meta or {}
        data_size = self.file_size - self.data_start
        self._infos: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        spans = []
        for name, info in header.items():
            if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
                raise self._error(name, f"entry must have exactly dtype, shape and data_offsets, got {info!r}"[:300])
            dt_name, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
            if dt_name not in DTYPES:
                raise self._error(name, f"unknown dtype {dt_name!r} (known: {', '.join(DTYPES)})")
            if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
                raise self._error(name, f"shape must be a list of non-negative ints, got {shape!r}")
            if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs)):
                raise self._error(name, f"data_offsets must be [begin, end] ints, got {offs!r}")
            if math.prod(max(s, 1) for s in shape) > 1 << 48:  # e.g. [2**60, 0]: no bytes, but an impossible shape
                raise self._error(name, f"absurd shape {shape}")
            begin, end = offs
            dt = DTYPES[dt_name]
            nbytes = math.prod(shape) * dt.itemsize
            if not 0 <= begin <= end:
                raise self._error(name, f"data_offsets {offs} are not an increasing pair")
            if end - begin != nbytes:
                raise self._error(name, f"data_offsets {offs} span {end - begin} bytes but shape {shape} of {dt_name} needs {nbytes}")
            if end > data_size:
                raise self._error(name, f"data_offsets {offs} run past the end of the data ({data_size} bytes; file truncated?)")
            self._infos[name] = (dt, tuple(shape), begin, end)
            if end > begin:
                spans.append((begin, end, name))
        spans.sort()
        for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise self._error(n1, f"data_offsets [{b1}, {e1}] overlap tensor {n0!r} [{b0}, {e0}]")

    def keys(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def _info(self, name: str):
        try:
            return self._infos[name]
        except KeyError:
            raise self._error(name, f"missing: the file holds {len(self._infos)} tensors") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info(name)[1]

    def dtype(self, name: str) -> np.dtype:
        return self._info(name)[0]

    def get(self, name: str, copy: bool = False) -> np.ndarray:
        """Tensor ``name``: a read-only view into the memory map (``copy=True`` for a private writable copy)."""
        dt, shape, begin, end = self._info(name)
        x = self._data[begin:end].view(dt).reshape(shape)
        return x.copy() if copy else x

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"SafetensorsFile({os.path.basename(self.path)!r}, {len(self)} tensors)"


def load_file(path: str | os.PathLike[str], mmap: bool = True) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file: read-only memory-mapped views (``mmap=True``) or in-memory copies."""
    f = SafetensorsFile(path)
    return {name: f.get(name, copy=not mmap) for name in f.keys()}


# ---- shards ----------------------------------------------------------------------

def save_sharded(tensors: Mapping[str, Any], directory: str | os.PathLike[str], max_shard_bytes: int,
                 metadata: Mapping[str, str] | None = None, prefix: str = "model") -> list[str]:
    """Split ``tensors`` into files of at most ``max_shard_bytes`` (a bigger tensor gets a shard alone)
    plus ``model.safetensors.index.json``. Returns the shard file names."""
    if not isinstance(max_shard_bytes, int) or max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be a positive int, got {max_shard_bytes!r}")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    arrays = {name: to_numpy(x) for name, x in tensors.items()}
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, x in arrays.items():  # keep the caller's order: a model's layers stay together
        if shards[-1] and size + x.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = x
        size += x.nbytes
    names = [f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for fname, shard in zip(names, shards):
        save_file(shard, os.path.join(directory, fname), metadata)
        weight_map.update({name: fname for name in shard})
    index = {"metadata": {"total_size": sum(x.nbytes for x in arrays.values()), **dict(metadata or {})},
             "weight_map": weight_map}
    text = json.dumps(index, indent=2, sort_keys=False).encode("utf-8")
    atomic_write(os.path.join(directory, INDEX_NAME), lambda f: f.write(text))
    return names


def load_sharded(directory: str | os.PathLike[str], mmap: bool = True) -> dict[str, np.ndarray]:
    """All tensors of a sharded checkpoint written by :func:`save_sharded` (or Hugging Face)."""
    directory = os.fspath(directory)
    index_path = os.path.join(directory, INDEX_NAME)
    try:
        with open(index_path, "rb") as f:
            index = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise CheckpointError(f"{index_path}: cannot read the shard index: {e.strerror or e}") from e
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{index_path}: the shard index is not valid JSON ({e})") from None
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise CheckpointError(f"{index_path}: needs a 'weight_map' object of tensor name -> shard file name")
    files: dict[str, SafetensorsFile] = {}
    out = {}
    for name, fname in wm.items():
        if os.path.basename(fname) != fname:
            raise CheckpointError(f"{index_path}: tensor {name!r}: shard name {fname!r} must be a plain file name")
        if fname not in files:
            files[fname] = SafetensorsFile(os.path.join(directory, fname))
        shard = files[fname]
        if name not in shard:
            raise CheckpointError(f"{shard.path}: tensor {name!r}: listed in {INDEX_NAME} but missing from the shard")
        out[name] = shard.get(name, copy=not mmap)
    return out
