"""Graded checks for exercises/07_loading_a_real_model.ipynb (optional lesson).

References: Q4_0 blocks made and decoded by ``tinyllm.compress.ggml_blocks`` (bit-exact
with the ``gguf`` package), and GGUF strings as the GGUF specification lays them out
(a little-endian uint64 length, then UTF-8 bytes without a terminator).
"""
from __future__ import annotations

import struct

import numpy as np

from tinyllm.compress import ggml_blocks
from tinyllm.grading.core import Exercise, Fail, array, call, close, value

rng = np.random.default_rng(707)
EXERCISES: list[Exercise] = []

# --- Q4_0 dequantisation -----------------------------------------------------------------------
ex = Exercise("dequantize_q4_0", "Dequantise GGML Q4_0 blocks")
w4 = rng.standard_normal(3 * 32).astype(np.float32)
raw4 = ggml_blocks.quantize(w4.reshape(1, -1), "Q4_0").reshape(-1)          # (3 * 18,) uint8
want4 = ggml_blocks.dequantize(raw4, "Q4_0", (w4.size,)).reshape(-1)


def _interleaved(raw):
    b = raw.reshape(-1, 18)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)                  # (NB, 1)
    qs = b[:, 2:]
    q = np.stack([qs & 0x0F, qs >> 4], axis=-1).reshape(-1, 32).astype(np.float32) - 8
    return (q * d).reshape(-1)


def _judge_q4(rs):
    x = array(rs[0], "dequantize_q4_0(raw)", floating=True)
    if x.shape != want4.shape:
        raise Fail(f"dequantize_q4_0(raw) has shape {x.shape}, expected {want4.shape}: 32 values per 18-byte block")
    if x.dtype != np.float32:
        raise Fail(f"dequantize_q4_0(raw) has dtype {x.dtype}, expected float32")
    if np.allclose(x, _interleaved(raw4), atol=1e-6) and not np.allclose(x, want4):
        raise Fail("the nibbles are interleaved: in Q4_0 the low nibbles of the 16 bytes are values 0-15 and the high "
                   "nibbles values 16-31")
    if np.allclose(x, want4 + 8 * np.repeat(raw4.reshape(-1, 18)[:, :2].copy().view(np.float16).astype(np.float32)[:, 0], 32),
                   atol=1e-5):
        raise Fail("the values are not centred: Q4_0 stores q + 8, so the value is (q - 8) * d")
    close(x, want4, "dequantize_q4_0(raw)", atol=1e-6, hint="block = 2 bytes float16 d + 16 bytes of nibbles; value = (q - 8) * d")


ex.test("three blocks, low nibbles first", 3, [call(raw4)], _judge_q4)
EXERCISES.append(ex)

# --- GGUF string -------------------------------------------------------------------------------
ex = Exercise("read_gguf_string", "Read a string from GGUF bytes")
STRINGS = ["llama", "tokenizer.ggml.model", "naïve 🙂", ""]
blob = b"GGUF" + b"".join(struct.pack("<Q", len(s.encode())) + s.encode() for s in STRINGS)
OFFSETS = []
_o = 4
for _s in STRINGS:
    OFFSETS.append(_o)
    _o += 8 + len(_s.encode())


def _judge_string(rs):
    for s, off, r in zip(STRINGS, OFFSETS, rs):
        got = value(r, f"read_gguf_string(data, {off})")
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Fail("read_gguf_string must return the tuple (string, new offset)")
        text, new = got
        want_new = off + 8 + len(s.encode())
        if text != s:
            if s == "naïve 🙂" and isinstance(text, str) and len(text) != len(s):
                raise Fail("the length counts bytes, not characters: decode data[start:start + n] with UTF-8")
            raise Fail(f"read_gguf_string(data, {off}) read {text!r}, expected {s!r}: the length is a little-endian "
                       "uint64 (struct.unpack_from('<Q', data, offset)), then that many UTF-8 bytes")
        if isinstance(new, (bool, np.bool_)) or not isinstance(new, (int, np.integer)) or int(new) != want_new:
            raise Fail(f"the new offset is {new!r}, expected {want_new}: offset + 8 + the string's length in bytes")


ex.test("ASCII, UTF-8 and empty strings, with the next offset", 2, [call(blob, o) for o in OFFSETS], _judge_string)
EXERCISES.append(ex)
