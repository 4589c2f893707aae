"""GGML tensor encodings: the block formats Q8_0, Q4_0, Q4_1 and the plain F32, F16, BF16.

A GGML quantised tensor is cut, along its rows, into *blocks* of 32 consecutive
weights. Each block stores one or two fp16 numbers and 32 small integers:

=======  ==========================================  =====  ===========================
type     block layout (bytes)                        bytes  weight
=======  ==========================================  =====  ===========================
Q8_0     d: f16 (2) | q: 32 x int8 (32)              34     w = d * q
Q4_0     d: f16 (2) | q: 32 x 4 bit (16)             18     w = d * (q - 8)
Q4_1     d: f16 (2) | m: f16 (2) | q: 32 x 4 bit     20     w = d * q + m
=======  ==========================================  =====  ===========================

The 4-bit codes are packed two to a byte: byte ``j`` holds weight ``j`` in its
low nibble and weight ``j + 16`` in its high nibble. So Q4_1 costs
20 * 8 / 32 = 5 bits a weight, Q8_0 8.5 and Q4_0 4.5, against 32 for fp32.

Dequantisation here is vectorised over the whole tensor: the bytes are viewed
as a NumPy structured array (one record per block), the nibbles unpacked with
shifts and masks, and each block scaled in float32. The arithmetic (float32
``d * q`` then ``+ m``) is that of ggml's reference C code, so results are
bit-identical to it (and to the ``gguf`` Python package; see the tests).

The encoders follow ggml's reference quantisers (``quantize_row_q8_0_ref`` and
friends), also in float32:

* Q8_0: ``d = max|x| / 127``, ``q = round_half_away(x / d)``.
* Q4_0: ``d = x_amax / -8`` (``x_amax`` the entry of largest magnitude, sign kept),
  ``q = min(15, trunc(x / d + 8.5))``.
* Q4_1: ``d = (max - min) / 15``, ``m = min``, ``q = min(15, trunc((x - m) / d + 0.5))``.

Reference: the GGUF/GGML format description in the ggml repository (docs/gguf.md,
ggml-common.h block structs).
"""
from __future__ import annotations

from enum import IntEnum
from typing import Any, Sequence

import ml_dtypes
import numpy as np

from tinyllm import plug
from tinyllm.errors import QuantizationError

__all__ = [
    "GGMLType", "BLOCK_SIZES", "SUPPORTED", "quantize", "dequantize", "dequantize_row_q8_0",
    "dequantize_row_q4_1", "row_nbytes", "tensor_nbytes", "to_ggml_type", "bits_per_weight", "quantize_q4_1",
]


class GGMLType(IntEnum):
    """The ``ggml_type`` codes stored in GGUF tensor infos (values fixed by the format)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39


_QK_K = 256  # super-block size of the k-quants
#: ggml_type -> (weights per block, bytes per block); from the format's block structs.
BLOCK_SIZES: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q8_1: (32, 40),
    GGMLType.Q2_K: (_QK_K, 84),
    GGMLType.Q3_K: (_QK_K, 110),
    GGMLType.Q4_K: (_QK_K, 144),
    GGMLType.Q5_K: (_QK_K, 176),
    GGMLType.Q6_K: (_QK_K, 210),
    GGMLType.Q8_K: (_QK_K, 292),
    GGMLType.IQ2_XXS: (_QK_K, 66),
    GGMLType.IQ2_XS: (_QK_K, 74),
    GGMLType.IQ3_XXS: (_QK_K, 98),
    GGMLType.IQ1_S: (_QK_K, 50),
    GGMLType.IQ4_NL: (32, 18),
    GGMLType.IQ3_S: (_QK_K, 110),
    GGMLType.IQ2_S: (_QK_K, 82),
    GGMLType.IQ4_XS: (_QK_K, 136),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (_QK_K, 56),
    GGMLType.BF16: (1, 2),
    GGMLType.TQ1_0: (_QK_K, 54),
    GGMLType.TQ2_0: (_QK_K, 66),
    GGMLType.MXFP4: (32, 17),
}

#: The types this module can dequantise (and quantise).
SUPPORTED = (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1)

# One record per block, little-endian as in the file.
_BLOCK_DTYPES = {
    GGMLType.Q8_0: np.dtype([("d", "<f2"), ("q", "i1", (32,))]),
    GGMLType.Q4_0: np.dtype([("d", "<f2"), ("q", "u1", (16,))]),
    GGMLType.Q4_1: np.dtype([("d", "<f2"), ("m", "<f2"), ("q", "u1", (16,))]),
}
_PLAIN_DTYPES = {
    GGMLType.F32: np.dtype("<f4"),
    GGMLType.F16: np.dtype("<f2"),
    GGMLType.BF16: np.dtype(ml_dtypes.bfloat16),
}

# Work on this many blocks at a time so the temporaries stay in the CPU cache.
_CHUNK_BLOCKS = 1 << 14



def to_ggml_type(t: Any) -> GGMLType:
    """``"Q4_1"``, ``3`` or ``GGMLType.Q4_1`` -> ``GGMLType.Q4_1`` (ValueError for unknown names/codes)."""
    if isinstance(t, GGMLType):
        return t
    if isinstance(t, str):
        try:
            return GGMLType[t.upper()]
        except KeyError:
            raise ValueError(f"unknown ggml type name {t!r}; known: {', '.join(m.name for m in GGMLType)}") from None
    try:
        return GGMLType(int(t))
    except (ValueError, TypeError):
        raise ValueError(f"unknown ggml type {t!r}") from None


def bits_per_weight(t: Any) -> float:
    """Storage cost of one weight in bits, block overhead included (Q4_1: 5.0)."""
    block, nbytes = BLOCK_SIZES[to_ggml_type(t)]
    return nbytes * 8 / block


def row_nbytes(t: Any, n: int) -> int:
    """Bytes taken by a row of ``n`` weights of type ``t`` (``n`` must be a multiple of the block size)."""
    gt = to_ggml_type(t)
    block, nbytes = BLOCK_SIZES[gt]
    if n % block:
        raise QuantizationError(f"a {gt.name} row must hold a multiple of {block} weights, got {n}")
    return n // block * nbytes


def tensor_nbytes(t: Any, shape: Sequence[int]) -> int:
    """Bytes taken by a tensor of NumPy ``shape`` (rows along the last axis) stored as type ``t``."""
    shape = tuple(int(s) for s in shape)
    if not shape:
        shape = (1,)
    rows = 1
    for s in shape[:-1]:
        rows *= s
    return rows * row_nbytes(t, shape[-1])


def _check_shape(gt: GGMLType, shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must be non-negative, got {shape}")
    if gt in _BLOCK_DTYPES and shape and shape[-1] % 32:
        raise QuantizationError(f"{gt.name} stores rows in blocks of 32 weights; the last dimension of shape {shape} is not a multiple of 32")
    return shape


def dequantize(raw: Any, ggml_type: Any, shape: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
    """Decode the bytes ``raw`` of a tensor of type ``ggml_type`` into a float32 array of NumPy ``shape``.

    ``raw`` is anything with the buffer protocol (a uint8 ndarray, a memmap view, bytes);
    it is read, never copied as a whole. ``out`` (float32, C-contiguous, ``shape``) is filled
    when given. Vectorised over all blocks; bit-identical to ggml's reference dequantisers.
    """
    gt = to_ggml_type(ggml_type)
    if gt not in SUPPORTED:
        raise QuantizationError(f"dequantising {gt.name} is not supported (supported: {', '.join(t.name for t in SUPPORTED)})")
    shape = _check_shape(gt, shape)
    n = 1
    for s in shape:
        n *= s
    buf = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw.reshape(-1).view(np.uint8)
    expected = tensor_nbytes(gt, shape) if n else 0
    if buf.size != expected:
        raise QuantizationError(f"{gt.name} tensor of shape {shape} needs {expected} bytes, got {buf.size}")
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.dtype != np.float32 or tuple(out.shape) != shape or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}, got {out.dtype} {out.shape}")
    if n == 0:
        return out
    flat = out.reshape(-1)
    if gt in _PLAIN_DTYPES:
        flat[...] = buf.view(_PLAIN_DTYPES[gt])
        return out
    dst = flat.reshape(-1, 32)  # (NB, 32)
    row_fn = _ROW_DEQUANTIZERS.get(gt)
    if row_fn is not None:  # Q8_0, Q4_1: through their plug points, a chunk of blocks at a time
        nbytes = BLOCK_SIZES[gt][1]
        for start in range(0, dst.shape[0], _CHUNK_BLOCKS):
            part = dst[start:start + _CHUNK_BLOCKS]  # (nb, 32)
            got = row_fn(buf[start * nbytes:(start + part.shape[0]) * nbytes])
            if not isinstance(got, np.ndarray) or got.dtype != np.float32 or got.size != part.size:
                raise QuantizationError(f"dequantize_row_{gt.name.lower()} returned {getattr(got, 'dtype', type(got).__name__)} "
                                        f"{getattr(got, 'shape', '')} for {part.shape[0]} blocks; expected float32 ({part.size},)")
            part[...] = got.reshape(part.shape)
        return out
    blocks = buf.view(_BLOCK_DTYPES[gt])  # (NB,) one record a block
    with np.errstate(invalid="ignore", over="ignore"):  # corrupt scales (inf * 0) give NaN, as in ggml
        for start in range(0, blocks.size, _CHUNK_BLOCKS):
            _dequantize_chunk(gt, blocks[start:start + _CHUNK_BLOCKS], dst[start:start + _CHUNK_BLOCKS])
    return out


def _decode_blocks(raw: Any, gt: GGMLType) -> np.ndarray:
    """Decode a 1-D run of ``gt`` blocks into a new (NB * 32,) float32 array."""
    buf = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw.reshape(-1).view(np.uint8)
    nbytes = BLOCK_SIZES[gt][1]
    if buf.size % nbytes:
        raise QuantizationError(f"{gt.name} data must be a whole number of {nbytes}-byte blocks, got {buf.size} bytes")
    blocks = buf.view(_BLOCK_DTYPES[gt])  # (NB,) one record a block
    dst = np.empty((blocks.size, 32), dtype=np.float32)  # (NB, 32)
    with np.errstate(invalid="ignore", over="ignore"):  # corrupt scales (inf * 0) give NaN, as in ggml
        _dequantize_chunk(gt, blocks, dst)
    return dst.reshape(-1)


@plug.point("dequantize_row_q8_0")
def dequantize_row_q8_0(raw: Any) -> np.ndarray:
    """Q8_0 blocks (uint8 (NB * 34,): float16 ``d``, 32 int8 ``q``) -> float32 (NB * 32,), ``w = d * q``
    (ggml's ``dequantize_row_q8_0``). Lesson 07's exercise of the same name plugs in here."""
    return _decode_blocks(raw, GGMLType.Q8_0)


@plug.point("dequantize_row_q4_1")
def dequantize_row_q4_1(raw: Any) -> np.ndarray:
    """Q4_1 blocks (uint8 (NB * 20,): float16 ``d``, float16 ``m``, 16 bytes of nibbles, weight ``j`` low and
    ``j + 16`` high) -> float32 (NB * 32,), ``w = d * q + m`` (ggml's ``dequantize_row_q4_1``)."""
    return _decode_blocks(raw, GGMLType.Q4_1)


_ROW_DEQUANTIZERS = {GGMLType.Q8_0: dequantize_row_q8_0, GGMLType.Q4_1: dequantize_row_q4_1}


def _dequantize_chunk(gt: GGMLType, blocks: np.ndarray, dst: np.ndarray) -> None:
    """Decode ``blocks`` (nb,) records into ``dst`` (nb, 32) float32 in place.

    Integer codes times a float32 scale give float32 (the codes convert exactly), so each
    ``np.multiply`` is one pass that unpacks, converts and scales.
    """
    d = blocks["d"].astype(np.float32)[:, None]  # (nb, 1)
    q = blocks["q"]  # Q8_0: (nb, 32) int8; Q4_x: (nb, 16) packed nibbles
    if gt == GGMLType.Q8_0:
        np.multiply(q, d, out=dst)  # w = d * q
        return
    lo = q & np.uint8(0x0F)  # (nb, 16) weights 0..15
    hi = q >> np.uint8(4)  # (nb, 16) weights 16..31
    if gt == GGMLType.Q4_0:
        lo = lo.view(np.int8) - np.int8(8)
        hi = hi.view(np.int8) - np.int8(8)
    np.multiply(lo, d, out=dst[:, :16])  # Q4_0: w = d * (q - 8)
    np.multiply(hi, d, out=dst[:, 16:])
    if gt == GGMLType.Q4_1:
        dst += blocks["m"].astype(np.float32)[:, None]  # w = d * q + m


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to nearest, ties away from zero (C ``roundf``), in the dtype of ``x``."""
    a = np.abs(x)
    f = np.floor(a)
    return np.copysign(f + np.floor((a - f) * np.float32(2)), x)


def quantize(w: Any, ggml_type: Any) -> np.ndarray:
    """Encode the float array ``w`` (rows along the last axis) as ``ggml_type``.

    Returns uint8 of shape ``(*w.shape[:-1], row_bytes)``: the blocks of each row,
    laid out exactly as in a GGUF file. The last dimension must be a multiple of 32
    for the block types; NaN/inf and empty tensors raise :class:`QuantizationError`.
    """
    gt = to_ggml_type(ggml_type)
    if gt not in SUPPORTED:
        raise QuantizationError(f"quantising to {gt.name} is not supported (supported: {', '.join(t.name for t in SUPPORTED)})")
    if not hasattr(w, "shape") or not hasattr(w, "dtype"):
        raise TypeError(f"w must be a NumPy array, got {type(w).__name__}")
    w = np.asarray(w)
    if not (np.issubdtype(w.dtype, np.floating) or w.dtype == ml_dtypes.bfloat16):
        raise TypeError(f"w must be a floating-point array, got dtype {w.dtype}")
    if w.size == 0 or w.ndim == 0:
        raise QuantizationError(f"cannot quantise an empty or 0-d tensor (shape {w.shape})")
    _check_shape(gt, w.shape)
    x = np.ascontiguousarray(w, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x.reshape(-1)))[0])
        raise QuantizationError(f"cannot quantise to {gt.name}: w holds NaN/inf (first at flat index {bad})")
    if gt in _PLAIN_DTYPES:
        return x.astype(_PLAIN_DTYPES[gt]).view(np.uint8).reshape(*w.shape[:-1], -1)
    if gt == GGMLType.Q4_1:
        return quantize_q4_1(x)
    blocks = x.reshape(-1, 32)  # (NB, 32)
    rec = np.empty(blocks.shape[0], dtype=_BLOCK_DTYPES[gt])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if gt == GGMLType.Q8_0:
            d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)  # (NB, 1)
            inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
            rec["q"] = _round_half_away(blocks * inv).astype(np.int8)
        else:                                                               # Q4_0
            imax = np.abs(blocks).argmax(axis=1)[:, None]  # (NB, 1)
            d = np.take_along_axis(blocks, imax, axis=1) / np.float32(-8)
            inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
            q = np.clip(np.trunc(blocks * inv + np.float32(8.5)), 0, 15).astype(np.uint8)  # (NB, 32)
            rec["q"] = q[:, :16] | (q[:, 16:] << np.uint8(4))
    rec["d"] = d[:, 0].astype(np.float16)
    return rec.view(np.uint8).reshape(*w.shape[:-1], -1)


@plug.point("quantize_q4_1")
def quantize_q4_1(x: np.ndarray) -> np.ndarray:
    """GGML's Q4_1 encoder (``quantize_row_q4_1_ref``): float32 ``x`` (..., K), K % 32 == 0 -> uint8 (..., K / 32 * 20).

    Per block of 32: ``m = min``, ``d = (max - min) / 15``, ``q = min(15, trunc((x - m) * (1 / d) + 0.5))`` in
    float32 (``1 / d`` taken as 0 when d = 0), stored as f16 ``d``, f16 ``m`` and 16 bytes holding weight ``j`` in
    the low nibble and weight ``j + 16`` in the high nibble of byte ``j``. :func:`quantize` calls it after checking x.
    """
    blocks = x.reshape(-1, 32)                                              # (NB, 32)
    rec = np.empty(blocks.shape[0], dtype=_BLOCK_DTYPES[GGMLType.Q4_1])
    lo = blocks.min(axis=1, keepdims=True)                                  # (NB, 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = (blocks.max(axis=1, keepdims=True) - lo) / np.float32(15)      # (NB, 1)
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
        q = np.clip(np.trunc((blocks - lo) * inv + np.float32(0.5)), 0, 15).astype(np.uint8)   # (NB, 32)
    rec["d"], rec["m"] = d[:, 0].astype(np.float16), lo[:, 0].astype(np.float16)
    rec["q"] = q[:, :16] | (q[:, 16:] << np.uint8(4))
    return rec.view(np.uint8).reshape(*x.shape[:-1], -1)
