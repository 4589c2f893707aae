"""GGML block codecs (tinyllm.compress.ggml_blocks) against gguf.quants, bit for bit."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from tinyllm.compress import ggml_blocks as gb
from tinyllm.errors import QuantizationError

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as ref_dequantize  # noqa: E402
from gguf.quants import quantize as ref_quantize  # noqa: E402

TYPES = ["Q8_0", "Q4_0", "Q4_1", "F16", "BF16", "F32"]


def _weights(rng, shape=(48, 128)):
    w = rng.standard_normal(shape).astype(np.float32) * rng.uniform(1e-3, 4.0, (shape[0], 1)).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block (d = 0)
    w[1, :32] = 1.0  # a constant block (Q4_1: max == min)
    w[2, :32] = np.float32(0.5) * np.arange(32, dtype=np.float32) - 8  # exact ties for the rounding
    return w


def _as_bytes(a):
    return np.ascontiguousarray(a).view(np.uint8).reshape(a.shape[0], -1)


@pytest.mark.parametrize("name", TYPES)
def test_quantize_matches_gguf(name, rng):
    w = _weights(rng)
    ours = gb.quantize(w, name)
    theirs = _as_bytes(ref_quantize(w, gguf.GGMLQuantizationType[name]))
    assert ours.dtype == np.uint8 and ours.shape == (w.shape[0], gb.row_nbytes(name, w.shape[1]))
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("name", TYPES)
def test_dequantize_matches_gguf_on_encoded(name, rng):
    w = _weights(rng)
    q = gb.quantize(w, name)
    ours = gb.dequantize(q, name, w.shape)
    theirs = ref_dequantize(q, gguf.GGMLQuantizationType[name]).reshape(w.shape).astype(np.float32)
    assert ours.dtype == np.float32 and ours.shape == w.shape
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("name", TYPES)
def test_dequantize_matches_gguf_on_random_bytes(name, rng):
    shape = (7, 96)
    raw = rng.integers(0, 256, size=(shape[0], gb.row_nbytes(name, shape[1])), dtype=np.uint8)
    with np.errstate(all="ignore"):
        theirs = ref_dequantize(raw, gguf.GGMLQuantizationType[name]).reshape(shape).astype(np.float32)
    ours = gb.dequantize(raw, name, shape)
    np.testing.assert_array_equal(ours, theirs)  # NaNs (random fp16 scales) in the same places


@pytest.mark.parametrize("name,bound", [("Q8_0", 0.5 / 127), ("Q4_0", 0.5 / 8 * 2), ("Q4_1", 0.5 / 15 * 2)])
def test_round_trip_error_bound(name, bound, rng):
    """|w - deq(q(w))| <= about d/2 per block, relative to the block's range (fp16 scales add a little)."""
    w = rng.standard_normal((16, 256)).astype(np.float32)
    back = gb.dequantize(gb.quantize(w, name), name, w.shape)
    blocks, err = w.reshape(-1, 32), np.abs(back - w).reshape(-1, 32)
    scale = np.abs(blocks).max(axis=1) if name != "Q4_1" else np.ptp(blocks, axis=1)
    assert (err.max(axis=1) <= scale * bound * 1.15 + 1e-6).all()


def test_block_layout_by_hand():
    """Q4_1: bytes d | m | 16 packed bytes; byte j holds weight j (low nibble) and j + 16 (high)."""
    q = np.arange(32) % 16
    d, m = np.float16(0.5), np.float16(-1.0)
    packed = (q[:16] | (q[16:] << 4)).astype(np.uint8)
    raw = np.concatenate([np.array([d]).view(np.uint8), np.array([m]).view(np.uint8), packed])
    out = gb.dequantize(raw, "Q4_1", (32,))
    np.testing.assert_array_equal(out, np.float32(0.5) * q.astype(np.float32) - 1)
    assert gb.bits_per_weight("Q4_1") == 5.0 and gb.bits_per_weight("Q8_0") == 8.5


def test_bf16_is_ml_dtypes_rounding(rng):
    w = rng.standard_normal(64).astype(np.float32)
    np.testing.assert_array_equal(gb.quantize(w, "BF16").view(ml_dtypes.bfloat16), w.astype(ml_dtypes.bfloat16))


def test_type_names_and_codes():
    assert gb.to_ggml_type("q4_1") is gb.GGMLType.Q4_1
    assert gb.to_ggml_type(8) is gb.GGMLType.Q8_0
    with pytest.raises(ValueError, match="unknown ggml type"):
        gb.to_ggml_type("Q3_X")


def test_errors(rng):
    with pytest.raises(QuantizationError, match="multiple of 32"):
        gb.quantize(np.ones((2, 40), np.float32), "Q8_0")
    with pytest.raises(QuantizationError, match="NaN/inf"):
        gb.quantize(np.array([1.0, np.nan] * 16, np.float32), "Q4_1")
    with pytest.raises(QuantizationError, match="NaN/inf"):
        gb.quantize(np.array([1.0, np.inf] * 16, np.float32), "F16")
    with pytest.raises(QuantizationError, match="empty"):
        gb.quantize(np.zeros((0, 32), np.float32), "Q4_0")
    with pytest.raises(TypeError, match="floating"):
        gb.quantize(np.ones(32, np.int32), "Q8_0")
    with pytest.raises(QuantizationError, match="not supported"):
        gb.quantize(np.ones(256, np.float32), "Q4_K")
    with pytest.raises(QuantizationError, match="needs 68 bytes, got 67"):
        gb.dequantize(np.zeros(67, np.uint8), "Q8_0", (2, 32))
    with pytest.raises(QuantizationError, match="multiple of 32"):
        gb.dequantize(np.zeros(34, np.uint8), "Q8_0", (1, 33))
    with pytest.raises(QuantizationError, match="not supported"):
        gb.dequantize(np.zeros(144, np.uint8), "Q4_K", (256,))


def test_out_argument(rng):
    w = rng.standard_normal((4, 64)).astype(np.float32)
    q = gb.quantize(w, "Q8_0")
    out = np.empty((4, 64), np.float32)
    assert gb.dequantize(q, "Q8_0", w.shape, out=out) is out
    with pytest.raises(ValueError, match="out must be"):
        gb.dequantize(q, "Q8_0", w.shape, out=np.empty((4, 64), np.float64))
