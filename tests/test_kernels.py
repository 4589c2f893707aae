"""tinyllm.kernels: each function equals its reference on every backend.

On NumPy this checks the reference against tinyllm.nn.functional / an independent
complex-number rotation / the GGML codec tinyllm.io.ggml (the Llama model calls these functions:
tests/test_llama_gpu_paths.py); on CuPy (when a GPU is usable) it checks the fused kernels against
the same NumPy results.
"""
from __future__ import annotations

import numpy as np
import pytest

from tinyllm import kernels
from tinyllm.backend import to_numpy
from tinyllm.errors import QuantizationError
from tinyllm.io import ggml
from tinyllm.nn import functional as F

SHAPES = [(7,), (3, 5, 576), (2, 1, 1000), (4, 33)]


def _randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm_matches_functional(xp, rng, shape):
    x, w = _randn(rng, *shape, scale=3.0), _randn(rng, shape[-1])
    y = kernels.rms_norm(xp.asarray(x), xp.asarray(w), 1e-5)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(to_numpy(y), F.rms_norm(x, w, 1e-5), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_matches_functional(xp, rng, shape):
    x = _randn(rng, *shape, scale=10.0)
    y = kernels.softmax(xp.asarray(x))
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(to_numpy(y), F.softmax(x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(to_numpy(y).sum(-1), 1.0, rtol=1e-5)


def test_softmax_extreme_values_do_not_overflow(xp):
    x = xp.asarray(np.array([[1e4, -1e4, 0.0], [-3e38, -3e38, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(to_numpy(kernels.softmax(x)), [[1, 0, 0], [0, 0, 1]], atol=1e-7)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 1536), (1, 1, 100)])
def test_swiglu_matches_silu_times_up(xp, rng, shape):
    g, u = _randn(rng, *shape, scale=4.0), _randn(rng, *shape)
    g.flat[0] = -200.0                                     # no overflow warning, silu -> -0
    y = kernels.swiglu(xp.asarray(g), xp.asarray(u))
    assert y.dtype == np.float32
    with np.errstate(over="ignore"):
        expected = F.silu(g) * u
    np.testing.assert_allclose(to_numpy(y), expected, rtol=2e-5, atol=1e-6)


def _rope_tables(rng, B, T, D):
    angles = rng.uniform(0, 50, size=(B, T, 1, D // 2))
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


@pytest.mark.parametrize("B,T,n,D", [(2, 5, 9, 64), (1, 1, 3, 8), (3, 4, 1, 2)])
def test_rope_is_a_rotation_of_the_two_halves(xp, rng, B, T, n, D):
    x = _randn(rng, B, T, n, D)
    cos, sin = _rope_tables(rng, B, T, D)
    y = to_numpy(kernels.rope(xp.asarray(x), xp.asarray(cos), xp.asarray(sin)))
    assert y.dtype == np.float32 and y.shape == x.shape
    # independent definition: complex multiplication of (a + i b) by exp(i angle)
    z = (x[..., :D // 2] + 1j * x[..., D // 2:].astype(np.float64)) * (cos + 1j * sin.astype(np.float64))
    np.testing.assert_allclose(y, np.concatenate([z.real, z.imag], axis=-1), rtol=1e-5, atol=1e-5)
    # a rotation keeps each pair's length
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


# ---- quantised matrix-vector products -----------------------------------------
# The codec itself (quantise, dequantise, bit for bit against the gguf package) is tested in test_gguf_blocks.py.
@pytest.mark.parametrize("qtype", kernels.QUANT_TYPES)
@pytest.mark.parametrize("lead", [(), (1,), (3,), (2, 2)])
def test_q_matvec_equals_dequantise_then_matmul(xp, rng, qtype, lead):
    OUT, IN = 40, 192
    blocks = ggml.quantize(_randn(rng, OUT, IN, scale=0.05), qtype)
    x = _randn(rng, *lead, IN)
    w = ggml.dequantize(blocks, qtype, (OUT, IN))                               # (OUT, IN) float32
    expected = x.astype(np.float64) @ w.T.astype(np.float64)                    # (..., OUT)
    y = kernels.q_matvec(xp.asarray(x), xp.asarray(blocks), qtype.name)         # the type's name works too
    assert y.dtype == np.float32 and y.shape == lead + (OUT,)
    np.testing.assert_allclose(to_numpy(y), expected, rtol=1e-4, atol=1e-5)


def test_q_matvec_rejects_bad_input(rng):
    blocks = ggml.quantize(_randn(rng, 4, 64), "Q8_0")
    with pytest.raises(ValueError, match="x must have shape"):
        kernels.q_matvec(np.zeros(32, np.float32), blocks, "Q8_0")
    with pytest.raises(QuantizationError, match="type must be one of Q8_0, Q4_1"):
        kernels.q_matvec(np.zeros(64, np.float32), blocks, "Q5_K")
    with pytest.raises(QuantizationError, match="unknown ggml type"):
        kernels.q_matvec(np.zeros(64, np.float32), blocks, "Q9")
    with pytest.raises(QuantizationError, match="multiple of 20"):
        kernels.q_matvec(np.zeros(64, np.float32), blocks, "Q4_1")
    with pytest.raises(TypeError, match="blocks must be a uint8"):
        kernels.q_matvec(np.zeros(64, np.float32), blocks.ravel(), "Q8_0")
    with pytest.raises(TypeError, match="x must be a floating-point"):
        kernels.q_matvec(np.zeros(64, np.int32), blocks, "Q8_0")


def test_clear_errors():
    x = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match=r"w must have shape \(8,\)"):
        kernels.rms_norm(x, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="same shape"):
        kernels.swiglu(x, x[:1])
    with pytest.raises(ValueError, match="cos must broadcast"):
        kernels.rope(x.reshape(1, 2, 1, 8), np.ones((3, 4), np.float32), np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        kernels.softmax(np.zeros(3, np.int64))


def test_float64_stays_float64(rng):
    x = rng.standard_normal((2, 16))
    assert kernels.rms_norm(x, np.ones(16), 1e-5).dtype == np.float64
    assert kernels.softmax(x).dtype == np.float64
    assert kernels.swiglu(x, x).dtype == np.float64


def test_set_fused_round_trips():
    previous = kernels.set_fused(False)
    try:
        assert kernels.fused_enabled() is False
    finally:
        kernels.set_fused(previous)
    assert kernels.fused_enabled() is previous


def test_module_does_not_import_cupy():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(kernels))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top for a in n.names] + [getattr(n, "module", "") or "" for n in top]
    assert not any("cupy" in name for name in names)
