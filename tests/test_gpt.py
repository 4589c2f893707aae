"""The GPT and its attention: shapes, dtypes, causality, and every gradient checked
against central finite differences (float64) and against PyTorch."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tinyllm.models.gpt import GPT, GPTConfig, PRESETS
from tinyllm.nn.attention import CausalSelfAttention, causal_attention, causal_attention_backward


def _numerical_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to every entry of x (perturbed in place)."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        plus = f()
        x[i] = old - eps
        minus = f()
        x[i] = old
        g[i] = (plus - minus) / (2 * eps)
    return g


def _rel_err(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-12))


def _batch(cfg: GPTConfig, B: int, T: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, cfg.vocab_size, size=(B, T))
    targets = rng.integers(0, cfg.vocab_size, size=(B, T))
    return idx, targets


# ---- attention --------------------------------------------------------------------------------

def test_attention_weights_are_causal_rows_summing_to_one(xp):
    rng = np.random.default_rng(0)
    q, k, v = (xp.asarray(rng.standard_normal((2, 3, 6, 4)).astype(np.float32)) for _ in range(3))
    y, att = causal_attention(q, k, v)
    assert y.dtype == xp.float32 and att.dtype == xp.float32
    assert y.shape == (2, 3, 6, 4) and att.shape == (2, 3, 6, 6)
    att = np.asarray(att.get() if hasattr(att, "get") else att)
    np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-6)
    assert np.all(np.triu(att, k=1) == 0.0)                   # nothing attends to the future


def test_attention_future_tokens_do_not_change_the_past():
    attn = CausalSelfAttention(16, 4, rng=0)
    x = np.random.default_rng(1).standard_normal((2, 7, 16)).astype(np.float32)
    y1 = attn.forward(x)
    x2 = x.copy()
    x2[:, 4:] += 1.0                                           # change positions 4..6
    y2 = attn.forward(x2)
    np.testing.assert_array_equal(y1[:, :4], y2[:, :4])
    assert not np.allclose(y1[:, 4:], y2[:, 4:])
    assert attn.attention_weights.shape == (2, 4, 7, 7)


def test_attention_core_backward_matches_finite_differences():
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((2, 2, 5, 3)) for _ in range(3))
    dy = rng.standard_normal((2, 2, 5, 3))
    f = lambda: float((causal_attention(q, k, v)[0] * dy).sum())  # noqa: E731
    _, att = causal_attention(q, k, v)
    grads = causal_attention_backward(dy, q, k, v, att)
    for x, g in zip((q, k, v), grads):
        assert _rel_err(_numerical_grad(f, x), g) < 1e-7


def test_attention_module_backward_matches_finite_differences():
    attn = CausalSelfAttention(8, 2, rng=3, dtype=np.float64)
    for p in attn.parameters():                                # random biases too, so their gradients matter
        p.data = np.random.default_rng(4).standard_normal(p.shape) * 0.5
        p.grad = np.zeros_like(p.data)
    x = np.random.default_rng(5).standard_normal((2, 5, 8))
    dy = np.random.default_rng(6).standard_normal((2, 5, 8))
    f = lambda: float((attn.forward(x) * dy).sum())  # noqa: E731
    attn.zero_grad()
    attn.forward(x)
    dx = attn.backward(dy)
    assert _rel_err(_numerical_grad(f, x), dx) < 1e-7
    for name, p in attn.named_parameters():
        assert _rel_err(_numerical_grad(f, p.data), p.grad) < 1e-7, name


def test_attention_matches_torch_sdpa():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((2, 3, 6, 4)) for _ in range(3))
    dy = rng.standard_normal((2, 3, 6, 4))
    y, att = causal_attention(q, k, v)
    dq, dk, dv = causal_attention_backward(dy, q, k, v, att)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    ty = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours, theirs in ((dq, tq), (dk, tk), (dv, tv)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_attention_rejects_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        CausalSelfAttention(10, 3)
    attn = CausalSelfAttention(8, 2, rng=0)
    with pytest.raises(ValueError, match="last dimension 8"):
        attn.forward(np.zeros((1, 3, 6), np.float32))
    with pytest.raises(TypeError, match="floating"):
        attn.forward(np.zeros((1, 3, 8), np.int64))


# ---- config --------------------------------------------------------------------------------------

def test_presets_and_overrides():
    for name in PRESETS:
        cfg = GPTConfig.preset(name)
        assert cfg.dim % cfg.n_heads == 0
    cfg = GPTConfig.preset("char-small", vocab_size=70)
    assert cfg.vocab_size == 70 and cfg.n_layers == PRESETS["char-small"]["n_layers"]
    with pytest.raises(ValueError, match="unknown GPT preset 'huge'"):
        GPTConfig.preset("huge")
    with pytest.raises(ValueError, match="n_heads"):
        GPTConfig(vocab_size=10, context_length=4, n_layers=1, n_heads=3, dim=8)
    with pytest.raises(ValueError, match="context_length"):
        GPTConfig(vocab_size=10, context_length=0, n_layers=1, n_heads=2, dim=8)
    with pytest.raises(ValueError, match="dropout"):
        GPTConfig(vocab_size=10, context_length=4, n_layers=1, n_heads=2, dim=8, dropout=1.0)


def test_gpt2_small_parameter_count():
    # GPT-2 small with its head tied to the token embedding has 124,439,808 parameters.
    assert GPTConfig.preset("gpt2").parameter_counts()["total"] == 124_439_808


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_counts_per_component(bias):
    cfg = GPTConfig.preset("char-small", vocab_size=50, bias=bias)
    model = GPT(cfg, rng=0)
    counts = model.parameter_counts()
    assert counts == cfg.parameter_counts()
    assert counts["total"] == model.num_parameters() == sum(p.size for p in model.parameters())
    assert counts["token embedding (tied head)"] == 50 * cfg.dim


# ---- the model -------------------------------------------------------------------------------

def test_forward_shapes_dtypes_and_init():
    cfg = GPTConfig.preset("char-small", vocab_size=40)
    model = GPT(cfg, rng=0)
    idx, targets = _batch(cfg, 3, 16)
    logits = model.forward(idx)
    assert logits.shape == (3, 16, 40) and logits.dtype == np.float32
    loss = model.loss(idx, targets)
    assert isinstance(loss, float)
    assert abs(loss - math.log(40)) < 0.1                      # small init: nearly uniform predictions
    model.backward()
    for name, p in model.named_parameters():
        assert p.data.dtype == np.float32 and p.grad.dtype == np.float32, name
        assert np.all(np.isfinite(p.grad)), name
    std = float(model.h[0].mlp.c_proj.weight.data.std())
    assert abs(std - 0.02 / math.sqrt(2 * cfg.n_layers)) < 0.002     # GPT-2 residual scaling
    assert abs(float(model.h[0].mlp.c_fc.weight.data.std()) - 0.02) < 0.002


def test_same_seed_same_model():
    cfg = GPTConfig.preset("nano")
    a, b = GPT(cfg, rng=5), GPT(cfg, rng=5)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        np.testing.assert_array_equal(pa.data, pb.data)


def test_gpt_rejects_bad_idx():
    model = GPT(GPTConfig.preset("nano"), rng=0)
    with pytest.raises(TypeError, match="integer"):
        model.forward(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model.forward(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="context_length=8"):
        model.forward(np.zeros((1, 9), np.int64))
    with pytest.raises(ValueError, match="vocabulary"):
        model.forward(np.full((1, 3), 11))


def _random_float64_gpt(cfg: GPTConfig, seed: int = 0) -> GPT:
    """A float64 GPT whose LayerNorm and bias parameters are random too (so their gradients are exercised)."""
    model = GPT(cfg, rng=seed).astype(np.float64)
    rng = np.random.default_rng(seed + 100)
    for name, p in model.named_parameters():
        if p.data.ndim == 1:
            p.data[...] = (1.0 if name.endswith("ln_1.weight") or name.endswith("ln_2.weight")
                           or name == "ln_f.weight" else 0.0) + 0.1 * rng.standard_normal(p.shape)
        else:
            p.data[...] = 0.3 * rng.standard_normal(p.shape)
    return model


def test_gpt_gradients_match_finite_differences_for_every_parameter():
    cfg = GPTConfig.preset("nano")
    model = _random_float64_gpt(cfg)
    idx, targets = _batch(cfg, 2, 5)
    model.zero_grad()
    loss = model.loss(idx, targets)
    model.backward()
    f = lambda: model.loss(idx, targets)  # noqa: E731
    assert f() == loss                                         # forward is deterministic
    checked = 0
    for name, p in model.named_parameters():
        num = _numerical_grad(f, p.data)
        err = _rel_err(num, p.grad)
        assert err < 1e-6, f"{name}: relative error {err:.2e}"
        checked += p.size
    assert checked == model.num_parameters()


def test_gpt_matches_pytorch_loss_and_all_gradients():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    cfg = GPTConfig(vocab_size=23, context_length=12, n_layers=2, n_heads=4, dim=16)
    model = _random_float64_gpt(cfg, seed=3)
    idx, targets = _batch(cfg, 3, 10, seed=4)
    model.zero_grad()
    loss = model.loss(idx, targets)
    model.backward()

    # the same network written with plain torch operations, weights (IN, OUT) as ours
    P = {name: torch.tensor(p.data, requires_grad=True) for name, p in model.named_parameters()}
    B, T = idx.shape
    C, H = cfg.dim, cfg.n_heads
    D = C // H
    ti, tt = torch.tensor(idx), torch.tensor(targets)
    x = P["wte.weight"][ti] + P["wpe.weight"][:T]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for layer in range(cfg.n_layers):
        p = f"h.{layer}."
        h = F.layer_norm(x, (C,), P[p + "ln_1.weight"], P[p + "ln_1.bias"], eps=1e-5)
        qkv = h @ P[p + "attn.c_attn.weight"] + P[p + "attn.c_attn.bias"]
        q, k, v = (t.reshape(B, T, H, D).transpose(1, 2) for t in qkv.split(C, dim=-1))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D)
        att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ P[p + "attn.c_proj.weight"] + P[p + "attn.c_proj.bias"]
        h = F.layer_norm(x, (C,), P[p + "ln_2.weight"], P[p + "ln_2.bias"], eps=1e-5)
        h = F.gelu(h @ P[p + "mlp.c_fc.weight"] + P[p + "mlp.c_fc.bias"], approximate="tanh")
        x = x + h @ P[p + "mlp.c_proj.weight"] + P[p + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (C,), P["ln_f.weight"], P["ln_f.bias"], eps=1e-5)
    logits = x @ P["wte.weight"].T
    tloss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), tt.reshape(-1))
    tloss.backward()

    assert abs(loss - tloss.item()) <= 1e-5 * abs(tloss.item())
    assert set(P) == {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        err = _rel_err(p.grad, P[name].grad.numpy())
        assert err < 1e-5, f"{name}: relative error {err:.2e}"


def test_dropout_is_seeded_and_off_in_eval():
    cfg = GPTConfig.preset("nano", dropout=0.2)
    idx, _ = _batch(cfg, 2, 6)
    a, b = GPT(cfg, rng=1), GPT(cfg, rng=1)
    la, lb = a.forward(idx), b.forward(idx)
    np.testing.assert_array_equal(la, lb)                      # same seed: same dropout masks
    assert not np.array_equal(la, a.forward(idx))              # a fresh mask each call
    a.eval()
    np.testing.assert_array_equal(a.forward(idx), a.forward(idx))


def test_gpt_gradients_with_dropout_match_finite_differences():
    # replaying the dropout generator's state before each forward pass fixes the masks
    cfg = GPTConfig.preset("nano", dropout=0.3)
    model = _random_float64_gpt(cfg, seed=5)
    idx, targets = _batch(cfg, 2, 6, seed=6)
    start = model.dropout_rng.bit_generator.state

    def f():
        model.dropout_rng.bit_generator.state = start
        return model.loss(idx, targets)

    model.zero_grad()
    f()
    model.backward()
    params = dict(model.named_parameters())
    for name in ("wte.weight", "wpe.weight", "h.0.attn.c_attn.weight", "h.1.attn.c_proj.bias", "h.1.mlp.c_fc.weight"):
        err = _rel_err(_numerical_grad(f, params[name].data), params[name].grad)
        assert err < 1e-6, f"{name}: relative error {err:.2e}"


# ---- the plug points of exercises/05: attention and the block as functions of their weights -------------
def _copy(fn):
    """The library's own function under another identity, so that plug.use really plugs it."""
    def wrapped(*args, **kwargs):
        wrapped.calls += 1
        return fn.library(*args, **kwargs)
    wrapped.calls = 0
    return wrapped


def _train(model, steps=4, seed=0):
    from tinyllm.optim import AdamW

    rng = np.random.default_rng(seed)
    opt = AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        idx = rng.integers(0, model.config.vocab_size, size=(3, model.config.context_length))
        tgt = np.roll(idx, -1, axis=1)
        opt.zero_grad()
        losses.append(model.loss(idx, tgt))
        model.backward()
        opt.step()
    return np.array(losses)


@pytest.mark.parametrize("points", [("block_forward", "block_backward"), ("block_backward",),
                                    ("attention_forward", "attention_backward"), ("attention_forward",)])
@pytest.mark.parametrize("bias", [True, False])
def test_plugged_functions_train_like_the_modules(points, bias):
    """The library's functions plugged in (alone or in pairs) give the modules' loss history and weights."""
    from tinyllm import plug
    from tinyllm.models import gpt
    from tinyllm.nn import attention

    cfg = GPTConfig(vocab_size=13, context_length=8, n_layers=2, n_heads=2, dim=16, bias=bias)
    ref_model = GPT(cfg, rng=1)
    ref = _train(ref_model)
    model = GPT(cfg, rng=1)
    fns = {n: _copy(getattr(gpt if n.startswith("block") else attention, n)) for n in points}
    with plug.use(**fns):
        got = _train(model)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-4, atol=1e-5, err_msg=name)
    for fn in fns.values():
        assert fn.calls == 4 * cfg.n_layers


def test_block_functions_match_finite_differences():
    from tinyllm.models.gpt import block_backward, block_forward

    rng = np.random.default_rng(5)
    blk = GPT(GPTConfig(vocab_size=5, context_length=4, n_layers=1, n_heads=2, dim=6), rng=2).astype(np.float64).h[0]
    p = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in blk.weights().items()}
    x = rng.standard_normal((2, 4, 6))
    dy = rng.standard_normal((2, 4, 6))
    dx, grads = block_backward(dy, x, p, 2, 1e-3)
    f = lambda: float((block_forward(x, p, 2, 1e-3) * dy).sum())    # noqa: E731
    assert _rel_err(dx, _numerical_grad(f, x)) < 1e-6
    for name in ("ln_1.weight", "attn.c_attn.weight", "attn.c_proj.bias", "mlp.c_fc.weight"):
        assert _rel_err(grads[name], _numerical_grad(f, p[name])) < 1e-6, name


def test_plugged_block_refuses_dropout_and_is_off_after_the_block():
    from tinyllm import plug

    model = GPT(GPTConfig(vocab_size=7, context_length=4, n_layers=1, n_heads=1, dim=4, dropout=0.1), rng=0)
    idx = np.zeros((1, 4), dtype=np.int64)
    with plug.use(block_forward=lambda x, p, n_head, eps=1e-5: x):
        with pytest.raises(plug.PlugError, match="dropout"):
            model.forward(idx)
        model.eval()
        model.forward(idx)                                  # eval: no dropout, the plug runs
        assert model.h[0]._plugged_x is not None
    model.forward(idx)
    assert model.h[0]._plugged_x is None
