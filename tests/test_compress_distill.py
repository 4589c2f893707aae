"""Distillation loss: values and finite-difference gradient."""
import numpy as np
import pytest

from tinyllm.compress.distill import distillation_loss


def _numerical_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f(x)
        x[i] = old - eps
        fm = f(x)
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (2.0, 0.7), (4.0, 1.0), (3.0, 0.0)])
def test_gradient_matches_finite_differences(T, alpha):
    rng = np.random.default_rng(0)
    zs = rng.standard_normal((2, 3, 7))
    zt = 2 * rng.standard_normal((2, 3, 7))
    y = rng.integers(0, 7, (2, 3))
    y[0, 1] = -100                                                      # ignored position
    loss, g = distillation_loss(zs, zt, y, temperature=T, alpha=alpha)
    num = _numerical_grad(lambda z: distillation_loss(z, zt, y, temperature=T, alpha=alpha)[0], zs.copy())
    assert np.abs(g - num).max() / (np.abs(num).max() + 1e-12) < 1e-6
    assert np.abs(g[0, 1]).max() == 0.0


def test_values_against_direct_formula():
    rng = np.random.default_rng(1)
    zs, zt = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    y = np.array([0, 1, 2, 3])
    T, a = 2.0, 0.3

    def sm(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = sm(zt / T), sm(zs / T)
    kl = (p * np.log(p / q)).sum(-1).mean()
    ce = -np.log(sm(zs)[np.arange(4), y]).mean()
    loss, _ = distillation_loss(zs, zt, y, temperature=T, alpha=a)
    assert np.isclose(loss, a * T * T * kl + (1 - a) * ce)
    assert np.isclose(distillation_loss(zs, zs, None, alpha=1.0)[0], 0.0, atol=1e-12)


def test_float32_dtype_and_errors():
    z = np.zeros((2, 4, 10), np.float32)
    loss, g = distillation_loss(z, z, np.zeros((2, 4), int))
    assert g.dtype == np.float32 and isinstance(loss, float)
    with pytest.raises(ValueError, match="teacher_logits"):
        distillation_loss(z, z[:, :2], np.zeros((2, 4), int))
    with pytest.raises(ValueError, match="targets"):
        distillation_loss(z, z, None, alpha=0.5)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(z, z, np.zeros((2, 4), int), temperature=0)


def test_train_student_runs_deterministically_and_learns():
    from tinyllm.compress.distill import train_student
    from tinyllm.models.gpt import GPT, GPTConfig

    cfg = GPTConfig.preset("nano", vocab_size=5, block_size=8)
    tokens = np.tile(np.arange(5), 60)                                   # a fully predictable sequence
    teacher = GPT(cfg, rng=1)
    runs = []
    for t in (None, teacher, None):
        student = GPT(cfg, rng=0)
        runs.append(train_student(student, tokens, teacher=t, steps=15, batch_size=4, lr=1e-2,
                                  eval_tokens=tokens, eval_every=5, progress=False))
    base, dist, base2 = runs
    assert base["train_loss"] == base2["train_loss"]                      # seeded: bit-identical
    assert base["train_loss"][-1] < base["train_loss"][0]
    assert dist["train_loss"] != base["train_loss"] and len(dist["eval_loss"]) == 3
