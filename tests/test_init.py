"""Initialisers: statistics under a seed, determinism, variance versus standard deviation, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tinyllm import init
from tinyllm.backend import to_numpy

SHAPE = (512, 256)  # fan_in 512, fan_out 256: 131072 draws, so sample std is within ~0.5%


def _std(w):
    return float(np.std(to_numpy(w)))


@pytest.mark.parametrize("name, kwargs, expected_std", [
    ("normal", dict(std=0.02), 0.02),
    ("normal", dict(var=0.1), math.sqrt(0.1)),
    ("uniform", dict(low=-0.5, high=0.5), 1.0 / math.sqrt(12)),
    ("xavier_normal", {}, math.sqrt(2.0 / (512 + 256))),
    ("xavier_uniform", {}, math.sqrt(2.0 / (512 + 256))),
    ("xavier_normal", dict(gain=5.0 / 3.0), 5.0 / 3.0 * math.sqrt(2.0 / (512 + 256))),
    ("kaiming_normal", {}, math.sqrt(2.0 / 512)),
    ("kaiming_uniform", {}, math.sqrt(2.0 / 512)),
    ("kaiming_normal", dict(nonlinearity="linear"), math.sqrt(1.0 / 512)),
    ("kaiming_normal", dict(nonlinearity="tanh"), 5.0 / 3.0 / math.sqrt(512)),
    ("gpt2_residual", dict(n_layers=12), 0.02 / math.sqrt(24)),
])
def test_statistics(name, kwargs, expected_std):
    w = init.initialize(name, SHAPE, rng=0, **kwargs)
    assert w.shape == SHAPE and w.dtype == np.float32
    assert abs(float(np.mean(w))) < 0.05 * expected_std
    assert _std(w) == pytest.approx(expected_std, rel=0.01)


def test_uniform_bounds():
    a = math.sqrt(6.0 / (512 + 256))
    w = init.xavier_uniform(SHAPE, rng=0)
    assert float(w.min()) >= -a and float(w.max()) <= a
    assert float(w.max()) > 0.99 * a  # the whole interval is used
    u = init.uniform((1000,), 2.0, 3.0, rng=1)
    assert float(u.min()) >= 2.0 and float(u.max()) < 3.0


def test_normal_mean_and_default_std():
    w = init.normal((100_000,), mean=3.0, std=0.5, rng=0)
    assert float(w.mean()) == pytest.approx(3.0, abs=0.01)
    assert _std(init.normal((100_000,), rng=0)) == pytest.approx(1.0, rel=0.01)


def test_variance_is_not_standard_deviation():
    # N(0, 0.1) means variance 0.1: std sqrt(0.1) ~ 0.316, not 0.1
    by_var = init.normal((100,), var=0.1, rng=0)
    by_std = init.normal((100,), std=0.1, rng=0)
    np.testing.assert_allclose(by_var, by_std * math.sqrt(10.0), rtol=1e-6)  # same draws, scaled
    big = init.normal((100_000,), var=0.1, rng=0)
    assert float(big.var()) == pytest.approx(0.1, rel=0.02)
    assert _std(big) == pytest.approx(0.316, abs=0.005)


def test_seeded_determinism():
    for name in init.INITIALIZERS:
        kwargs = {"n_layers": 4} if name == "gpt2_residual" else {}
        a = init.initialize(name, (8, 5), rng=42, **kwargs)
        b = init.initialize(name, (8, 5), rng=np.random.default_rng(42), **kwargs)
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(init.normal((8,), rng=1), init.normal((8,), rng=2))


def test_generator_advances():
    rng = np.random.default_rng(0)
    assert not np.array_equal(init.normal((4,), rng=rng), init.normal((4,), rng=rng))


def test_zeros_ones_dtype_and_device(xp):
    device = "gpu" if xp.__name__ == "cupy" else "cpu"
    z = init.zeros((2, 3), dtype=np.float64, device=device)
    o = init.initialize("ones", (4,), device=device)
    assert z.dtype == np.float64 and not z.any() and type(z).__module__.split(".")[0] == xp.__name__
    assert o.dtype == np.float32 and bool((o == 1).all())


def test_fans():
    assert init.fans((512, 256)) == (512, 256)
    assert init.fans((3, 4, 5)) == (12, 5)
    assert init.fans((7,)) == (7, 7)
    assert init.fans(()) == (1, 1)


# ---- clear errors ------------------------------------------------------------
def test_unknown_initializer_name():
    with pytest.raises(ValueError, match=r"initializer 'kaiming' is unknown: expected one of .*kaiming_normal"):
        init.initialize("kaiming", (3, 3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="nonlinearity='swish' is unknown"):
        init.kaiming_normal((3, 3), nonlinearity="swish")
    with pytest.raises(ValueError, match="var must be >= 0"):
        init.normal((3,), var=-1.0)
    with pytest.raises(ValueError, match="std must be >= 0"):
        init.normal((3,), std=-0.1)
    with pytest.raises(ValueError, match="either std .* or var .*, not both"):
        init.normal((3,), std=0.1, var=0.01)
    with pytest.raises(ValueError, match="low <= high"):
        init.uniform((3,), 1.0, 0.0)
    with pytest.raises(ValueError, match="n_layers must be >= 1"):
        init.gpt2_residual((3, 3), n_layers=0)
    with pytest.raises(ValueError, match=r"kaiming_normal needs fan_in and fan_out > 0, got shape \(0, 3\)"):
        init.kaiming_normal((0, 3))
    with pytest.raises(ValueError, match="negative sizes"):
        init.normal((3, -1))
    for bad in (None, "ab", (2.5, 3)):
        with pytest.raises(TypeError, match="shape must be an int or a sequence of ints"):
            init.normal(bad)
    with pytest.raises(TypeError, match="rng must be a numpy Generator or an int seed"):
        init.normal((3,), rng="seed")
