"""Graded checks for exercises/06_parameter_storage.ipynb (optional lesson).

References: bfloat16 rounding from ``ml_dtypes.bfloat16`` (round to nearest, ties to
even), and safetensors headers written by ``tinyllm.io.safetensors.save_file`` (the
format: 8-byte little-endian header length, then the JSON header, then the data).
"""
from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np

from tinyllm.grading.core import Exercise, Fail, array, call, value
from tinyllm.io.safetensors import save_file

rng = np.random.default_rng(606)
EXERCISES: list[Exercise] = []

# --- float32 -> bfloat16 bits ------------------------------------------------------------------
ex = Exercise("to_bfloat16_bits", "float32 to bfloat16 by bit manipulation")
xb = np.concatenate([rng.standard_normal(200).astype(np.float32) * 100,
                     np.array([0.0, -0.0, 1.0, -2.5, 3.0e38, 1.0e-38], dtype=np.float32),
                     # exact ties: the lower 16 bits are 0x8000 -> round to the even upper half
                     np.array([0x3F808000, 0x3F818000, 0x40490000 | 0x8000], dtype=np.uint32).view(np.float32)])
want_bits = xb.astype(ml_dtypes.bfloat16).view(np.uint16)
trunc_bits = (xb.view(np.uint32) >> 16).astype(np.uint16)


def _judge_bf16(rs):
    got = array(rs[0], "to_bfloat16_bits(x)", shape=xb.shape)
    if got.dtype != np.uint16:
        raise Fail(f"to_bfloat16_bits(x) has dtype {got.dtype}, expected uint16 (the 16 bits of each bfloat16)")
    if np.array_equal(got, want_bits):
        return
    if np.array_equal(got, trunc_bits):
        raise Fail("the bits are truncated (x >> 16): round to nearest, adding 0x7FFF plus the lowest kept bit "
                   "before shifting (ties to even)")
    bad = np.flatnonzero(got != want_bits)
    ties = np.isin(bad, np.arange(len(xb) - 3, len(xb)))
    if ties.all():
        raise Fail(f"exact ties round the wrong way (e.g. {xb[bad[0]]!r}): ties go to the even result, so add "
                   "0x7FFF + ((bits >> 16) & 1)")
    i = int(bad[0])
    raise Fail(f"to_bfloat16_bits({xb[i]!r}) = 0x{int(got[i]):04X}, expected 0x{int(want_bits[i]):04X}")


ex.test("round to nearest even, as ml_dtypes.bfloat16", 3, [call(xb)], _judge_bf16)
EXERCISES.append(ex)

# --- safetensors header ------------------------------------------------------------------------
ex = Exercise("parse_safetensors_header", "Read the header of a safetensors file")


def _safetensors_bytes(tensors, metadata=None) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.safetensors"
        save_file(tensors, path, metadata=metadata)
        return path.read_bytes()


FILES = [
    _safetensors_bytes({"weight": rng.standard_normal((3, 4)).astype(np.float32),
                        "bias": np.zeros(4, dtype=np.float16)}, {"format": "np"}),
    _safetensors_bytes({"embedding": np.arange(12, dtype=np.int64).reshape(6, 2)}),
]


def _ref_header(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n].decode("utf-8")), 8 + n


def _judge_header(rs):
    for k, (data, r) in enumerate(zip(FILES, rs)):
        got = value(r, f"parse_safetensors_header(file {k})")
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Fail("parse_safetensors_header must return the tuple (header dict, data offset)")
        header, offset = got
        want_header, want_offset = _ref_header(data)
        if isinstance(offset, (bool, np.bool_)) or not isinstance(offset, (int, np.integer)):
            raise Fail(f"the data offset is {type(offset).__name__}, expected an int")
        if int(offset) == want_offset - 8:
            raise Fail(f"the data offset is {int(offset)}: the data starts after the 8 length bytes AND the header, 8 + N")
        if int(offset) != want_offset:
            raise Fail(f"the data offset is {int(offset)}, expected {want_offset} (8 + the header length N)")
        if not isinstance(header, dict) or header != want_header:
            raise Fail("the header differs from the JSON stored in the file: read N as little-endian "
                       "(struct.unpack('<Q', data[:8])), then json.loads(data[8:8 + N])")


ex.test("header and data offset of two files", 2, [call(f) for f in FILES], _judge_header)
EXERCISES.append(ex)
