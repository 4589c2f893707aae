"""Graded checks for exercises/07_loading_a_real_model.ipynb (optional lesson).

References: Q4_0 blocks made and decoded by ``tinyllm.compress.ggml_blocks`` (bit-exact
with the ``gguf`` package), and GGUF strings as the GGUF specification lays them out
(a little-endian uint64 length, then UTF-8 bytes without a terminator). A message names a mistake
only when the learner's result equals what that mistake computes on the same input.
"""
from __future__ import annotations

import struct

import numpy as np

from tinyllm.compress import ggml_blocks
from tinyllm.grading.core import Exercise, Fail, array, call, close, diagnose, value

rng = np.random.default_rng(707)
EXERCISES: list[Exercise] = []

# --- Q4_0 dequantisation -----------------------------------------------------------------------
ex = Exercise("dequantize_q4_0", "Dequantise GGML Q4_0 blocks")
w4 = rng.standard_normal(3 * 32).astype(np.float32)
w4[40] = -6.0                                                        # a block whose extreme is negative (nibble 0)
raw4 = ggml_blocks.quantize(w4.reshape(1, -1), "Q4_0").reshape(-1)          # (3 * 18,) uint8
w4b = (rng.standard_normal(7 * 32) * np.repeat(10.0 ** rng.integers(-3, 3, 7), 32)).astype(np.float32)
raw4b = ggml_blocks.quantize(w4b.reshape(1, -1), "Q4_0").reshape(-1)        # 7 blocks of very different scales


def _q4_mistakes(raw):
    b = raw.reshape(-1, 18)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)                  # (NB, 1)
    d_end = b[:, 16:].copy().view(np.float16).astype(np.float32)
    qs = b[:, 2:]
    lo, hi = (qs & 0x0F).astype(np.float32), (qs >> 4).astype(np.float32)
    with np.errstate(all="ignore"):
        return [
            ("the nibbles are interleaved: in Q4_0 the low nibbles of the 16 bytes are values 0-15 and the high "
             "nibbles values 16-31", ((np.stack([lo, hi], axis=-1).reshape(-1, 32) - 8) * d).reshape(-1)),
            ("the high nibbles come first: the low nibble of byte j is value j, the high nibble value j + 16",
             ((np.concatenate([hi, lo], axis=1) - 8) * d).reshape(-1)),
            ("the values are not centred: Q4_0 stores q + 8, so the value is (nibble - 8) * d",
             (np.concatenate([lo, hi], axis=1) * d).reshape(-1)),
            ("the nibbles are centred with 7 or 16: subtract 8, (nibble - 8) * d",
             ((np.concatenate([lo, hi], axis=1) - 7) * d).reshape(-1)),
            ("nibble - 8 wraps around in uint8 (3 - 8 = 251): convert the nibbles to float32 before subtracting 8",
             ((np.concatenate([qs & 0x0F, qs >> 4], axis=1) - np.uint8(8)).astype(np.float32) * d).reshape(-1)),
            ("the scale is missing: multiply (nibble - 8) by the block's float16 scale d",
             (np.concatenate([lo, hi], axis=1) - 8).reshape(-1)),
            ("the scale is read from the block's last 2 bytes: d is the first 2 bytes of each 18-byte block",
             ((np.concatenate([lo, hi], axis=1) - 8) * d_end).reshape(-1)),
        ]


def _judge_q4(raw, n, what):
    def judge(rs):
        x = array(rs[0], what, floating=True)
        want = ggml_blocks.dequantize(raw, "Q4_0", (n,)).reshape(-1)
        if x.shape != want.shape:
            if x.size == want.size:
                raise Fail(f"{what} has shape {x.shape}, expected {want.shape}: return a flat array (reshape(-1))")
            raise Fail(f"{what} has shape {x.shape}, expected {want.shape}: 32 values per 18-byte block")
        diagnose(x, want, _q4_mistakes(raw), atol=1e-6)
        if x.dtype != np.float32:
            raise Fail(f"{what} has dtype {x.dtype}, expected float32")
        close(x, want, what, atol=1e-6, hint="block = 2 bytes float16 d + 16 bytes of nibbles; value = (nibble - 8) * d")
    return judge


ex.test("three blocks, low nibbles first", 2, [call(raw4)], _judge_q4(raw4, w4.size, "dequantize_q4_0(raw)"))
ex.test("seven blocks of very different scales", 1, [call(raw4b)],
        _judge_q4(raw4b, w4b.size, "dequantize_q4_0 of 7 blocks"))
EXERCISES.append(ex)

# --- GGUF string -------------------------------------------------------------------------------
ex = Exercise("read_gguf_string", "Read a string from GGUF bytes")
STRINGS = ["llama", "tokenizer.ggml.model", "naïve 🙂", "", "x" * 300 + "é", "日本語", " \tpadded\n "]
blob = b"GGUF" + b"\x07" + b"".join(struct.pack("<Q", len(s.encode())) + s.encode() for s in STRINGS)   # odd offsets
OFFSETS = []
_o = 5
for _s in STRINGS:
    OFFSETS.append(_o)
    _o += 8 + len(_s.encode())


def _judge_string(rs):
    for s, off, r in zip(STRINGS, OFFSETS, rs):
        what = f"read_gguf_string(data, {off}) for {s[:20]!r}{'...' if len(s) > 20 else ''}"
        got = value(r, what)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Fail("read_gguf_string must return the tuple (string, new offset)")
        text, new = got
        raw = s.encode()
        want_new = off + 8 + len(raw)
        if repr(text) == "bytes":                       # a bytes object cannot travel back from the sandbox
            raise Fail(f"{what} returned bytes for the string: decode them, data[start:start + n].decode('utf-8')")
        if text != s:
            if isinstance(text, str) and text == raw.decode("latin-1"):
                raise Fail(f"{what} read {text[:20]!r}: the bytes are UTF-8, decode them with .decode('utf-8')")
            if isinstance(text, str) and len(raw) != len(s) and text == s[:len(text)] and len(text) < len(s):
                raise Fail(f"{what} read {text!r}, only the first {len(text)} characters: the length n counts bytes; "
                           "decode all n bytes, data[start:start + n].decode('utf-8')")
            if isinstance(text, str) and text == blob[off + 4:off + 4 + len(raw)].decode("utf-8", "replace"):
                raise Fail(f"{what} read {text[:20]!r}: the text starts after the 8 length bytes (a uint64), at offset + 8")
            raise Fail(f"{what} read {str(text)[:30]!r}, expected {s[:30]!r}: the length is a little-endian "
                       "uint64 (struct.unpack_from('<Q', data, offset)), then that many UTF-8 bytes")
        if isinstance(new, (bool, np.bool_)) or not isinstance(new, (int, np.integer)):
            raise Fail(f"{what}: the new offset is {new!r}, expected the int {want_new}")
        for wrong, why in ((off + len(raw), "it skips the string but not the 8 length bytes"),
                           (8 + len(raw), "it is relative to the string's start; add the offset"),
                           (off + 8 + len(s), "it counts characters, not bytes"),
                           (off + 8, "it points at the text, not after it")):
            if int(new) == wrong != want_new:
                raise Fail(f"{what}: the new offset is {int(new)}, expected {want_new}: {why} (offset + 8 + n)")
        if int(new) != want_new:
            raise Fail(f"{what}: the new offset is {int(new)}, expected {want_new}: offset + 8 + the string's length in bytes")


ex.test("ASCII, UTF-8, empty, padded and long strings at odd offsets, with the next offset", 2,
        [call(blob, o) for o in OFFSETS], _judge_string)
EXERCISES.append(ex)
