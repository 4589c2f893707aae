"""GPTQ beats round-to-nearest on a layer with correlated inputs."""
import numpy as np
import pytest

from tinyllm.compress.gptq import gptq_quantize, hessian, output_error
from tinyllm.compress.quantize import dequantize, fake_quantize


def _correlated_layer(seed=0, n=1024, d_in=128, d_out=64):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d_in, d_in)).astype(np.float32)
    low = rng.standard_normal((n, 8)).astype(np.float32) @ rng.standard_normal((8, d_in)).astype(np.float32)
    x = 0.1 * rng.standard_normal((n, d_in)).astype(np.float32) @ mix + low   # (N, IN) correlated
    w = rng.standard_normal((d_out, d_in)).astype(np.float32)                 # (OUT, IN)
    return x.astype(np.float32), w


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [None, 32])
def test_gptq_lower_output_error_than_rtn(symmetric, group_size):
    x, w = _correlated_layer()
    kw = {"granularity": "group", "group_size": group_size} if group_size else {"granularity": "channel"}
    rtn = fake_quantize(w, 4, symmetric=symmetric, **kw)
    qt, w_hat = gptq_quantize(w, hessian(x), 4, group_size=group_size, symmetric=symmetric, block_size=32)
    e_rtn, e_gptq = output_error(x, w, rtn), output_error(x, w, w_hat)
    assert e_gptq < 0.8 * e_rtn
    # the result is a real quantised tensor: its codes dequantise to w_hat
    np.testing.assert_array_equal(dequantize(qt), w_hat)
    assert qt.codes.shape[-1] == (group_size or 128)


def test_block_size_does_not_change_result():
    x, w = _correlated_layer(1, d_in=64, d_out=16)
    h = hessian(x)
    _, a = gptq_quantize(w, h, 4, group_size=16, block_size=16)
    _, b = gptq_quantize(w, h, 4, group_size=16, block_size=64)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_dead_inputs_and_bad_shapes():
    x, w = _correlated_layer(2, d_in=32, d_out=8)
    x[:, 5] = 0.0
    _, w_hat = gptq_quantize(w, hessian(x), 4, group_size=None)
    assert np.isfinite(w_hat).all() and (w_hat[:, 5] == 0).all()
    with pytest.raises(ValueError, match="h must have shape"):
        gptq_quantize(w, np.eye(16), 4)
    with pytest.raises(ValueError, match="group_size=12"):
        gptq_quantize(w, hessian(x), 4, group_size=12)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [None, 16])
def test_gptq_act_order_codes_dequantise_to_result_and_beat_rtn(symmetric, group_size):
    x, w = _correlated_layer(seed=3)
    x = x * np.geomspace(0.1, 3.0, x.shape[1]).astype(np.float32)     # features of very different energy
    qt, w_hat = gptq_quantize(w, hessian(x), 4, group_size=group_size, symmetric=symmetric, act_order=True,
                              block_size=16)
    np.testing.assert_allclose(dequantize(qt), w_hat, rtol=0, atol=1e-6)
    gran = "channel" if group_size is None else "group"
    rtn = fake_quantize(w, 4, symmetric=symmetric, granularity=gran, group_size=group_size)
    assert output_error(x, w, w_hat) < 0.8 * output_error(x, w, rtn)


def test_gptq_act_order_is_not_worse_on_skewed_inputs():
    rng = np.random.default_rng(4)
    x, w = _correlated_layer(seed=4)
    x = x * rng.permutation(np.geomspace(0.01, 10.0, x.shape[1])).astype(np.float32)
    h = hessian(x)
    plain = output_error(x, w, gptq_quantize(w, h, 3, group_size=None)[1])
    ordered = output_error(x, w, gptq_quantize(w, h, 3, group_size=None, act_order=True)[1])
    assert ordered <= plain * 1.02


def test_channel_damp_shrinks_the_correlations_towards_round_to_nearest():
    x, w = _correlated_layer(5, d_in=64, d_out=16)
    h = hessian(x)
    kw = dict(group_size=16, symmetric=False)
    np.testing.assert_array_equal(gptq_quantize(w, h, 4, channel_damp=0.0, **kw)[1], gptq_quantize(w, h, 4, **kw)[1])
    c = 0.3                                                                 # = GPTQ on H + c diag(H)
    np.testing.assert_allclose(gptq_quantize(w, h, 4, damp=0.0, channel_damp=c, **kw)[1],
                               gptq_quantize(w, h + c * np.diag(np.diag(h)), 4, damp=0.0, **kw)[1], atol=1e-6)
    rtn = fake_quantize(w, 4, symmetric=False, granularity="group", group_size=16)
    far = gptq_quantize(w, h, 4, channel_damp=1e7, **kw)[1]                 # no compensation left
    np.testing.assert_allclose(far, rtn, atol=1e-5)
    assert not np.allclose(gptq_quantize(w, h, 4, channel_damp=0.1, **kw)[1], rtn, atol=1e-5)
    with pytest.raises(ValueError, match="channel_damp"):
        gptq_quantize(w, h, 4, channel_damp=-0.1, **kw)


def test_channel_damp_generalises_from_few_calibration_rows():
    rng = np.random.default_rng(0)
    d_in, d_out = 64, 32
    mix = rng.standard_normal((d_in, d_in)).astype(np.float32) / 8
    scale = np.geomspace(0.1, 3, d_in).astype(np.float32)                  # channels of different energy

    def draw(m):                                                            # (m, IN) correlated inputs
        z = rng.standard_normal((m, d_in)).astype(np.float32)
        return (z @ mix + 0.3 * rng.standard_normal((m, d_in)).astype(np.float32)) * scale

    x_fit, x_new = draw(32), draw(4000)                                     # 32 rows estimate a 64 x 64 H badly
    w = rng.standard_normal((d_out, d_in)).astype(np.float32)
    kw = dict(group_size=16, symmetric=False, act_order=True, damp=0.01)
    plain = gptq_quantize(w, hessian(x_fit), 4, **kw)[1]
    shrunk = gptq_quantize(w, hessian(x_fit), 4, channel_damp=0.3, **kw)[1]
    assert output_error(x_fit, w, plain) < output_error(x_fit, w, shrunk)   # plain fits the calibration rows best
    assert output_error(x_new, w, shrunk) < 0.85 * output_error(x_new, w, plain)   # shrunk carries to new rows
