"""Every layer's backward against central finite differences in float64 (max relative error <= 1e-6)."""
from __future__ import annotations

import numpy as np
import pytest

from tinyllm import nn
from tinyllm.backend import to_numpy
from tinyllm.nn.gradcheck import check_module, gradient_errors, numerical_gradient, relative_error

TOL = 1e-6


def _x(xp, shape, seed=0):
    return xp.asarray(np.random.default_rng(seed).standard_normal(shape))  # float64


LAYERS = {
    "linear": lambda: nn.Linear(5, 4, rng=1, dtype=np.float64),
    "linear_nobias": lambda: nn.Linear(5, 4, bias=False, rng=1, dtype=np.float64),
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softmax": nn.Softmax,
    "layernorm": lambda: nn.LayerNorm(5),
    "rmsnorm": lambda: nn.RMSNorm(5),
    "sequential_mlp": lambda: nn.Sequential(nn.Linear(5, 7, rng=1), nn.GELU(), nn.Linear(7, 5, rng=2), nn.ReLU()),
}


def _randomise_params(module, seed=3):
    """Move norm weights/biases away from 1/0 so every term of the backward is exercised."""
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data = p.data.astype(np.float64) + 0.5 * rng.standard_normal(p.shape)
        p.grad = np.zeros_like(p.data)


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 5)], ids=["N,C", "B,T,C"])
def test_layer_gradients(xp, name, shape):
    module = LAYERS[name]()
    _randomise_params(module)
    module.to("gpu" if xp.__name__ == "cupy" else "cpu")
    errors = gradient_errors(module, _x(xp, shape))
    assert errors, "nothing was checked"
    assert max(errors.values()) <= TOL, errors


def test_relu_away_from_kink(xp):
    # finite differences are meaningless within eps of x = 0; the random inputs stay far from it
    x = _x(xp, (4, 5))
    assert float(xp.abs(x).min()) > 1e-4
    assert check_module(nn.ReLU(), x) <= TOL


def test_embedding_gradient_with_repeated_ids(xp):
    emb = nn.Embedding(6, 4, rng=0, dtype=np.float64).to("gpu" if xp.__name__ == "cupy" else "cpu")
    idx = xp.asarray(np.array([[0, 2, 2, 5], [5, 5, 1, 2]]))  # repeats must add up
    errors = gradient_errors(emb, idx)
    assert set(errors) == {"weight"}
    assert errors["weight"] <= TOL


@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 5)], ids=["N,V", "B,T,V"])
def test_cross_entropy_gradient(xp, shape):
    targets = np.random.default_rng(1).integers(0, 5, size=shape[:-1])
    targets.reshape(-1)[[1, 4]] = -100  # two ignored positions
    assert check_module(nn.CrossEntropyLoss(), _x(xp, shape), xp.asarray(targets)) <= TOL


def test_cross_entropy_custom_ignore_index_and_scale(xp):
    x = _x(xp, (4, 3))
    targets = xp.asarray(np.array([0, 7, 2, 7]))
    ce = nn.CrossEntropyLoss(ignore_index=7)
    ce.forward(x, targets)
    dz = ce.backward(2.5)
    num = numerical_gradient(lambda z: 2.5 * nn.CrossEntropyLoss(ignore_index=7).forward(z, targets), x.copy())
    assert relative_error(dz, num) <= TOL
    assert float(xp.abs(dz[1]).max()) == 0.0 and float(xp.abs(dz[3]).max()) == 0.0


def test_dropout_gradient_with_fixed_mask(xp):
    x = _x(xp, (4, 6))
    g = _x(xp, (4, 6), seed=5)
    drop = nn.Dropout(0.3, rng=11)
    drop.forward(x)
    dx = drop.backward(g)
    # the same seed gives the same mask, so the loss is a fixed linear function of x
    num = numerical_gradient(lambda z: float((nn.Dropout(0.3, rng=11).forward(z) * g).sum()), x.copy())
    assert relative_error(dx, num) <= TOL


def test_numerical_gradient_of_known_function():
    x = np.array([0.5, -1.0, 2.0])
    num = numerical_gradient(lambda z: float((z ** 3).sum()), x)
    np.testing.assert_allclose(num, 3 * x ** 2, rtol=1e-8)
    np.testing.assert_array_equal(x, [0.5, -1.0, 2.0])  # restored after probing


def test_numerical_gradient_rejects_float32():
    with pytest.raises(TypeError, match="float64"):
        numerical_gradient(lambda z: float(z.sum()), np.zeros(3, np.float32))


def test_gradcheck_catches_a_wrong_backward():
    class WrongReLU(nn.ReLU):
        def backward(self, dy):
            return dy  # forgets the mask

    assert check_module(WrongReLU(), _x(np, (4, 5))) > 0.1


def test_check_module_converts_float32_parameters():
    lin = nn.Linear(3, 2, rng=0)  # float32 by default
    assert check_module(lin, _x(np, (4, 3))) <= TOL
    assert lin.weight.data.dtype == np.float64 and to_numpy(lin.weight.grad).dtype == np.float64
