"""The GGML block codec: one home for the tensor encodings of GGUF files (Q8_0, Q4_0, Q4_1, F32, F16, BF16).

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

Everything that reads or writes these bytes uses this module: the GGUF reader
(:mod:`tinyllm.io.gguf`), the compression lesson, and the quantised matrix
product of :mod:`tinyllm.kernels` (its NumPy reference and its quantiser). Types are
named by the :class:`GGMLType` enum; where a function takes a type, the name as a
string (``"Q4_1"``) or the file's integer code works too (:func:`to_ggml_type`).

**Decoding** (:func:`dequantize`) works on NumPy and CuPy arrays alike (the array
module is that of ``raw``): the bytes are viewed as a table with one row per block,
the scales read as fp16, the nibbles unpacked with shifts and masks, and each block
scaled in float32. The arithmetic (float32 ``d * q`` then ``+ m``) is that of ggml's
reference C code, so results are bit-identical to it and to the ``gguf`` Python
package (see tests/test_gguf_blocks.py).

**Encoding** (:func:`quantize`) follows ggml's reference quantisers
(``quantize_row_q8_0_ref`` and friends), in float32, with one rounding rule,
round half away from zero (C's ``roundf``):

* Q8_0: ``d = max|x| / 127``, ``q = round_half_away(x / d)``.
* Q4_0: ``d = x_amax / -8`` (``x_amax`` the entry of largest magnitude, sign kept),
  ``q = min(15, trunc(x / d + 8.5))`` (``x / d + 8 >= 0``, so this is ``round_half_away`` too).
* Q4_1: ``d = (max - min) / 15``, ``m = min``, ``q = min(15, trunc((x - m) / d + 0.5))``
  (``(x - m) / d >= 0``: again round half away from zero).

``1 / d`` is taken as 0 when ``d = 0`` (an all-zero or constant block).

Reference: the GGUF/GGML format description in the ggml repository (docs/gguf.md,
ggml-common.h block structs, ggml-quants.c reference quantisers).
"""
from __future__ import annotations

import operator
from enum import IntEnum
from typing import Any, Sequence

import ml_dtypes
import numpy as np

from tinyllm import plug
from tinyllm.backend import get_array_module, is_gpu_array, to_numpy
from tinyllm.errors import QuantizationError
from tinyllm.shapes import as_shape

__all__ = [
    "GGMLType", "BLOCK_SIZES", "SUPPORTED", "quantize", "dequantize", "dequantize_row_q8_0",
    "dequantize_row_q4_1", "row_nbytes", "tensor_nbytes", "to_ggml_type", "bits_per_weight", "quantize_q4_1",
    "round_half_away",
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

#: The types this codec can decode and encode.
SUPPORTED = (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1)
_BLOCK_TYPES = (GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1)
_QK = BLOCK_SIZES[GGMLType.Q8_0][0]  # 32 weights a block, the same for the three block types

# NumPy decodes this many blocks at a time, so the temporaries stay in the CPU cache (CuPy: all at once).
_CHUNK_BLOCKS = 1 << 14


def to_ggml_type(t: Any) -> GGMLType:
    """The one converter of type names: ``"Q4_1"`` (any case), ``3`` or ``GGMLType.Q4_1`` -> ``GGMLType.Q4_1``."""
    if isinstance(t, GGMLType):
        return t
    if isinstance(t, str):
        try:
            return GGMLType[t.upper()]
        except KeyError:
            raise QuantizationError(f"unknown ggml type name {t!r}; known: {', '.join(m.name for m in GGMLType)}") from None
    try:
        return GGMLType(operator.index(t))
    except (ValueError, TypeError):
        raise QuantizationError(f"unknown ggml type {t!r}; give a GGMLType, its name (\"Q4_1\") or its code (3)") from None


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
    shape = as_shape(shape)
    if gt in _BLOCK_TYPES and shape and shape[-1] % _QK:
        raise QuantizationError(f"{gt.name} stores rows in blocks of 32 weights; the last dimension of shape {shape} is not a multiple of 32")
    return shape


def _supported(gt: GGMLType, what: str) -> GGMLType:
    if gt not in SUPPORTED:
        raise QuantizationError(f"{what} {gt.name} is not supported (supported: {', '.join(t.name for t in SUPPORTED)})")
    return gt


def _byte_view(raw: Any):
    """``raw`` (a NumPy or CuPy array, or anything with the buffer protocol) as flat uint8, and its array module."""
    if is_gpu_array(raw):
        return raw.reshape(-1).view(np.uint8), get_array_module(raw)
    if isinstance(raw, np.ndarray):
        return raw.reshape(-1).view(np.uint8), np
    return np.frombuffer(raw, dtype=np.uint8), np


def _f16(xp, two_bytes):
    """(nb, 2) uint8 little-endian fp16 bytes -> (nb, 1) float32 (exact)."""
    return xp.ascontiguousarray(two_bytes).view(np.float16).astype(np.float32)


def _decode_blocks(xp, b, gt: GGMLType, dst) -> None:
    """Decode ``b`` (nb, bytes) uint8, one block a row, into ``dst`` (nb, 32) float32 in place.

    Integer codes times a float32 scale give float32 (the codes convert exactly), so each
    multiply is one pass that unpacks, converts and scales.
    """
    d = _f16(xp, b[:, 0:2])                                  # (nb, 1)
    if gt == GGMLType.Q8_0:
        xp.multiply(b[:, 2:].view(np.int8), d, out=dst)      # w = d * q
        return
    qs = b[:, 4:] if gt == GGMLType.Q4_1 else b[:, 2:]       # (nb, 16) packed nibbles
    lo = qs & np.uint8(0x0F)                                 # (nb, 16) weights 0..15
    hi = qs >> np.uint8(4)                                   # (nb, 16) weights 16..31
    if gt == GGMLType.Q4_0:
        lo = lo.view(np.int8) - np.int8(8)
        hi = hi.view(np.int8) - np.int8(8)
    xp.multiply(lo, d, out=dst[:, :16])                      # Q4_0: w = d * (q - 8)
    xp.multiply(hi, d, out=dst[:, 16:])
    if gt == GGMLType.Q4_1:
        dst += _f16(xp, b[:, 2:4])                           # w = d * q + m


def _decode_run(raw: Any, gt: GGMLType):
    """Decode a 1-D run of ``gt`` blocks into a new (NB * 32,) float32 array on ``raw``'s device."""
    buf, xp = _byte_view(raw)
    nbytes = BLOCK_SIZES[gt][1]
    if buf.size % nbytes:
        raise QuantizationError(f"{gt.name} data must be a whole number of {nbytes}-byte blocks, got {buf.size} bytes")
    b = buf.reshape(-1, nbytes)                              # (NB, bytes) one row a block
    dst = xp.empty((b.shape[0], _QK), dtype=np.float32)      # (NB, 32)
    with np.errstate(invalid="ignore", over="ignore"):       # corrupt scales (inf * 0) give NaN, as in ggml
        _decode_blocks(xp, b, gt, dst)
    return dst.reshape(-1)


@plug.point("dequantize_row_q8_0")
def dequantize_row_q8_0(raw: Any) -> np.ndarray:
    """Q8_0 blocks (uint8 (NB * 34,): float16 ``d``, 32 int8 ``q``) -> float32 (NB * 32,), ``w = d * q``
    (ggml's ``dequantize_row_q8_0``). Lesson 07's exercise of the same name plugs in here."""
    return _decode_run(raw, GGMLType.Q8_0)


@plug.point("dequantize_row_q4_1")
def dequantize_row_q4_1(raw: Any) -> np.ndarray:
    """Q4_1 blocks (uint8 (NB * 20,): float16 ``d``, float16 ``m``, 16 bytes of nibbles, weight ``j`` low and
    ``j + 16`` high) -> float32 (NB * 32,), ``w = d * q + m`` (ggml's ``dequantize_row_q4_1``)."""
    return _decode_run(raw, GGMLType.Q4_1)


_ROW_DEQUANTIZERS = {GGMLType.Q8_0: dequantize_row_q8_0, GGMLType.Q4_1: dequantize_row_q4_1}


def dequantize(raw: Any, ggml_type: Any, shape: Sequence[int], out: Any = None):
    """Decode the bytes ``raw`` of a tensor of type ``ggml_type`` into a float32 array of NumPy ``shape``.

    ``raw`` is a NumPy or CuPy array (any dtype: its bytes are read) or anything with the buffer
    protocol (a memmap view, bytes); the result lives on ``raw``'s device, and ``raw`` is read,
    never copied as a whole. ``out`` (float32, C-contiguous, ``shape``, same device) is filled
    when given. Vectorised over all blocks; bit-identical to ggml's reference dequantisers.
    """
    gt = _supported(to_ggml_type(ggml_type), "dequantising")
    shape = _check_shape(gt, shape)
    n = 1
    for s in shape:
        n *= s
    buf, xp = _byte_view(raw)
    expected = tensor_nbytes(gt, shape) if n else 0
    if buf.size != expected:
        raise QuantizationError(f"{gt.name} tensor of shape {shape} needs {expected} bytes, got {buf.size}")
    if out is None:
        out = xp.empty(shape, dtype=np.float32)
    elif (get_array_module(out) is not xp or out.dtype != np.float32 or tuple(out.shape) != shape
          or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous float32 {xp.__name__} array of shape {shape}, "
                         f"got {type(out).__module__}.{type(out).__name__} {getattr(out, 'dtype', '')} {getattr(out, 'shape', '')}")
    if n == 0:
        return out
    flat = out.reshape(-1)
    if gt == GGMLType.F32:
        flat[...] = buf.view(np.float32)
        return out
    if gt == GGMLType.F16:
        flat[...] = buf.view(np.float16)
        return out
    if gt == GGMLType.BF16:                                  # bfloat16 is the top half of a float32's bits
        flat.view(np.uint32)[...] = buf.view(np.uint16).astype(np.uint32) << np.uint32(16)
        return out
    dst = flat.reshape(-1, _QK)                              # (NB, 32)
    nbytes = BLOCK_SIZES[gt][1]
    chunk = _CHUNK_BLOCKS if xp is np else dst.shape[0]      # the GPU takes the whole tensor at once
    row_fn = _ROW_DEQUANTIZERS.get(gt)
    for start in range(0, dst.shape[0], chunk):
        part = dst[start:start + chunk]                      # (nb, 32)
        run = buf[start * nbytes:(start + part.shape[0]) * nbytes]
        if row_fn is None:                                   # Q4_0
            with np.errstate(invalid="ignore", over="ignore"):
                _decode_blocks(xp, run.reshape(-1, nbytes), gt, part)
            continue
        got = row_fn(run)                                    # Q8_0, Q4_1: through their plug points
        if not isinstance(got, xp.ndarray) or got.dtype != np.float32 or got.size != part.size:
            raise QuantizationError(f"dequantize_row_{gt.name.lower()} returned {getattr(got, 'dtype', type(got).__name__)} "
                                    f"{getattr(got, 'shape', '')} for {part.shape[0]} blocks; expected float32 ({part.size},)")
        part[...] = got.reshape(part.shape)
    return out


def round_half_away(x):
    """Round to nearest, ties away from zero (C ``roundf``, ggml's rounding), in the dtype of ``x``."""
    xp = get_array_module(x)
    a = xp.abs(x)
    f = xp.floor(a)
    return xp.copysign(f + xp.floor((a - f) * np.float32(2)), x)


def quantize(w: Any, ggml_type: Any):
    """Encode the float array ``w`` (rows along the last axis) as ``ggml_type``.

    Returns uint8 of shape ``(*w.shape[:-1], row_bytes)``: the blocks of each row,
    laid out exactly as in a GGUF file. The last dimension must be a multiple of 32
    for the block types; NaN/inf and empty tensors raise :class:`QuantizationError`.
    A CuPy ``w`` is encoded on the CPU and the blocks are returned on its GPU.
    """
    gt = _supported(to_ggml_type(ggml_type), "quantising to")
    if not hasattr(w, "shape") or not hasattr(w, "dtype"):
        raise TypeError(f"w must be a NumPy or CuPy array, got {type(w).__name__}")
    if is_gpu_array(w):
        return get_array_module(w).asarray(quantize(to_numpy(w), gt))
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
    if gt == GGMLType.F32:
        return x.astype(np.float32).view(np.uint8).reshape(*w.shape[:-1], -1)     # a copy, never a view of w
    if gt == GGMLType.F16:
        return x.astype(np.float16).view(np.uint8).reshape(*w.shape[:-1], -1)
    if gt == GGMLType.BF16:                                  # round to nearest even, as ml_dtypes and gguf do
        return x.astype(ml_dtypes.bfloat16).view(np.uint8).reshape(*w.shape[:-1], -1)
    if gt == GGMLType.Q4_1:
        return quantize_q4_1(x)
    blocks = x.reshape(-1, _QK)                              # (NB, 32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if gt == GGMLType.Q8_0:
            d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)                 # (NB, 1)
            inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
            codes = round_half_away(blocks * inv).astype(np.int8).view(np.uint8)            # (NB, 32)
        else:                                                                               # Q4_0
            imax = np.abs(blocks).argmax(axis=1)[:, None]                                   # (NB, 1)
            d = np.take_along_axis(blocks, imax, axis=1) / np.float32(-8)
            inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
            q = np.clip(np.trunc(blocks * inv + np.float32(8.5)), 0, 15).astype(np.uint8)  # (NB, 32)
            codes = q[:, :16] | (q[:, 16:] << np.uint8(4))                                  # (NB, 16)
    parts = [d.astype(np.float16).view(np.uint8), codes]                                    # d | q
    return np.concatenate(parts, axis=1).reshape(*w.shape[:-1], -1)


@plug.point("quantize_q4_1")
def quantize_q4_1(x: np.ndarray) -> np.ndarray:
    """GGML's Q4_1 encoder (``quantize_row_q4_1_ref``): float32 ``x`` (..., K), K % 32 == 0 -> uint8 (..., K / 32 * 20).

    Per block of 32: ``m = min``, ``d = (max - min) / 15``, ``q = min(15, trunc((x - m) * (1 / d) + 0.5))`` in
    float32 (``1 / d`` taken as 0 when d = 0), stored as f16 ``d``, f16 ``m`` and 16 bytes holding weight ``j`` in
    the low nibble and weight ``j + 16`` in the high nibble of byte ``j``. :func:`quantize` calls it after checking x.
    """
    blocks = x.reshape(-1, _QK)                                             # (NB, 32)
    lo = blocks.min(axis=1, keepdims=True)                                  # (NB, 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = (blocks.max(axis=1, keepdims=True) - lo) / np.float32(15)      # (NB, 1)
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
        q = np.clip(np.trunc((blocks - lo) * inv + np.float32(0.5)), 0, 15).astype(np.uint8)   # (NB, 32)
    parts = [d.astype(np.float16).view(np.uint8), lo.astype(np.float16).view(np.uint8),
             q[:, :16] | (q[:, 16:] << np.uint8(4))]                       # d | m | 16 bytes of nibbles
    return np.concatenate(parts, axis=1).reshape(*x.shape[:-1], -1)
