"""Round-to-nearest quantisation: formulas, granularities, padding rule, errors, QuantizedLinear."""
import numpy as np
import pytest

from tinyllm.compress.quantize import (
    QuantizedLinear,
    dequantize,
    fake_quantize,
    pack_int4,
    quantize,
    unpack_int4,
)
from tinyllm.errors import QuantizationError


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("gran", [("tensor", None), ("channel", None), ("group", 16)])
def test_error_within_half_step(xp, bits, symmetric, gran):
    rng = np.random.default_rng(bits)
    w = xp.asarray(rng.standard_normal((8, 64)).astype(np.float32))
    qt = quantize(w, bits, symmetric=symmetric, granularity=gran[0], group_size=gran[1])
    w_hat = dequantize(qt)
    assert w_hat.shape == w.shape and w_hat.dtype == np.float32
    step = xp.broadcast_to(qt.scale, qt.codes.shape).reshape(w.shape) if gran[0] != "tensor" else qt.scale
    # symmetric clips the most negative value at -qmax-1 (never reached) -> error <= step/2 everywhere
    assert bool((xp.abs(w_hat - w) <= 0.5 * step + 1e-6).all())
    if symmetric:
        assert qt.codes.dtype == np.int8 and int(xp.abs(qt.codes).max()) <= 2 ** (bits - 1) - 1
    else:
        assert qt.codes.dtype == np.uint8 and int(qt.codes.max()) <= 2 ** bits - 1


def test_symmetric_formula_by_hand():
    w = np.array([[-1.0, 0.6, 0.25, 1.0]], dtype=np.float32)
    qt = quantize(w, 4, symmetric=True, granularity="tensor")
    assert np.isclose(qt.scale.item(), 1.0 / 7)
    np.testing.assert_array_equal(qt.codes.ravel(), [-7, 4, 2, 7])  # 4.2 -> 4, 1.75 -> 2


def test_asymmetric_formula_and_exact_zero():
    w = np.array([[-0.3, 0.0, 1.2, 0.6]], dtype=np.float32)
    qt = quantize(w, 4, symmetric=False, granularity="channel")
    s = 1.5 / 15
    assert np.isclose(qt.scale.item(), s)
    assert qt.zero.item() == 3  # round(0.3 / 0.1)
    w_hat = dequantize(qt)
    assert w_hat[0, 1] == 0.0  # zero is exactly representable
    np.testing.assert_allclose(w_hat, w, atol=s / 2 + 1e-7)


def test_granularity_shapes_and_finer_is_better():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 128)).astype(np.float32) * rng.uniform(0.1, 5, (16, 1)).astype(np.float32)
    errs = {}
    for gran, gs, nscale in [("tensor", None, 1), ("channel", None, 16), ("group", 32, 64)]:
        qt = quantize(w, 4, granularity=gran, group_size=gs)
        assert qt.scale.size == nscale
        errs[gran] = float(np.abs(dequantize(qt) - w).mean())
    assert errs["group"] < errs["channel"] < errs["tensor"]


def test_group_not_dividing_raises_or_pads_by_edge():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 70)).astype(np.float32)
    with pytest.raises(QuantizationError, match="group_size=32"):
        quantize(w, 4, granularity="group", group_size=32)
    qt = quantize(w, 4, granularity="group", group_size=32, pad=True)
    assert qt.pad == 26 and qt.codes.shape == (3, 3, 32)
    w_hat = dequantize(qt)
    assert w_hat.shape == w.shape
    # the padded last group quantises its 6 real values exactly as a group of 6 would
    alone = fake_quantize(np.ascontiguousarray(w[:, 64:]), 4, granularity="channel")
    np.testing.assert_array_equal(w_hat[:, 64:], alone)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_rejected(bad):
    w = np.ones((4, 8), dtype=np.float32)
    w[2, 3] = bad
    with pytest.raises(QuantizationError, match=r"NaN/inf.*\(2, 3\)"):
        quantize(w, 8)


def test_empty_and_bad_args_rejected():
    with pytest.raises(QuantizationError, match="empty"):
        quantize(np.zeros((0, 8), np.float32), 8)
    with pytest.raises(ValueError, match="bits"):
        quantize(np.ones((2, 4), np.float32), 9)
    with pytest.raises(ValueError, match="group_size"):
        quantize(np.ones((2, 4), np.float32), 4, granularity="group", group_size=0)
    with pytest.raises(ValueError, match="granularity"):
        quantize(np.ones((2, 4), np.float32), 4, granularity="row")
    with pytest.raises(TypeError, match="floating"):
        quantize(np.ones((2, 4), np.int32), 4)


def test_all_zero_group_gives_zero():
    w = np.zeros((2, 32), np.float32)
    w[1] = np.linspace(-1, 1, 32)
    for sym in (True, False):
        w_hat = fake_quantize(w, 4, symmetric=sym, granularity="group", group_size=32)
        assert np.isfinite(w_hat).all() and (w_hat[0] == 0).all()


def test_pack_unpack_int4_roundtrip():
    rng = np.random.default_rng(2)
    s = rng.integers(-8, 8, (5, 64)).astype(np.int8)
    u = rng.integers(0, 16, (5, 64)).astype(np.uint8)
    assert pack_int4(s).shape == (5, 32) and pack_int4(s).dtype == np.uint8
    np.testing.assert_array_equal(unpack_int4(pack_int4(s), signed=True), s)
    np.testing.assert_array_equal(unpack_int4(pack_int4(u), signed=False), u)


@pytest.mark.parametrize("symmetric", [True, False])
def test_quantized_linear_matches_fake_quant_and_saves_memory(xp, symmetric):
    rng = np.random.default_rng(3)
    w = xp.asarray(rng.standard_normal((96, 40)).astype(np.float32))  # (IN, OUT)
    b = xp.asarray(rng.standard_normal(40).astype(np.float32))
    x = xp.asarray(rng.standard_normal((2, 5, 96)).astype(np.float32))
    layer = QuantizedLinear.from_weight(w, b, bits=4, symmetric=symmetric, group_size=32)
    w_hat = fake_quantize(w.T, 4, symmetric=symmetric, granularity="group", group_size=32).T
    y = layer.forward(x)
    assert y.shape == (2, 5, 40) and y.dtype == np.float32
    np.testing.assert_allclose(np.asarray(y.get() if hasattr(y, "get") else y),
                               np.asarray((x @ w_hat + b).get() if hasattr(x, "get") else x @ w_hat + b), rtol=1e-5, atol=1e-5)
    assert layer.nbytes < w.nbytes / 4  # 4-bit codes + fp32 scales vs fp32
    with pytest.raises(ValueError, match="last dimension 96"):
        layer.forward(x[..., :10])


def test_nbytes_accounting():
    w = np.ones((64, 256), np.float32)
    qt = quantize(w, 4, granularity="group", group_size=32)
    assert qt.nbytes == 64 * 256 // 2 + 2 * 64 * 8  # packed codes + fp16 scales
    assert qt.bits_per_weight == 4.5  # same as GGML Q4_0
