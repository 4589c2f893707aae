"""Layer forward values (against torch when installed), dtypes, shapes and clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from tinyllm import nn
from tinyllm.backend import to_numpy
from tinyllm.nn import functional as F


def _x(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _dev(xp):
    return "gpu" if xp.__name__ == "cupy" else "cpu"


# ---- against torch -----------------------------------------------------------
@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def test_gelu_matches_torch_tanh(torch):
    x = _x((4, 7), dtype=np.float64) * 3
    ref = torch.nn.functional.gelu(torch.tensor(x), approximate="tanh").numpy()
    np.testing.assert_allclose(nn.GELU().forward(x), ref, rtol=1e-12, atol=1e-14)


def test_gelu_layer_equals_functional_bitwise(xp):
    x = xp.asarray(_x((64, 33)) * 4)
    np.testing.assert_array_equal(to_numpy(nn.GELU().forward(x)), to_numpy(F.gelu(x)))


def test_silu_and_relu_match_torch(torch):
    x = _x((4, 7), dtype=np.float64) * 30
    np.testing.assert_allclose(F.silu(x), torch.nn.functional.silu(torch.tensor(x)).numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(F.relu(x), torch.relu(torch.tensor(x)).numpy())


def test_layernorm_matches_torch(torch):
    x = _x((2, 3, 8), dtype=np.float64)
    ln = nn.LayerNorm(8, eps=1e-5, dtype=np.float64)
    ln.weight.data[:] = _x(8, seed=1, dtype=np.float64)
    ln.bias.data[:] = _x(8, seed=2, dtype=np.float64)
    ref = torch.nn.functional.layer_norm(torch.tensor(x), (8,), torch.tensor(ln.weight.data),
                                         torch.tensor(ln.bias.data), eps=1e-5).numpy()
    np.testing.assert_allclose(ln.forward(x), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(F.layer_norm(x, ln.weight.data, ln.bias.data, 1e-5), ref, rtol=1e-10, atol=1e-12)


def test_rmsnorm_matches_torch(torch):
    x = _x((2, 3, 8), dtype=np.float64)
    rms = nn.RMSNorm(8, eps=1e-6, dtype=np.float64)
    rms.weight.data[:] = _x(8, seed=1, dtype=np.float64)
    ref_mod = torch.nn.RMSNorm(8, eps=1e-6, dtype=torch.float64)
    with torch.no_grad():
        ref_mod.weight.copy_(torch.tensor(rms.weight.data))
        ref = ref_mod(torch.tensor(x)).numpy()
    np.testing.assert_allclose(rms.forward(x), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(F.rms_norm(x, rms.weight.data, 1e-6), ref, rtol=1e-10, atol=1e-12)


def test_softmax_and_log_softmax_match_torch(torch):
    x = _x((3, 4, 9), dtype=np.float64) * 10
    for axis in (-1, 1):
        np.testing.assert_allclose(nn.Softmax(axis=axis).forward(x), torch.softmax(torch.tensor(x), dim=axis).numpy(),
                                   rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(F.log_softmax(x), torch.log_softmax(torch.tensor(x), dim=-1).numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 11), (2, 5, 11)])
def test_cross_entropy_matches_torch(torch, shape):
    logits = _x(shape, dtype=np.float64) * 4
    targets = np.random.default_rng(1).integers(0, 11, size=shape[:-1])
    targets.reshape(-1)[[0, 3]] = -100
    t_logits = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(t_logits.reshape(-1, 11), torch.tensor(targets).reshape(-1), ignore_index=-100)
    ref.backward()
    ce = nn.CrossEntropyLoss()
    assert ce.forward(logits, targets) == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(ce.backward(), t_logits.grad.numpy(), rtol=1e-10, atol=1e-15)
    assert F.cross_entropy(logits, targets) == pytest.approx(ref.item(), rel=1e-12)


def test_linear_matches_torch(torch):
    lin = nn.Linear(6, 4, rng=0, dtype=np.float64)
    x = _x((3, 6), dtype=np.float64)
    ref = torch.nn.functional.linear(torch.tensor(x), torch.tensor(lin.weight.data.T), torch.tensor(lin.bias.data))
    np.testing.assert_allclose(lin.forward(x), ref.numpy(), rtol=1e-12)


# ---- dtypes and devices ------------------------------------------------------
LAYERS = [
    lambda: nn.Linear(8, 5, rng=0), nn.ReLU, nn.GELU, nn.SiLU, nn.Softmax,
    lambda: nn.LayerNorm(8), lambda: nn.RMSNorm(8), lambda: nn.Dropout(0.2, rng=0),
]


@pytest.mark.parametrize("make", LAYERS, ids=["linear", "relu", "gelu", "silu", "softmax", "layernorm", "rmsnorm", "dropout"])
def test_float32_stays_float32(xp, make):
    layer = make().to(_dev(xp))
    x = xp.asarray(_x((2, 3, 8)))
    y = layer.forward(x)
    dx = layer.backward(xp.ones_like(y))
    assert y.dtype == np.float32 and dx.dtype == np.float32
    assert all(p.grad.dtype == np.float32 for p in layer.parameters())
    assert type(y) is type(x)


def test_cross_entropy_float32_and_stable(xp):
    logits = xp.asarray(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], np.float32))
    targets = xp.asarray(np.array([0, 2]))
    ce = nn.CrossEntropyLoss()
    loss = ce.forward(logits, targets)
    assert isinstance(loss, float) and np.isfinite(loss)
    assert loss == pytest.approx(np.log(3.0) / 2, rel=1e-6)  # row 0 contributes ~0
    d = ce.backward()
    assert d.dtype == np.float32 and bool(xp.isfinite(d).all())


def test_cross_entropy_all_ignored_is_zero():
    ce = nn.CrossEntropyLoss()
    assert ce.forward(_x((3, 4)), np.full(3, -100)) == 0.0
    assert not ce.backward().any()


def test_embedding_forward_and_dtype(xp):
    emb = nn.Embedding(10, 4, rng=0).to(_dev(xp))
    idx = xp.asarray(np.array([[1, 2, 3], [3, 3, 9]]))
    y = emb.forward(idx)
    assert y.shape == (2, 3, 4) and y.dtype == np.float32
    np.testing.assert_array_equal(to_numpy(y[1, 0]), to_numpy(emb.weight.data[3]))
    emb.backward(xp.ones_like(y))
    np.testing.assert_array_equal(to_numpy(emb.weight.grad[:, 0]), [0, 1, 1, 3, 0, 0, 0, 0, 0, 1])


def test_embedding_init_std():
    w = nn.Embedding(1000, 64, rng=0).weight.data
    assert abs(float(w.std()) - 0.02) < 0.0005


def test_grads_accumulate():
    lin = nn.Linear(3, 2, rng=0)
    x = _x((4, 3))
    for _ in range(2):
        lin.forward(x)
        lin.backward(np.ones((4, 2), np.float32))
    np.testing.assert_allclose(lin.bias.grad, [8.0, 8.0])
    lin.zero_grad()
    assert not lin.weight.grad.any()


def test_dropout_statistics_and_eval(xp):
    x = xp.ones((200, 500), dtype=xp.float32)
    drop = nn.Dropout(0.25, rng=0)
    y = to_numpy(drop.forward(x))
    assert abs((y == 0).mean() - 0.25) < 0.01
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.75], rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.01  # inverted scaling keeps the expectation
    drop.eval()
    assert drop.forward(x) is x and drop.backward(x) is x


def test_dropout_is_seeded():
    x = np.ones((50, 50), np.float32)
    a = nn.Dropout(0.5, rng=3).forward(x)
    b = nn.Dropout(0.5, rng=3).forward(x)
    c = nn.Dropout(0.5, rng=4).forward(x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sequential_parameters_and_train_mode():
    model = nn.Sequential(nn.Linear(4, 8, rng=0), nn.ReLU(), nn.Dropout(0.1, rng=0), nn.Linear(8, 2, rng=1))
    assert [n for n, _ in model.named_parameters()] == ["layers.0.weight", "layers.0.bias", "layers.3.weight", "layers.3.bias"]
    assert model.num_parameters() == 4 * 8 + 8 + 8 * 2 + 2
    model.eval()
    assert not model[2].training
    assert len(model) == 4


def test_functional_softmax_extremes():
    p = F.softmax(np.array([[1e4, 0.0, -1e4]], np.float32))
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, [[1.0, 0.0, 0.0]])
    np.testing.assert_allclose(F.sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_is_bitwise_the_max_shifted_formula(axis):
    """softmax shifts by np.fmax.reduce on NumPy: the same bits as the textbook max-shifted formula,
    with -inf entries, a row of -inf, a row of +inf and a row with NaN (NaN rows stay NaN)."""
    x = _x((6, 130), seed=4) * 20
    x[0, 5:] = -np.inf
    x[1] = -np.inf
    x[2, 7] = np.inf
    x[3, 11] = np.nan
    x[4, 0] = -0.0
    with np.errstate(invalid="ignore"):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        want = e / e.sum(axis=axis, keepdims=True)
        np.testing.assert_array_equal(F.softmax(x, axis=axis), want)   # NaN where want has NaN


def test_cross_entropy_probabilities_are_bitwise_the_max_shifted_softmax():
    z = _x((5, 97), seed=5) * 20
    z[2, :50] = -np.inf
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    _, probs, *_ = F.cross_entropy_parts(z, np.arange(5))
    np.testing.assert_array_equal(probs, e / e.sum(axis=-1, keepdims=True))


# ---- clear errors ------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5,), (2, 2, 2, 5)])
def test_linear_rejects_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"x must have shape \(N, 5\) or \(B, T, 5\)"):
        nn.Linear(5, 3).forward(np.zeros(shape, np.float32))


def test_linear_rejects_wrong_width():
    with pytest.raises(ValueError, match=r"\(N, 5\).*got \(2, 4\)"):
        nn.Linear(5, 3).forward(np.zeros((2, 4), np.float32))


def test_linear_rejects_integers_and_lists():
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        nn.Linear(2, 3).forward(np.zeros((2, 2), np.int64))
    with pytest.raises(TypeError, match="x must be a NumPy or CuPy array"):
        nn.Linear(2, 3).forward([[1.0, 2.0]])


def test_embedding_errors():
    emb = nn.Embedding(5, 3, rng=0)
    with pytest.raises(ValueError, match=r"idx must hold token ids in \[0, 5\)"):
        emb.forward(np.array([[0, 5]]))
    with pytest.raises(TypeError, match="idx must be an integer array"):
        emb.forward(np.zeros((1, 2), np.float32))


def test_cross_entropy_errors():
    ce = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"targets must have shape \(2, 3\)"):
        ce.forward(_x((2, 3, 4)), np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match="class id 4, outside"):
        ce.forward(_x((2, 4)), np.array([1, 4]))
    with pytest.raises(TypeError, match="targets must be an integer array"):
        ce.forward(_x((2, 4)), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="logits must have shape"):
        ce.forward(_x((4,)), np.array(1))


def test_norm_width_and_dropout_p_errors():
    with pytest.raises(ValueError, match="last dimension 8"):
        nn.LayerNorm(8).forward(_x((2, 4)))
    with pytest.raises(ValueError, match="last dimension 8"):
        nn.RMSNorm(8).forward(_x((2, 4)))
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        nn.Dropout(1.5)


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Linear(2, 2).backward(np.zeros((1, 2), np.float32))
