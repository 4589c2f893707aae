"""Optimisers, schedule and clipping: against torch.optim when installed, closed-form cases always."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tinyllm import optim
from tinyllm.backend import get_array_module, to_numpy
from tinyllm.nn.module import Parameter

SHAPES = [(3, 4), (5,)]


def _setup(seed=0, steps=6):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s) for s in SHAPES]  # float64
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(steps)]
    return init, grads


def _params(xp, init):
    return [Parameter(xp.asarray(a.copy())) for a in init]


def _step(opt, params, gs):
    for p, g in zip(params, gs):
        p.grad[...] = get_array_module(p.data).asarray(g)
    opt.step()


CONFIGS = {
    "sgd": (lambda p: optim.SGD(p, lr=0.1), "SGD", dict(lr=0.1)),
    "sgd_momentum_wd": (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01), "SGD",
                        dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    "sgd_nesterov": (lambda p: optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True), "SGD",
                     dict(lr=0.05, momentum=0.8, nesterov=True)),
    "adam": (lambda p: optim.Adam(p, lr=0.01), "Adam", dict(lr=0.01)),
    "adam_l2": (lambda p: optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), "Adam",
                dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw": (lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.1), "AdamW", dict(lr=0.01, weight_decay=0.1)),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_torch_optim(name):
    torch = pytest.importorskip("torch")
    make, torch_name, kwargs = CONFIGS[name]
    init, grads = _setup()
    ours = _params(np, init)
    opt = make(ours)
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    topt = getattr(torch.optim, torch_name)(theirs, **kwargs)
    for gs in grads:
        _step(opt, ours, gs)
        for p, g in zip(theirs, gs):
            p.grad = torch.tensor(g)
        topt.step()
        for p, q in zip(ours, theirs):
            np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW"])
def test_parameter_groups_match_torch(cls):
    torch = pytest.importorskip("torch")
    init, grads = _setup()
    kwargs = dict(lr=0.05, weight_decay=0.2, **({"momentum": 0.9} if cls == "SGD" else {}))
    ours = _params(np, init)
    opt = getattr(optim, cls)([{"params": ours[:1]}, {"params": ours[1:], "weight_decay": 0.0}], **kwargs)
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    topt = getattr(torch.optim, cls)([{"params": theirs[:1]}, {"params": theirs[1:], "weight_decay": 0.0}], **kwargs)
    for gs in grads:
        _step(opt, ours, gs)
        for p, g in zip(theirs, gs):
            p.grad = torch.tensor(g)
        topt.step()
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    _, grads = _setup()
    for max_norm in (0.5, 100.0):
        ours = _params(np, grads[0])
        for p, g in zip(ours, grads[1]):
            p.grad[...] = g
        theirs = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]
        for p, g in zip(theirs, grads[1]):
            p.grad = torch.tensor(g)
        total = optim.clip_grad_norm(ours, max_norm)
        ref = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
        assert total == pytest.approx(ref.item(), rel=1e-12)
        for p, q in zip(ours, theirs):
            np.testing.assert_allclose(p.grad, q.grad.numpy(), rtol=1e-12)


# ---- closed-form cases (always run) -------------------------------------------
def test_sgd_step_closed_form(xp):
    p = Parameter(xp.asarray(np.array([1.0, -2.0, 3.0], np.float32)))
    p.grad[...] = xp.asarray(np.array([0.5, 1.0, -1.5], np.float32))
    optim.SGD([p], lr=0.1).step()
    np.testing.assert_allclose(to_numpy(p.data), [0.95, -2.1, 3.15], rtol=1e-6)
    assert p.data.dtype == np.float32


def test_sgd_momentum_closed_form():
    # constant gradient g: buffer after t steps = g (1 + mu + ... + mu^(t-1))
    p = Parameter(np.zeros(1))
    opt = optim.SGD([p], lr=0.1, momentum=0.5)
    for _ in range(3):
        p.grad[...] = 1.0
        opt.step()
    assert p.data[0] == pytest.approx(-0.1 * (1 + 1.5 + 1.75))


def test_sgd_nesterov_and_weight_decay_closed_form():
    p = Parameter(np.array([2.0]))
    opt = optim.SGD([p], lr=0.1, momentum=0.5, nesterov=True, weight_decay=0.25)
    p.grad[...] = 1.0
    opt.step()  # g = 1 + 0.25*2 = 1.5, buf = 1.5, step direction = g + 0.5 buf = 2.25
    assert p.data[0] == pytest.approx(2.0 - 0.225)


def test_adam_first_step_is_lr_times_sign(xp):
    # after bias correction m_hat = g, v_hat = g^2, so the first step is lr * g / (|g| + eps)
    p = Parameter(xp.asarray(np.array([1.0, 1.0, 1.0], np.float32)))
    p.grad[...] = xp.asarray(np.array([3.0, -0.01, 200.0], np.float32))
    optim.Adam([p], lr=0.1).step()
    np.testing.assert_allclose(to_numpy(p.data), [0.9, 1.1, 0.9], rtol=1e-5)
    assert p.data.dtype == np.float32


def test_adamw_decays_without_gradient():
    p = Parameter(np.array([2.0]))
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.5)
    opt.step()  # zero gradient: only the decoupled decay acts, p (1 - lr wd)
    assert p.data[0] == pytest.approx(2.0 * (1 - 0.05))
    q = Parameter(np.array([2.0]))
    optim.Adam([q], lr=0.1, weight_decay=0.5).step()  # coupled: g = wd p = 1, step = lr * sign
    assert q.data[0] == pytest.approx(1.9)


def test_clip_grad_norm_closed_form(xp):
    a, b = Parameter(xp.zeros(2)), Parameter(xp.zeros(1))
    a.grad[...] = xp.asarray([3.0, 0.0])
    b.grad[...] = 4.0
    assert optim.clip_grad_norm([a, b], 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(to_numpy(a.grad), [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(b.grad), [0.8], rtol=1e-6)
    assert optim.clip_grad_norm([a, b], 10.0) == pytest.approx(1.0, rel=1e-6)  # below max: untouched
    np.testing.assert_allclose(to_numpy(b.grad), [0.8], rtol=1e-6)


def test_warmup_cosine_values():
    s = optim.WarmupCosine(warmup_steps=10, total_steps=110, max_lr=1e-3, min_lr=1e-4)
    assert s(0) == pytest.approx(1e-4)
    assert s(9) == pytest.approx(1e-3)
    assert s(10) == pytest.approx(1e-3)
    assert s(60) == pytest.approx(1e-4 + 0.5 * 9e-4)  # halfway: cos(pi/2) = 0
    assert s(110) == pytest.approx(1e-4) and s(10_000) == pytest.approx(1e-4)
    lrs = [s(i) for i in range(10, 110)]
    assert all(x >= y for x, y in zip(lrs, lrs[1:]))  # monotone decay
    assert optim.WarmupCosine(0, 5, 1.0)(0) == pytest.approx(1.0)


def test_lr_attribute_drives_the_step():
    p = Parameter(np.array([1.0]))
    opt = optim.SGD([p], lr=0.1)
    opt.lr = 0.5
    p.grad[...] = 1.0
    opt.step()
    assert p.data[0] == pytest.approx(0.5)


# ---- state dict --------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_resume_is_bit_identical(xp, name):
    make = CONFIGS[name][0]
    init, grads = _setup(steps=6)
    # uninterrupted
    full = _params(xp, init)
    opt = make(full)
    for gs in grads:
        _step(opt, full, gs)
    # interrupted after 3 steps: copy parameters and optimiser state (through NumPy, as a file would), resume
    first = _params(xp, init)
    opt1 = make(first)
    for gs in grads[:3]:
        _step(opt1, first, gs)
    saved = {k: (to_numpy(v) if hasattr(v, "shape") else v) for k, v in opt1.state_dict().items()}
    resumed = _params(xp, [to_numpy(p.data) for p in first])
    opt2 = make(resumed)
    opt2.lr = 123.0  # overwritten by the state
    opt2.load_state_dict(saved)
    assert opt2.lr == opt1.lr and opt2.step_count == 3
    for gs in grads[3:]:
        _step(opt2, resumed, gs)
    for p, q in zip(full, resumed):
        np.testing.assert_array_equal(to_numpy(p.data), to_numpy(q.data))


def test_state_dict_is_a_copy_and_plain():
    p = Parameter(np.ones(3))
    opt = optim.AdamW([p], lr=0.1)
    p.grad[...] = 1.0
    opt.step()
    state = opt.state_dict()
    assert set(state) == {"lr", "step", "beta1", "beta2", "eps", "weight_decay", "exp_avg.0", "exp_avg_sq.0"}
    assert state["step"] == 1 and isinstance(state["lr"], float)
    state["exp_avg.0"][...] = 99.0
    assert opt.state["exp_avg"][0][0] != 99.0


def test_load_state_dict_errors():
    opt = optim.Adam([Parameter(np.ones(3))])
    state = opt.state_dict()
    with pytest.raises(KeyError, match="missing"):
        opt.load_state_dict({k: v for k, v in state.items() if k != "exp_avg.0"})
    state["exp_avg.0"] = np.zeros(4)
    with pytest.raises(ValueError, match=r"exp_avg.0: expected shape \(3,\)"):
        opt.load_state_dict(state)


# ---- clear errors ------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=-0.1),
    lambda ps: optim.Adam(ps, lr=-1e-3),
    lambda ps: optim.AdamW(ps, lr=-1e-3),
])
def test_negative_learning_rate_is_rejected(make):
    with pytest.raises(ValueError, match="lr .*must be >= 0, got -"):
        make([Parameter(np.zeros(2))])


def test_other_bad_hyperparameters():
    ps = [Parameter(np.zeros(2))]
    with pytest.raises(ValueError, match=r"betas\[0\] must be in \[0, 1\)"):
        optim.Adam(ps, betas=(1.0, 0.999))
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\)"):
        optim.AdamW(ps, betas=(0.9, -0.1))
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        optim.AdamW(ps, weight_decay=-0.1)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        optim.SGD(ps, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[0\] must be a tinyllm Parameter"):
        optim.SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="same Parameter more than once"):
        optim.SGD(ps + ps, lr=0.1)
    with pytest.raises(ValueError, match="parameter group 0 must have the key 'params'"):
        optim.AdamW([{"params": ps, "lr": 0.1}])
    with pytest.raises(ValueError, match="weight_decay of parameter group 0 must be >= 0"):
        optim.AdamW([{"params": ps, "weight_decay": -1.0}])
    opt = optim.SGD(ps, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    with pytest.raises(ValueError, match="min_lr"):
        optim.WarmupCosine(10, 100, max_lr=1e-4, min_lr=1e-3)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.WarmupCosine(200, 100, max_lr=1e-3)
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm(ps, -1.0)


def test_zero_grad():
    p = Parameter(np.zeros(3))
    p.grad[...] = 5.0
    optim.SGD([p], lr=0.1).zero_grad()
    assert not p.grad.any()
    assert math.isfinite(optim.clip_grad_norm([p], 1.0))


@pytest.mark.parametrize("key,value,error,match", [
    ("step", 2.0, ValueError, "step must be an int"),
    ("step", True, ValueError, "step must be an int"),
    ("step", -1, ValueError, "step must be an int"),
    ("step", 2**64, ValueError, "step must be an int"),
    ("lr", [0.1], TypeError, "lr must be a real number"),
    ("lr", "0.1", TypeError, "lr must be a real number"),
    ("lr", float("nan"), ValueError, "lr must be >= 0"),
    ("lr", 10**400, ValueError, "too large for a float"),  # was OverflowError
    ("beta2", 1.0, ValueError, r"beta2 must be in \[0.0, 1.0\)"),
    ("eps", -1e-8, ValueError, "eps must be >= 0"),
    ("exp_avg.0", np.zeros(3, np.int64), ValueError, "floating-point"),
    ("exp_avg.0", [0.0, 0.0, 0.0], TypeError, "expected an array"),
])
def test_load_state_dict_checks_everything_before_changing_anything(key, value, error, match):
    p = Parameter(np.ones(3))
    opt = optim.Adam([p], lr=0.1)
    p.grad[...] = 1.0
    opt.step()
    before = opt.state_dict()
    bad = {**before, key: value}
    with pytest.raises(error, match=match):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    for k, v in before.items():
        assert np.array_equal(v, after[k]) if hasattr(v, "shape") else v == after[k], k
    with pytest.raises(TypeError, match="must be a dict"):
        opt.check_state_dict([("lr", 0.1)])
