"""A GGUF reader written from scratch.

GGUF is the single-file model format of ggml/llama.cpp. All integers are
little-endian. The file is, in order (format description: ggml docs/gguf.md):

    magic            4 bytes  b"GGUF"
    version          uint32   2 or 3 (version 1 used 32-bit counts and is not read here)
    tensor_count     uint64
    metadata_count   uint64
    metadata         metadata_count x (key: string, value_type: uint32, value)
    tensor infos     tensor_count x (name: string, n_dims: uint32, ne: n_dims x uint64,
                                     ggml_type: uint32, offset: uint64)
    padding          to a multiple of ``general.alignment`` (default 32)
    tensor data      each tensor at data_start + offset (offsets are aligned too)

A *string* is a uint64 byte length followed by UTF-8 bytes (no terminator).
A *value* is one of 13 types (below); an ARRAY value is ``elem_type: uint32,
count: uint64`` and ``count`` values of that type (arrays may nest).

``ne`` lists dimensions fastest-varying first (ne[0] is the row length), the
reverse of NumPy's order: a ``(rows, cols)`` NumPy matrix has ``ne = [cols, rows]``.
The reader reports shapes in NumPy order.

The tensor data are memory-mapped, not read: opening a 100 MB model costs a few
milliseconds plus parsing the metadata, and :meth:`GGUFReader.raw` returns a
zero-copy uint8 view into the file.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from tinyllm.io import ggml
from tinyllm.io.ggml import BLOCK_SIZES, GGMLType
from tinyllm.errors import GGUFError, QuantizationError

__all__ = ["GGUFReader", "TensorInfo", "GGUFValueType", "GGMLType", "GGUF_MAGIC", "DEFAULT_ALIGNMENT"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 8
MAX_ELEMENTS = 1 << 48  # per tensor, counting zero dimensions as 1
# Per metadata array. Python lists cost ~40 bytes an element, so a corrupt count must be capped, not
# only checked against the file's size: 24 million int32 "elements" of a 98 MB file would take ~1 GB.
# Real vocabularies have at most ~262k tokens.
MAX_ARRAY_LENGTH = 1 << 20


class GGUFValueType(IntEnum):
    """Metadata value type codes (fixed by the format)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# Fixed-size scalar types: NumPy dtype (little-endian) of each.
_SCALAR_DTYPES: dict[int, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("<u1"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}
_STRUCT_CODES = {"u1": "B", "i1": "b", "u2": "H", "i2": "h", "u4": "I", "i4": "i", "f4": "f", "u8": "Q", "i8": "q", "f8": "d"}
_SCALAR_STRUCTS = {t: struct.Struct("<" + _STRUCT_CODES[dt.str[1:]]) for t, dt in _SCALAR_DTYPES.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class TensorInfo:
    """Where and how one tensor is stored.

    ``shape`` is in NumPy order (reversed GGUF ``ne``); ``offset`` is as stored in
    the file (relative to the start of the data section); ``file_offset`` is the
    absolute byte position; ``nbytes`` the size of its encoded data.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLType
    offset: int
    file_offset: int
    nbytes: int

    @property
    def ne(self) -> tuple[int, ...]:
        """Dimensions in GGUF order (fastest-varying first)."""
        return tuple(reversed(self.shape))

    @property
    def n_elements(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def type_name(self) -> str:
        return self.ggml_type.name


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; every failure is a GGUFError naming the file and what was read."""

    def __init__(self, buf: Any, path: str):
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.path = path

    def fail(self, what: str, problem: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what}: {problem}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(what, f"file truncated (need {n} bytes at offset {self.pos}, file has {self.size})")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def string(self, what: str) -> str:
        n = self.u64(what + " (string length)")
        self.need(n, what)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(what, f"string is not valid UTF-8 ({e.reason} at byte {e.start})") from None


class GGUFReader:
    """Parse a GGUF file and memory-map its tensors.

    >>> r = GGUFReader(path)                       # doctest: +SKIP
    >>> r.metadata["llama.block_count"]            # plain Python values
    >>> r.tensors["blk.0.attn_q.weight"].shape     # NumPy order (rows, cols)
    >>> r.dequantize("token_embd.weight")          # float32 ndarray

    Metadata values are plain Python: ints, floats, bools, str; arrays are lists
    (of str, int, float or nested lists). ``general.alignment`` sets the data alignment.
    Any problem with the file raises :class:`tinyllm.errors.GGUFError` naming the
    file and the key or tensor being read.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise GGUFError(f"{self.path}: file is empty (0 bytes), not a GGUF file")
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open GGUF file: {e.strerror or e}") from e
        self.file_size = size
        self._data = np.frombuffer(self._mmap, dtype=np.uint8)  # (file_size,) zero-copy view
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, GGUFValueType] = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            self._parse()
        except GGUFError:
            raise
        except (struct.error, IndexError, ValueError, OverflowError, MemoryError) as e:  # defence in depth
            raise GGUFError(f"{self.path}: corrupt GGUF file ({type(e).__name__}: {e})") from e

    # ---- parsing -----------------------------------------------------------
    def _parse(self) -> None:
        c = _Cursor(self._mmap, self.path)
        c.need(4, "magic")
        magic = bytes(self._mmap[0:4])
        c.pos = 4
        if magic != GGUF_MAGIC:
            raise c.fail("magic", f"bad magic {magic!r}, expected {GGUF_MAGIC!r}: not a GGUF file")
        version = c.u32("version")
        if version not in SUPPORTED_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            hint = " (a big-endian file; only little-endian GGUF is read)" if swapped in SUPPORTED_VERSIONS else ""
            raise c.fail("version", f"unsupported GGUF version {version}{hint}; supported: 2, 3")
        self.version = version
        n_tensors = c.u64("tensor count")
        n_kv = c.u64("metadata count")
        # Each metadata pair takes >= 8 + 4 + 1 bytes; each tensor info >= 8 + 4 + 4 + 8 bytes.
        if n_kv * 13 > self.file_size - c.pos:
            raise c.fail("metadata count", f"{n_kv} key/value pairs cannot fit in a {self.file_size}-byte file")
        if n_tensors * 24 > self.file_size - c.pos:
            raise c.fail("tensor count", f"{n_tensors} tensors cannot fit in a {self.file_size}-byte file")

        for i in range(n_kv):
            key = c.string(f"metadata key #{i}")
            vtype = c.u32(f"type of metadata key {key!r}")
            if key in self.metadata:
                raise c.fail(f"metadata key {key!r}", "duplicate key")
            self.metadata[key] = self._read_value(c, vtype, f"metadata key {key!r}", 0)
            self.metadata_types[key] = GGUFValueType(vtype)

        align = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if type(align) is not int or align <= 0 or align & (align - 1):
            raise c.fail("metadata key 'general.alignment'", f"must be a positive power of two, got {align!r}")
        self.alignment = align

        infos: list[tuple[str, tuple[int, ...], GGMLType, int]] = []
        seen: set[str] = set()
        for i in range(n_tensors):
            name = c.string(f"name of tensor #{i}")
            what = f"tensor {name!r}"
            n_dims = c.u32(what + " n_dims")
            if not 1 <= n_dims <= MAX_DIMS:
                raise c.fail(what, f"n_dims = {n_dims}, expected 1..{MAX_DIMS}")
            c.need(8 * n_dims, what + " dimensions")
            ne = struct.unpack_from(f"<{n_dims}Q", self._mmap, c.pos)
            c.pos += 8 * n_dims
            code = c.u32(what + " type")
            offset = c.u64(what + " offset")
            try:
                gt = GGMLType(code)
            except ValueError:
                raise c.fail(what, f"unknown ggml type {code}") from None
            if name in seen:
                raise c.fail(what, "duplicate tensor name")
            seen.add(name)
            infos.append((name, ne, gt, offset))

        self.header_size = c.pos
        self.data_start = -(-c.pos // align) * align
        for name, ne, gt, offset in infos:
            what = f"tensor {name!r}"
            block, type_size = BLOCK_SIZES[gt]
            if ne[0] % block:
                raise c.fail(what, f"row length {ne[0]} is not a multiple of the {gt.name} block size {block}")
            n, n_nonzero = 1, 1
            for d in ne:
                n *= d
                n_nonzero *= max(d, 1)
            if n_nonzero > MAX_ELEMENTS:  # e.g. ne = [2**60, 0]: no bytes, but no array can have that shape
                raise c.fail(what, f"absurd dimensions {list(ne)}")
            nbytes = n // block * type_size
            if offset % align:
                raise c.fail(what, f"data offset {offset} is not a multiple of the alignment {align}")
            start = self.data_start + offset
            if start + nbytes > self.file_size:
                raise c.fail(what, f"data [{start}, {start + nbytes}) runs past the end of the file ({self.file_size} bytes)")
            self.tensors[name] = TensorInfo(name, tuple(int(d) for d in reversed(ne)), gt, offset, start, nbytes)

    def _read_value(self, c: _Cursor, vtype: int, what: str, depth: int) -> Any:
        if vtype == GGUFValueType.STRING:
            return c.string(what)
        if vtype in _SCALAR_STRUCTS:
            s = _SCALAR_STRUCTS[vtype]
            c.need(s.size, what)
            (v,) = s.unpack_from(self._mmap, c.pos)
            c.pos += s.size
            return bool(v) if vtype == GGUFValueType.BOOL else v
        if vtype == GGUFValueType.ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise c.fail(what, f"arrays nested deeper than {MAX_ARRAY_DEPTH}")
            etype = c.u32(what + " (array element type)")
            count = c.u64(what + " (array length)")
            if count > MAX_ARRAY_LENGTH:
                raise c.fail(what, f"array of {count} elements, more than the {MAX_ARRAY_LENGTH} a metadata array may have")
            if etype in _SCALAR_DTYPES:  # one vectorised read for numeric arrays
                dt = _SCALAR_DTYPES[etype]
                c.need(count * dt.itemsize, what + f" (array of {count} {GGUFValueType(etype).name})")
                arr = self._data[c.pos:c.pos + count * dt.itemsize].view(dt)
                c.pos += count * dt.itemsize
                return arr.astype(bool).tolist() if etype == GGUFValueType.BOOL else arr.tolist()
            if etype == GGUFValueType.STRING:
                c.need(count * 8, what + f" (array of {count} strings)")
                return self._read_strings(c, count, what)
            if etype == GGUFValueType.ARRAY:
                c.need(count * 12, what + f" (array of {count} arrays)")
                return [self._read_value(c, etype, f"{what}[{i}]", depth + 1) for i in range(count)]
            raise c.fail(what, f"unknown array element type {etype}")
        raise c.fail(what, f"unknown value type {vtype}")

    def _read_strings(self, c: _Cursor, count: int, what: str) -> list[str]:
        """``count`` strings (a tokenizer vocabulary): a tight loop over the buffer."""
        buf, pos, size = self._mmap, c.pos, c.size
        unpack = _U64.unpack_from
        out = []
        append = out.append
        try:
            for _ in range(count):
                if pos + 8 > size:
                    raise IndexError
                (n,) = unpack(buf, pos)
                end = pos + 8 + n
                if end > size:
                    raise IndexError
                append(buf[pos + 8:end].decode("utf-8"))
                pos = end
        except IndexError:
            raise c.fail(f"{what}[{len(out)}]", f"file truncated (string runs past the end, offset {pos})") from None
        except UnicodeDecodeError as e:
            raise c.fail(f"{what}[{len(out)}]", f"string is not valid UTF-8 ({e.reason})") from None
        c.pos = pos
        return out

    # ---- access ------------------------------------------------------------
    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: no tensor named {name!r} ({len(self.tensors)} tensors in the file)") from None

    def raw(self, name: str) -> np.ndarray:
        """The encoded bytes of tensor ``name``: a read-only uint8 view into the memory map (no copy)."""
        t = self._info(name)
        return self._data[t.file_offset:t.file_offset + t.nbytes]

    def dequantize(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        """Tensor ``name`` decoded to a float32 array of NumPy shape ``tensors[name].shape``."""
        t = self._info(name)
        try:
            return ggml.dequantize(self.raw(name), t.ggml_type, t.shape, out=out)
        except QuantizationError as e:
            raise GGUFError(f"{self.path}: tensor {name!r}: {e}") from e

    def __repr__(self) -> str:
        return f"GGUFReader({os.path.basename(self.path)!r}, version={self.version}, {len(self.metadata)} keys, {len(self.tensors)} tensors)"
