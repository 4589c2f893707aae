"""Graded checks for exercises/06_parameter_storage.ipynb (optional lesson).

References: bfloat16 rounding from ``ml_dtypes.bfloat16`` (round to nearest, ties to
even), and safetensors headers written by ``tinyllm.io.safetensors.save_file`` (the
format: 8-byte little-endian header length, then the JSON header, then the data). A message names
a mistake only when the learner's result equals what that mistake computes on the same input.
"""
from __future__ import annotations

import json
import re
import struct
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np

from tinyllm.grading.core import CallError, Exercise, Fail, array, call, value
from tinyllm.io.safetensors import save_file

rng = np.random.default_rng(606)
EXERCISES: list[Exercise] = []

# --- float32 -> bfloat16 bits ------------------------------------------------------------------
ex = Exercise("to_bfloat16_bits", "float32 to bfloat16 by bit manipulation")
TIES = np.array([0x3F808000, 0x3F818000, 0x40490000 | 0x8000, 0xC0A18000], dtype=np.uint32).view(np.float32)
xb = np.concatenate([rng.standard_normal(200).astype(np.float32) * 100,
                     np.array([0.0, -0.0, 1.0, -2.5, 3.0e38, -3.3e38, 1.0e-38, 1.0e-40, -7.0e-42],
                              dtype=np.float32),
                     TIES])                                          # exact ties: lower 16 bits 0x8000
xb2 = (rng.standard_normal((3, 5, 7)) * 10.0 ** rng.integers(-20, 20, (3, 5, 7))).astype(np.float32)   # any shape


def _bf16_mistakes(x):
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return [
        ((bits >> 16).astype(np.uint16), "the bits are truncated (x >> 16): round to nearest, adding 0x7FFF plus the "
                                         "lowest kept bit before shifting (ties to even)"),
        (((bits + 0x8000) >> 16).astype(np.uint16), "exact ties round up (away from zero): ties go to the even result, "
                                                    "so add 0x7FFF + ((bits >> 16) & 1)"),
        (((bits + 0x7FFF) >> 16).astype(np.uint16), "exact ties round down: ties go to the even result, so add "
                                                    "0x7FFF + ((bits >> 16) & 1)"),
        ((bits + 0x7FFF + ((bits >> 16) & 1)).astype(np.uint16), "the result is the low 16 bits of the rounded value: "
                                                                 "shift right by 16 after rounding"),
        (x.astype(np.float32).astype(np.uint16), "the values were converted to integers (astype(np.uint16)): take "
                                                 "the bits with x.view(np.uint32) instead"),
    ]


def _judge_bf16(x, what):
    def judge(rs):
        got = array(rs[0], what)
        if got.shape != x.shape:
            raise Fail(f"{what} has shape {got.shape}, expected {x.shape}: keep the input's shape")
        if got.dtype != np.uint16:
            raise Fail(f"{what} has dtype {got.dtype}, expected uint16 (the 16 bits of each bfloat16)")
        want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
        if np.array_equal(got, want):
            return
        with np.errstate(all="ignore"):
            for wrong, why in _bf16_mistakes(x):
                if np.array_equal(got, wrong) and not np.array_equal(wrong, want):
                    raise Fail(f"{what}: {why}")
        bad = np.argwhere(got != want)[0]
        i = tuple(int(j) for j in bad)
        raise Fail(f"{what}: x{list(i)} = {x[i]!r} gives 0x{int(got[i]):04X}, expected 0x{int(want[i]):04X}")
    return judge


ex.test("round to nearest even, as ml_dtypes.bfloat16 (ties, subnormals, huge values)", 2, [call(xb)],
        _judge_bf16(xb, "to_bfloat16_bits(x)"))
ex.test("any shape, values from 1e-20 to 1e20", 1, [call(xb2)], _judge_bf16(xb2, "to_bfloat16_bits of a (3, 5, 7) array"))
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
    # a header longer than 255 and than 65535 bytes: its length needs more than one, and more than two, bytes
    _safetensors_bytes({f"model.layers.{i}.self_attn.q_proj.weight": np.zeros((1, 1), np.float32) for i in range(1500)},
                       {"note": "ünïcode"}),
]


def _ref_header(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n].decode("utf-8")), 8 + n


def _judge_header(rs):
    for k, (data, r) in enumerate(zip(FILES, rs)):
        want_header, want_offset = _ref_header(data)
        n = want_offset - 8
        what = f"parse_safetensors_header(file {k}, header of {n} bytes)"
        if isinstance(r, CallError) and r.type in ("JSONDecodeError", "UnicodeDecodeError"):
            at = re.search(r"\(char (\d+)\)|in position (\d+)", r.message)
            pos = int(next(g for g in at.groups() if g)) if at else None
            fix = "the length N is all 8 bytes, a little-endian uint64 (struct.unpack('<Q', data[:8])); decode data[8:8 + N]"
            if pos is not None and pos >= n:
                raise Fail(f"{what} raised {r.type} at byte {pos} of the text, past the {n}-byte header: json.loads "
                           f"read past the header; {fix}")
            if pos is not None and r.type == "JSONDecodeError":
                raise Fail(f"{what} raised {r.type} at byte {pos} of a {n}-byte header: the JSON ends early, the "
                           f"slice is too short; {fix}")
        got = value(r, what)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Fail("parse_safetensors_header must return the tuple (header dict, data offset)")
        header, offset = got
        if isinstance(offset, (bool, np.bool_)) or not isinstance(offset, (int, np.integer)):
            raise Fail(f"{what}: the data offset is {type(offset).__name__}, expected an int")
        if int(offset) == n:
            raise Fail(f"{what}: the data offset is {int(offset)}: the data starts after the 8 length bytes AND the "
                       "header, 8 + N")
        for wrong, why in ((8 + data[0], "the length is read from its first byte only"),
                           (8 + int.from_bytes(data[:2], "little"), "the length is read from its first two bytes only"),
                           (8 + int.from_bytes(data[:8], "big"), "the length is read big-endian")):
            if int(offset) == wrong != want_offset:
                raise Fail(f"{what}: the data offset is {int(offset)}, expected {want_offset}: {why}; it is a little-endian "
                           "uint64, struct.unpack('<Q', data[:8])")
        if int(offset) != want_offset:
            raise Fail(f"{what}: the data offset is {int(offset)}, expected {want_offset} (8 + the header length N)")
        if isinstance(header, dict) and header == {kk: vv for kk, vv in want_header.items() if kk != "__metadata__"} \
                and "__metadata__" in want_header:
            raise Fail(f"{what}: the header lacks its '__metadata__' entry: return the whole JSON object")
        if not isinstance(header, dict) or header != want_header:
            raise Fail(f"{what}: the header differs from the JSON stored in the file: json.loads(data[8:8 + N])")


ex.test("header and data offset of three files, one with a 100 kB header", 2, [call(f) for f in FILES], _judge_header)
EXERCISES.append(ex)
