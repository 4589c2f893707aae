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

    cfg = GPTConfig.preset("nano", vocab_size=5, context_length=8)
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
    assert dist["train_loss"] != base["train_loss"]
    assert dist["eval_step"] == [0, 5, 10, 15] and dist["eval_loss"][0] == base["eval_loss"][0]   # same init


def test_alpha_zero_is_the_baseline_exactly():
    """With alpha = 0 the teacher's term vanishes: same batches, same optimiser, so the same run bit for bit."""
    from tinyllm.compress.distill import train_student
    from tinyllm.models.gpt import GPT, GPTConfig

    cfg = GPTConfig.preset("nano", vocab_size=7, context_length=8)
    tokens = np.random.default_rng(0).integers(0, 7, 200)
    runs = [train_student(GPT(cfg, rng=0), tokens, teacher=t, alpha=0.0, steps=8, batch_size=4, seed=3,
                          progress=False) for t in (None, GPT(cfg, rng=1))]
    assert runs[0]["train_loss"] == runs[1]["train_loss"]


def test_heldout_loss_is_fixed_and_matches_the_models_loss():
    from tinyllm.compress.distill import heldout_loss
    from tinyllm.data import get_batch
    from tinyllm.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig.preset("nano", vocab_size=7, context_length=8), rng=0)
    tokens = np.random.default_rng(0).integers(0, 7, 300)
    a = heldout_loss(model, tokens, batch_size=4, batches=3, seed=5)
    assert a == heldout_loss(model, tokens, batch_size=4, batches=3, seed=5)
    rng = np.random.default_rng(5)
    direct = np.mean([model.loss(*get_batch(tokens, 8, 4, rng)) for _ in range(3)])
    assert np.isclose(a, direct, rtol=1e-6)


class _MarkovTeacher:
    """A perfect teacher for text from a bigram chain: its logits are log P[x_t] (the true next-token law)."""

    def __init__(self, P):
        self.logP = np.log(P).astype(np.float32)                         # (V, V)

    def eval(self):
        return self

    def forward(self, x):
        return self.logP[x]                                              # (B, T, V)


def _markov_chain(P, n, rng):
    c = P.cumsum(axis=1)                                                 # (V, V)
    u = rng.random(n)
    out = np.zeros(n, np.int64)
    for i in range(1, n):                                                # sampling a chain is sequential
        out[i] = min(np.searchsorted(c[out[i - 1]], u[i]), P.shape[0] - 1)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_distilled_student_is_closer_to_the_teacher_with_little_data(seed):
    """Hinton et al. (2015), section 3: with little data the soft targets carry what the hard labels cannot.

    200 tokens of a random bigram chain are too few to estimate its transition probabilities; the
    student trained with the true distribution as teacher must end much closer to it (KL) and better
    on held-out text than the same student trained on the same batches from the labels alone.
    A wrong sign, a missing teacher term or a teacher ignored by ``train_student`` fails this.
    """
    from tinyllm.compress.distill import distillation_loss, train_student
    from tinyllm.models.gpt import GPT, GPTConfig

    rng = np.random.default_rng(seed)
    V = 6
    P = rng.dirichlet(np.ones(V), size=V)                                # (V, V) rows: next-token laws
    train, val = _markov_chain(P, 200, rng), _markov_chain(P, 2000, rng)
    teacher = _MarkovTeacher(P)
    cfg = GPTConfig.preset("nano", vocab_size=V, context_length=8, dim=16)
    windows = val[: len(val) // 8 * 8].reshape(-1, 8)                    # (W, 8) held-out windows
    kl, val_loss = {}, {}
    for name, t in (("baseline", None), ("distilled", teacher)):
        student = GPT(cfg, rng=0)
        hist = train_student(student, train, teacher=t, steps=100, batch_size=8, lr=1e-2, temperature=1.0,
                             alpha=0.8, seed=0, eval_tokens=val, eval_every=100, eval_batches=8, progress=False)
        kl[name] = distillation_loss(student.forward(windows), teacher.forward(windows), None,
                                     temperature=1.0, alpha=1.0)[0]
        val_loss[name] = hist["eval_loss"][-1]
    assert kl["distilled"] < 0.5 * kl["baseline"], kl
    assert val_loss["distilled"] < val_loss["baseline"], val_loss
