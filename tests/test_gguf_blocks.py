"""The GGML block codec (tinyllm.io.ggml) against gguf.quants, bit for bit.

Every type the codec supports is encoded and decoded on random weights, on weights built so that the
quantiser meets exact rounding ties (``x / d`` is a half-integer), on all-zero and constant blocks, and on
random bytes; the decoder runs on NumPy and, where a GPU is usable, on CuPy (the ``xp`` fixture).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from tinyllm.backend import to_numpy
from tinyllm.errors import QuantizationError
from tinyllm.io import ggml
from tinyllm.io.ggml import GGMLType

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as ref_dequantize  # noqa: E402
from gguf.quants import quantize as ref_quantize  # noqa: E402

TYPES = [t.name for t in ggml.SUPPORTED]
BLOCK_TYPES = ["Q8_0", "Q4_0", "Q4_1"]


def _weights(rng, shape=(48, 128)):
    """Random rows of very different scales, plus special blocks: all zero, constant (+ and -), one spike."""
    w = rng.standard_normal(shape).astype(np.float32) * rng.uniform(1e-3, 4.0, (shape[0], 1)).astype(np.float32)
    w[0, :32] = 0.0                      # an all-zero block (d = 0)
    w[1, :32] = 1.0                      # a constant block (Q4_1: max == min, d = 0)
    w[1, 32:64] = -0.3                   # a negative constant block (Q4_0: d > 0)
    w[2, :32] = 0.0
    w[2, 7] = -5.0                       # one spike in a block of zeros
    return w


def _ties(name):
    """(16, 64) weights for which the encoder of ``name`` meets exact ties: ``x / d`` (Q8_0, Q4_0) or
    ``(x - m) / d`` (Q4_1) is k + 1/2, with ``d`` a power of two so every step is exact in float32."""
    rows = []
    for e in range(-6, 10):                                     # d = 2^e for every row's blocks
        d = np.float32(2.0) ** e
        if name == "Q8_0":                                      # d = max|x| / 127: pin max|x| = 127 d
            block1 = np.concatenate([np.arange(-62.5, 58, 4.0), [127.0]])          # 31 half-integers, both signs
            block2 = np.concatenate([-np.arange(0.5, 31), [-127.0]])
        elif name == "Q4_0":                                    # d = x_amax / -8; code = round(x / d + 8)
            block1 = np.concatenate([np.resize(np.arange(-7.5, 8), 31), [-8.0]])  # x_amax = -8: d = +1
            block2 = np.concatenate([np.resize(np.arange(7.5, -8, -1), 31), [8.0]])  # x_amax = +8: d = -1
        else:                                                   # Q4_1: d = (max - min) / 15, m = min
            block1 = np.concatenate([[-8.0, 7.0], np.resize(np.arange(-7.5, 7), 30)])  # (x - m) / d = x + 8
            block2 = np.concatenate([[0.0, 15.0], np.resize(np.arange(0.5, 15), 30)])
        assert block1.size == block2.size == 32
        rows.append(np.concatenate([block1, block2]) * d)
    return np.asarray(rows, dtype=np.float32)


def _as_bytes(a):
    return np.ascontiguousarray(a).view(np.uint8).reshape(a.shape[0], -1)


def _half_even_q8_0(w):
    """Q8_0 with np.rint (ties to even): what the codec must NOT compute."""
    b = w.reshape(-1, 32)
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    return np.concatenate([d.astype(np.float16).view(np.uint8), np.rint(b * inv).astype(np.int8).view(np.uint8)], axis=1)


@pytest.mark.parametrize("data", ["random", "ties"])
@pytest.mark.parametrize("name", TYPES)
def test_quantize_matches_gguf(name, data, rng):
    w = _weights(rng) if data == "random" or name not in BLOCK_TYPES else _ties(name)
    ours = ggml.quantize(w, name)
    theirs = _as_bytes(ref_quantize(w, gguf.GGMLQuantizationType[name]))
    assert ours.dtype == np.uint8 and ours.shape == (w.shape[0], ggml.row_nbytes(name, w.shape[1]))
    np.testing.assert_array_equal(ours, theirs)
    assert ggml.quantize(w, GGMLType[name]).tobytes() == ours.tobytes()          # the enum and its name agree


def test_tie_data_has_ties_that_half_to_even_rounds_differently():
    """The tie inputs above do hold ties: rounding half to even would give other Q8_0 codes."""
    w = _ties("Q8_0")
    assert not np.array_equal(_half_even_q8_0(w), ggml.quantize(w, "Q8_0").reshape(-1, 34))
    q = ggml.quantize(w[6:7], "Q8_0").reshape(-1, 34)[:, 2:].view(np.int8)      # d = 1 exactly in row 6
    assert q[0, 0] == -63 and q[0, 15] == -3 and q[0, 16] == 2 and q[1, 0] == -1   # -62.5, -2.5, 1.5, -0.5: away from 0


@pytest.mark.parametrize("data", ["random", "ties"])
@pytest.mark.parametrize("name", TYPES)
def test_dequantize_matches_gguf_on_encoded(xp, name, data, rng):
    w = _weights(rng) if data == "random" or name not in BLOCK_TYPES else _ties(name)
    q = ggml.quantize(w, name)
    ours = ggml.dequantize(xp.asarray(q), name, w.shape)
    theirs = ref_dequantize(q, gguf.GGMLQuantizationType[name]).reshape(w.shape).astype(np.float32)
    assert type(ours) is type(xp.asarray(q)) and ours.dtype == np.float32 and ours.shape == w.shape
    np.testing.assert_array_equal(to_numpy(ours).view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("name", TYPES)
def test_dequantize_matches_gguf_on_random_bytes(xp, name, rng):
    shape = (7, 96)
    raw = rng.integers(0, 256, size=(shape[0], ggml.row_nbytes(name, shape[1])), dtype=np.uint8)
    with np.errstate(all="ignore"):
        theirs = ref_dequantize(raw, gguf.GGMLQuantizationType[name]).reshape(shape).astype(np.float32)
    ours = to_numpy(ggml.dequantize(xp.asarray(raw), name, shape))
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))   # NaN payloads included


@pytest.mark.parametrize("name", ["Q8_0", "Q4_1"])
def test_row_plug_points_agree_with_dequantize(xp, name, rng):
    w = _weights(rng, (4, 64))
    raw = xp.asarray(ggml.quantize(w, name).reshape(-1))
    row = getattr(ggml, f"dequantize_row_{name.lower()}")(raw)
    assert type(row) is type(raw) and row.shape == (w.size,)
    np.testing.assert_array_equal(to_numpy(row).reshape(w.shape), to_numpy(ggml.dequantize(raw, name, w.shape)))


def test_quantize_keeps_a_cupy_array_on_its_device(xp, rng):
    w = _weights(rng, (4, 64))
    blocks = ggml.quantize(xp.asarray(w), "Q4_1")
    assert type(blocks) is type(xp.asarray(w))
    np.testing.assert_array_equal(to_numpy(blocks), ggml.quantize(w, "Q4_1"))


@pytest.mark.parametrize("name,bound", [("Q8_0", 0.5 / 127), ("Q4_0", 0.5 / 8 * 2), ("Q4_1", 0.5 / 15 * 2)])
def test_round_trip_error_bound(name, bound, rng):
    """|w - deq(q(w))| <= about d/2 per block, relative to the block's range (fp16 scales add a little)."""
    w = rng.standard_normal((16, 256)).astype(np.float32)
    back = ggml.dequantize(ggml.quantize(w, name), name, w.shape)
    blocks, err = w.reshape(-1, 32), np.abs(back - w).reshape(-1, 32)
    scale = np.abs(blocks).max(axis=1) if name != "Q4_1" else np.ptp(blocks, axis=1)
    assert (err.max(axis=1) <= scale * bound * 1.15 + 1e-6).all()


def test_block_layout_by_hand():
    """Q4_1: bytes d | m | 16 packed bytes; byte j holds weight j (low nibble) and j + 16 (high)."""
    q = np.arange(32) % 16
    d, m = np.float16(0.5), np.float16(-1.0)
    packed = (q[:16] | (q[16:] << 4)).astype(np.uint8)
    raw = np.concatenate([np.array([d]).view(np.uint8), np.array([m]).view(np.uint8), packed])
    out = ggml.dequantize(raw, "Q4_1", (32,))
    np.testing.assert_array_equal(out, np.float32(0.5) * q.astype(np.float32) - 1)
    assert ggml.bits_per_weight("Q4_1") == 5.0 and ggml.bits_per_weight("Q8_0") == 8.5


def test_round_half_away():
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4999998, -0.49999997, 3.0], np.float32)
    np.testing.assert_array_equal(ggml.round_half_away(x), [-3, -2, -1, 1, 2, 3, 2, -0.0, 3])


def test_bf16_is_ml_dtypes_rounding(rng):
    w = rng.standard_normal(64).astype(np.float32)
    np.testing.assert_array_equal(ggml.quantize(w, "BF16").view(ml_dtypes.bfloat16), w.astype(ml_dtypes.bfloat16))


def test_f32_quantize_copies(rng):
    w = rng.standard_normal((2, 32)).astype(np.float32)
    raw = ggml.quantize(w, "F32")
    raw[...] = 0
    assert w.any()


def test_type_names_and_codes():
    assert ggml.to_ggml_type("q4_1") is GGMLType.Q4_1
    assert ggml.to_ggml_type(8) is GGMLType.Q8_0
    assert ggml.to_ggml_type(np.uint32(3)) is GGMLType.Q4_1
    for bad in ("Q3_X", 5, 8.0, None):
        with pytest.raises(QuantizationError, match="unknown ggml type"):
            ggml.to_ggml_type(bad)


def test_errors(rng):
    with pytest.raises(QuantizationError, match="multiple of 32"):
        ggml.quantize(np.ones((2, 40), np.float32), "Q8_0")
    with pytest.raises(QuantizationError, match="NaN/inf"):
        ggml.quantize(np.array([1.0, np.nan] * 16, np.float32), "Q4_1")
    with pytest.raises(QuantizationError, match="NaN/inf"):
        ggml.quantize(np.array([1.0, np.inf] * 16, np.float32), "F16")
    with pytest.raises(QuantizationError, match="empty"):
        ggml.quantize(np.zeros((0, 32), np.float32), "Q4_0")
    with pytest.raises(TypeError, match="floating"):
        ggml.quantize(np.ones(32, np.int32), "Q8_0")
    with pytest.raises(TypeError, match="NumPy or CuPy array"):
        ggml.quantize([1.0] * 32, "Q8_0")
    with pytest.raises(QuantizationError, match="not supported"):
        ggml.quantize(np.ones(256, np.float32), "Q4_K")
    with pytest.raises(QuantizationError, match="needs 68 bytes, got 67"):
        ggml.dequantize(np.zeros(67, np.uint8), "Q8_0", (2, 32))
    with pytest.raises(QuantizationError, match="multiple of 32"):
        ggml.dequantize(np.zeros(34, np.uint8), "Q8_0", (1, 33))
    for shape in (None, "ab", (1.0, 32), [np.float32(32)]):             # not ints: no silent truncation
        with pytest.raises(TypeError, match="shape must be an int or a sequence of ints"):
            ggml.dequantize(np.zeros(34, np.uint8), "Q8_0", shape)
    with pytest.raises(ValueError, match="negative sizes"):
        ggml.dequantize(np.zeros(34, np.uint8), "Q8_0", (-1, 32))
    with pytest.raises(QuantizationError, match="not supported"):
        ggml.dequantize(np.zeros(144, np.uint8), "Q4_K", (256,))
    with pytest.raises(QuantizationError, match="whole number of 20-byte blocks"):
        ggml.dequantize_row_q4_1(np.zeros(30, np.uint8))


def test_out_argument(rng):
    w = rng.standard_normal((4, 64)).astype(np.float32)
    q = ggml.quantize(w, "Q8_0")
    out = np.empty((4, 64), np.float32)
    assert ggml.dequantize(q, "Q8_0", w.shape, out=out) is out
    np.testing.assert_array_equal(out, ggml.dequantize(q, "Q8_0", w.shape))
    with pytest.raises(ValueError, match="out must be"):
        ggml.dequantize(q, "Q8_0", w.shape, out=np.empty((4, 64), np.float64))
