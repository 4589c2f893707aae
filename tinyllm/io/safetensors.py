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

The reader checks the whole header before handing out anything: every field's type and
range, and that the tensors tile the data section exactly (no gaps, overlaps, duplicate
names or trailing bytes), as the ``safetensors`` package does. Every problem raises
:class:`tinyllm.errors.CheckpointError` naming the file, the tensor and what is wrong.
Writes are atomic (:func:`tinyllm.io.files.atomic_write`); so is replacing a sharded
checkpoint (:func:`save_sharded`).
"""
from __future__ import annotations

import hashlib
import json
import math
import mmap as _mmap
import os
import re
from typing import Any, Iterator, Mapping

import ml_dtypes
import numpy as np

from tinyllm.backend import to_numpy
from tinyllm.errors import CheckpointError
from tinyllm.io.files import atomic_write, parse_json, read_json, write_json

__all__ = [
    "DTYPES", "save_file", "load_file", "SafetensorsFile", "save_sharded", "load_sharded",
    "convert_dtype", "INDEX_NAME",
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
        """Check every entry's fields, then that the tensors tile the data section exactly, as the
        ``safetensors`` package does: sorted by offsets, each starts where the previous ended and the
        last ends at the end of the file (no gaps, overlaps or trailing bytes)."""
        header = parse_json(raw, f"{self.path}: header", CheckpointError)
        if not isinstance(header, dict):
            raise self._error(None, f"header must be a JSON object, got {type(header).__name__}")
        meta = header.pop("__metadata__", None)
        if meta is not None and (not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values())):
            raise self._error(None, "__metadata__ must be an object of string values")
        self.metadata: dict[str, str] = meta or {}
        data_size = self.file_size - self.data_start
        self._infos: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
                raise self._error(name, f"entry must have exactly dtype, shape and data_offsets, got {info!r}"[:300])
            dt_name, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
            if not isinstance(dt_name, str) or dt_name not in DTYPES:
                raise self._error(name, f"unknown dtype {dt_name!r} (known: {', '.join(DTYPES)})"[:300])
            if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
                raise self._error(name, f"shape must be a list of non-negative ints, got {shape!r}"[:300])
            if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs)):
                raise self._error(name, f"data_offsets must be [begin, end] ints, got {offs!r}"[:300])
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
        covered, previous = 0, None
        for begin, end, name in sorted((b, e, n) for n, (_, _, b, e) in self._infos.items()):
            if begin < covered:
                raise self._error(name, f"data_offsets [{begin}, {end}] overlap tensor {previous!r}, which ends at {covered}")
            if begin > covered:
                raise self._error(name, f"data_offsets [{begin}, {end}] leave a gap of {begin - covered} bytes before them")
            covered, previous = end, name
        if covered != data_size:
            raise self._error(None, f"the tensors cover {covered} of the {data_size} data bytes: {data_size - covered} "
                                    "bytes at the end belong to no tensor (wrong header length, or a corrupt file)")

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

_DIGEST_KEY, _SAVE_KEY, _GEN_KEY = "tinyllm.weight_map_sha256", "tinyllm.save_id", "tinyllm.generation"


def _digest(weight_map: Mapping[str, str]) -> str:
    canonical = json.dumps(weight_map, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _save_id(shards: list[dict[str, np.ndarray]], metadata: Mapping[str, str]) -> str:
    """16 hex digits of a SHA-256 over every shard's header and bytes (checking every tensor on the way)."""
    h = hashlib.sha256()
    for shard in shards:
        header, arrays = _prepare(shard, metadata)
        h.update(len(header).to_bytes(8, "little") + header)
        for x in arrays:
            h.update(memoryview(x.reshape(-1).view(np.uint8)))
    return h.hexdigest()[:16]


def _shard_names(prefix: str, n: int, generation: int) -> list[str]:
    """Generation 1 has the Hugging Face names (``model-00001-of-00003.safetensors``), later ones a ``-v<g>``."""
    tag = "" if generation == 1 else f"-v{generation}"
    return [f"{prefix}{tag}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def _current_index(directory: str) -> tuple[set[str] | None, int]:
    """The shard names the current index lists (empty without an index; None if it cannot be read)
    and its generation (0 if none)."""
    try:
        index = read_json(os.path.join(directory, INDEX_NAME), CheckpointError)
        generation = index.get("metadata", {}).get(_GEN_KEY, 1)
        return set(index["weight_map"].values()), generation if type(generation) is int and 0 < generation < 10**9 else 1
    except FileNotFoundError:
        return set(), 0
    except (OSError, CheckpointError, TypeError, KeyError, AttributeError):
        return None, 1


def _remove_leftovers(directory: str, prefix: str, keep: set[str] | None) -> None:
    """Delete our shard files not in ``keep`` (all shards are kept when ``keep`` is None) and the
    temporary files of interrupted shard writes."""
    shard = re.escape(prefix) + r"(?:-v\d+)?-\d{5}-of-\d{5}\.safetensors"
    shard_rx, temp_rx = re.compile(shard + r"\Z"), re.compile(r"\." + shard + r"\.[a-z0-9_]{8}\.tmp\Z")
    for entry in os.listdir(directory):
        if temp_rx.match(entry) or (keep is not None and shard_rx.match(entry) and entry not in keep):
            try:
                os.unlink(os.path.join(directory, entry))
            except OSError:
                pass


def save_sharded(tensors: Mapping[str, Any], directory: str | os.PathLike[str], max_shard_bytes: int,
                 metadata: Mapping[str, str] | None = None, prefix: str = "model") -> list[str]:
    """Split ``tensors`` into files of at most ``max_shard_bytes`` (a bigger tensor gets a shard alone)
    plus ``model.safetensors.index.json``. Returns the shard file names.

    Replacing a checkpoint in ``directory`` is atomic: the new shards get names no current shard has
    (a generation tag: ``model-v2-00001-of-00003.safetensors``), the index is switched last (one
    ``os.replace``), and only then are the old shards deleted. The index and every shard record the
    SHA-256 of the ``weight_map`` and a save id (a digest of all the bytes saved), so
    :func:`load_sharded` refuses an edited index and a mix of shards from two saves. On an exception
    the new shards are deleted. A process killed outright can leave the new shards (before the
    switch) or the old ones (after it) unreferenced, and temporary files; the next save deletes them.
    One writer per folder at a time.
    """
    if not isinstance(max_shard_bytes, int) or max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be a positive int, got {max_shard_bytes!r}")
    if not isinstance(prefix, str) or not prefix or os.path.basename(prefix) != prefix:
        raise ValueError(f"prefix must be a plain file name, got {prefix!r}")
    metadata = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("metadata must be a dict of str -> str (serialise other values with json.dumps)")
    if {"total_size", _DIGEST_KEY, _SAVE_KEY, _GEN_KEY} & metadata.keys():
        raise ValueError(f"metadata keys 'total_size', {_DIGEST_KEY!r}, {_SAVE_KEY!r} and {_GEN_KEY!r} are reserved")
    if not tensors:
        raise ValueError("tensors is empty: a sharded checkpoint needs at least one tensor")
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
    save_id = _save_id(shards, metadata)
    current, generation = _current_index(directory)
    _remove_leftovers(directory, prefix, current)  # what interrupted saves left
    generation += 1
    names = _shard_names(prefix, len(shards), generation)
    taken = current if current is not None else set(os.listdir(directory))  # unreadable index: keep every file
    while taken & set(names):
        generation += 1
        names = _shard_names(prefix, len(shards), generation)
    weight_map = {name: fname for fname, shard in zip(names, shards) for name in shard}
    stamp = {_DIGEST_KEY: _digest(weight_map), _SAVE_KEY: save_id}
    written = []
    try:
        for fname, shard in zip(names, shards):
            written.append(os.path.join(directory, fname))
            save_file(shard, written[-1], {**metadata, **stamp})
        index = {"metadata": {"total_size": sum(x.nbytes for x in arrays.values()), **metadata, **stamp,
                              _GEN_KEY: generation},
                 "weight_map": weight_map}
        write_json(os.path.join(directory, INDEX_NAME), index, indent=2)
    except BaseException:
        for path in written:
            try:
                os.unlink(path)
            except OSError:
                pass
        raise
    _remove_leftovers(directory, prefix, set(names))  # the old shards
    return names


def load_sharded(directory: str | os.PathLike[str], mmap: bool = True) -> dict[str, np.ndarray]:
    """All tensors of a sharded checkpoint written by :func:`save_sharded` (or Hugging Face).

    Every shard must hold exactly the tensors the index maps to it. When the index or a shard
    carries a save id or a ``weight_map`` digest (:func:`save_sharded` writes both), all must carry
    the same save id and the digest of the ``weight_map`` as read, and ``total_size`` must be the
    tensors' size.
    """
    directory = os.fspath(directory)
    index_path = os.path.join(directory, INDEX_NAME)
    try:
        index = read_json(index_path, CheckpointError)
    except OSError as e:
        raise CheckpointError(f"{index_path}: cannot read the shard index: {e.strerror or e}") from e
    wm = index.get("weight_map") if isinstance(index, dict) else None
    meta = index.get("metadata", {}) if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
        raise CheckpointError(f"{index_path}: needs a non-empty 'weight_map' object of tensor name -> shard file name")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{index_path}: 'metadata' must be an object, got {type(meta).__name__}")
    by_shard: dict[str, set[str]] = {}
    for name, fname in wm.items():
        if os.path.basename(fname) != fname or fname in ("", ".", ".."):
            raise CheckpointError(f"{index_path}: tensor {name!r}: shard name {fname!r} must be a plain file name")
        by_shard.setdefault(fname, set()).add(name)
    digest = _digest(wm)
    stamp = {_DIGEST_KEY: meta.get(_DIGEST_KEY), _SAVE_KEY: meta.get(_SAVE_KEY)}
    if stamp[_DIGEST_KEY] is not None and stamp[_DIGEST_KEY] != digest:
        raise CheckpointError(f"{index_path}: the weight_map does not match its digest {_DIGEST_KEY!r} (edited or corrupt)")
    files: dict[str, SafetensorsFile] = {}
    for fname, names in by_shard.items():
        shard = files[fname] = SafetensorsFile(os.path.join(directory, fname))
        theirs = {k: shard.metadata.get(k) for k in stamp}
        if any(stamp.values()) or any(theirs.values()):  # written by save_sharded: all must agree
            if theirs != {_DIGEST_KEY: digest, _SAVE_KEY: stamp[_SAVE_KEY]}:
                raise CheckpointError(f"{shard.path}: belongs to another save than {INDEX_NAME} (its {_SAVE_KEY!r} or "
                                      f"{_DIGEST_KEY!r} differs): shards of two saves are mixed, e.g. by a copy")
        if set(shard.keys()) != names:
            extra, missing = sorted(set(shard.keys()) - names), sorted(names - set(shard.keys()))
            what = f"tensor {missing[0]!r}: listed in {INDEX_NAME} but missing from the shard" if missing else \
                f"tensor {extra[0]!r}: in the shard but not listed for it in {INDEX_NAME}"
            raise CheckpointError(f"{shard.path}: {what}")
    if any(stamp.values()):
        total = sum(files[f].get(n).nbytes for n, f in wm.items())
        if meta.get("total_size") != total:
            raise CheckpointError(f"{index_path}: total_size is {meta.get('total_size')!r}, the tensors hold {total} bytes")
    return {name: files[fname].get(name, copy=not mmap) for name, fname in wm.items()}
