"""Hooks in Llama._forward and the interpretability tools built on them (tinyllm.interp),
checked on small random models, against float64 references and against HF transformers'
hidden states and attention probabilities."""
from __future__ import annotations

import numpy as np
import pytest

from tinyllm.generate import decode_step, prefill
from tinyllm.interp import (ablate_heads, direct_logit_attribution, induction_score, logit_lens, patch_residual,
                            run_with_cache)
from tinyllm.models.llama import TAP_POINTS, Llama, LlamaConfig

TINY = LlamaConfig(vocab_size=97, dim=48, n_layers=3, n_heads=6, n_kv_heads=2, head_dim=8, ffn_dim=80,
                   rope_base=10000.0, norm_eps=1e-5, context_length=128)
L, H, D, C = TINY.n_layers, TINY.n_heads, TINY.head_dim, TINY.dim


@pytest.fixture(scope="module")
def model():
    return Llama(TINY, rng=0)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(1).integers(0, TINY.vocab_size, (2, 11))


# ---------------------------------------------------------------------------------------------
# the hook mechanism
# ---------------------------------------------------------------------------------------------
def test_hooks_are_off_by_default_and_reading_changes_nothing(model, ids):
    assert model._taps is None
    plain = model(ids)
    seen = []
    with model.hooks(**{name: (lambda v, layer, name=name: seen.append((name, layer, v.shape))) for name in TAP_POINTS}):
        hooked = model(ids)
    assert model._taps is None
    np.testing.assert_array_equal(hooked, plain)
    B, T = ids.shape
    want_shapes = {"resid_pre": (B, T, C), "attn_pattern": (B, H, T, T), "head_out": (B, T, H, D),
                   "attn_out": (B, T, C), "mlp_out": (B, T, C), "resid_post": (B, T, C)}
    # called once per block, in the order a block computes them
    assert seen == [(name, layer, want_shapes[name]) for layer in range(L) for name in TAP_POINTS]


def test_hooks_are_restored_after_an_exception_and_nest(model, ids):
    calls = []
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks(resid_post=lambda v, layer: calls.append("x")):
            raise RuntimeError("boom")
    assert model._taps is None
    with model.hooks(resid_post=lambda v, layer: calls.append("outer")):
        with model.hooks(resid_post=lambda v, layer: calls.append("inner"), mlp_out=lambda v, layer: None):
            model(ids[:, :3])
        assert set(model._taps) == {"resid_post"}
        model(ids[:, :3])
    assert model._taps is None
    assert calls == ["outer", "inner"] * L + ["outer"] * L


def test_bad_hooks_get_clear_errors(model, ids):
    with pytest.raises(ValueError, match="unknown tap point.*'resid'.*resid_pre"):
        with model.hooks(resid=lambda v, layer: None):
            pass
    with pytest.raises(TypeError, match="must be callable"):
        with model.hooks(resid_pre=3):
            pass
    with pytest.raises(ValueError, match="returned shape \\(2, 11, 47\\)"):
        with model.hooks(mlp_out=lambda v, layer: v[..., :-1]):
            model(ids)
    assert model._taps is None


def test_replacing_values_changes_the_forward_pass(model, ids):
    with model.hooks(resid_post=lambda v, layer: v * 0 if layer == L - 1 else None):
        zero = model(ids)
    np.testing.assert_array_equal(zero, 0)                 # RMSNorm(0) = 0, so every logit is 0
    # zeroing all heads of a layer = zeroing that layer's attention output
    with model.hooks(head_out=ablate_heads([(1, h) for h in range(H)])):
        a = model(ids)
    with model.hooks(attn_out=lambda v, layer: v * 0 if layer == 1 else None):
        b = model(ids)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(a - model(ids)).max() > 1e-3
    # uniform attention over the visible keys instead of the softmax
    T = ids.shape[1]
    uniform = np.tril(np.ones((T, T), np.float32)) / np.arange(1, T + 1, dtype=np.float32)[:, None]
    with model.hooks(attn_pattern=lambda v, layer: np.broadcast_to(uniform, v.shape).copy()):
        _, cache = run_with_cache(model, ids, ["attn_pattern", "head_out"])
    np.testing.assert_array_equal(cache["attn_pattern"][0, 0, 0], uniform)


def test_hooks_run_in_cached_decoding(model, ids):
    full, cache_full = run_with_cache(model, ids[:1], ["resid_post"])
    steps = []
    with model.hooks(resid_post=lambda v, layer: steps.append(v.copy()) if layer == L - 1 else None):
        _, cache = prefill(model, ids[:1, :-1], max_new_tokens=1)
        decode_step(model, cache, ids[:1, -1])
    assert [s.shape for s in steps] == [(1, ids.shape[1] - 1, C), (1, 1, C)]
    np.testing.assert_allclose(steps[1][0, 0], cache_full["resid_post"][-1, 0, -1], atol=1e-4)


# ---------------------------------------------------------------------------------------------
# what the tap points hold
# ---------------------------------------------------------------------------------------------
def test_cached_values_fit_together(model, ids):
    logits, c = run_with_cache(model, ids, list(TAP_POINTS))
    np.testing.assert_array_equal(logits, model(ids))
    np.testing.assert_array_equal(c["resid_pre"][0], model.tok_embd.data[ids])
    np.testing.assert_array_equal(c["resid_pre"][1:], c["resid_post"][:-1])
    np.testing.assert_allclose(c["resid_post"], c["resid_pre"] + c["attn_out"] + c["mlp_out"], atol=1e-5)
    wo = np.stack([b.wo.data for b in model.blocks]).reshape(L, H, D, C)
    np.testing.assert_allclose(np.einsum("lbthd,lhdc->lbtc", c["head_out"], wo), c["attn_out"], atol=1e-5)
    p = c["attn_pattern"]                                   # (L, B, H, T, T)
    np.testing.assert_allclose(p.sum(-1), 1, atol=1e-5)
    assert np.all(np.triu(p, 1) == 0)                       # causal
    # the logit lens of the last block is the model's own softmax
    head = model.tok_embd.data.T
    prob, rank = logit_lens(c["resid_post"][:, 0], model.norm.data, head, ids[0], eps=TINY.norm_eps)
    z = logits[0].astype(np.float64)
    want = np.exp(z - z.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(prob[-1], want[np.arange(ids.shape[1]), ids[0]], rtol=1e-4)
    np.testing.assert_array_equal(rank[-1], (z > z[np.arange(ids.shape[1]), ids[0]][:, None]).sum(-1))


def test_tap_points_match_transformers_hidden_states_and_attentions():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from test_llama import TINY as HF_TINY, _gguf_tensors_from_hf, _hf_tiny
    from tinyllm.models.gguf_map import weights_from_gguf

    hf = _hf_tiny(torch, transformers)
    hf.config._attn_implementation = "eager"               # attention probabilities are returned only by eager
    ours = Llama.from_weights(HF_TINY, weights_from_gguf(HF_TINY, _gguf_tensors_from_hf(hf).__getitem__, threads=1))
    x = np.random.default_rng(5).integers(0, HF_TINY.vocab_size, (2, 17))
    with torch.no_grad():
        out = hf(torch.from_numpy(x), output_hidden_states=True, output_attentions=True)
    _, c = run_with_cache(ours, x, ["resid_pre", "attn_pattern"])
    n = HF_TINY.n_layers
    for layer in range(n):                                  # hidden_states[l] is the input of block l
        np.testing.assert_allclose(c["resid_pre"][layer], out.hidden_states[layer].numpy(), atol=2e-4)
        np.testing.assert_allclose(c["attn_pattern"][layer], out.attentions[layer].numpy(), atol=2e-5)
    assert out.attentions[0].numpy().std() > 0.05


# ---------------------------------------------------------------------------------------------
# the tools
# ---------------------------------------------------------------------------------------------
def test_logit_lens_against_float64_with_nondefault_eps():
    rng = np.random.default_rng(2)
    resid = (rng.standard_normal((4, 3, 16)) * 5).astype(np.float32)
    w = (1 + 0.3 * rng.standard_normal(16)).astype(np.float32)
    head = rng.standard_normal((16, 40)).astype(np.float32)
    targets = np.array([3, 39, 0])
    for eps in (1e-5, 30.0):
        prob, rank = logit_lens(resid, w, head, targets, eps=eps)
        r = resid.astype(np.float64)
        z = r / np.sqrt((r ** 2).mean(-1, keepdims=True) + eps) * w @ head.astype(np.float64)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        np.testing.assert_allclose(prob, p[..., np.arange(3), targets], rtol=1e-4, atol=1e-7)
        np.testing.assert_array_equal(rank, (z > z[..., np.arange(3), targets][..., None]).sum(-1))
        assert prob.shape == rank.shape == (4, 3)


def test_induction_score_reads_the_token_after_the_previous_occurrence():
    tokens = np.array([7, 1, 2, 3, 1, 2, 3, 9])             # 1, 2, 3 repeat; 7 and 9 do not
    T = len(tokens)
    p = np.zeros((2, 3, T, T), np.float32)
    p[0, 1, 4, 2] = p[0, 1, 5, 3] = p[0, 1, 6, 4] = 1.0     # a perfect induction head
    p[1, 2, 4, 1] = p[1, 2, 5, 2] = p[1, 2, 6, 3] = 1.0     # attends to the previous occurrence itself
    s = induction_score(p, tokens)
    assert s.shape == (2, 3)
    assert s[0, 1] == 1.0 and s[1, 2] == 0.0 and s.sum() == 1.0
    # the most recent previous occurrence counts: 5 at 0, 2, 4 and 6 at 1, 3 -> queries 2, 3, 4 read keys 1, 2, 3
    q = np.zeros((1, 1, 5, 5), np.float32)
    q[0, 0, 2, 1] = q[0, 0, 3, 2] = q[0, 0, 4, 3] = 1.0
    assert induction_score(q, [5, 6, 5, 6, 5])[0, 0] == 1.0
    q[0, 0, 4, 3], q[0, 0, 4, 1] = 0.0, 1.0                 # the first occurrence's successor does not count
    np.testing.assert_allclose(induction_score(q, [5, 6, 5, 6, 5])[0, 0], 2 / 3)
    assert np.isnan(induction_score(q, [1, 2, 3, 4, 5])).all()


def test_patching_recovers_the_clean_metric_where_the_prompts_differ(model):
    clean = np.array([[5, 6, 7, 8, 9, 10]])
    corrupt = clean.copy()
    corrupt[0, 2] = 50
    metric = lambda logits: logits[:, 3] - logits[:, 4]     # noqa: E731
    clean_logits, c = run_with_cache(model, clean, ["resid_pre"])
    corrupt_logits = model(corrupt)
    grid = patch_residual(model, corrupt, c["resid_pre"], metric)
    assert grid.shape == (L, 6)
    m_clean, m_corrupt = metric(clean_logits[:, -1])[0], metric(corrupt_logits[:, -1])[0]
    assert abs(m_clean - m_corrupt) > 1e-3
    np.testing.assert_allclose(grid[0, 2], m_clean, atol=1e-4)     # the differing token, before block 0: all of it
    np.testing.assert_allclose(grid[:, :2], m_corrupt, atol=1e-4)   # positions before it carry nothing different
    _, own = run_with_cache(model, corrupt, ["resid_pre"])
    np.testing.assert_allclose(patch_residual(model, corrupt, own["resid_pre"], metric), m_corrupt, atol=1e-4)
    with pytest.raises(ValueError, match="same token length"):
        patch_residual(model, corrupt[:, :5], c["resid_pre"], metric)


def test_direct_logit_attribution_adds_up_to_the_logit_difference(model, ids):
    logits, c = run_with_cache(model, ids, ["resid_pre", "attn_out", "mlp_out", "resid_post"])
    final = c["resid_post"][-1, 1, -1]                      # (C,)
    parts = np.concatenate([c["resid_pre"][0, 1, -1][None], c["attn_out"][:, 1, -1], c["mlp_out"][:, 1, -1]])
    head = model.tok_embd.data.T
    direction = head[:, 3] - head[:, 4]
    dla = direct_logit_attribution(parts, final, model.norm.data, direction, eps=TINY.norm_eps)
    assert dla.shape == (1 + 2 * L,)
    np.testing.assert_allclose(dla.sum(), logits[1, -1, 3] - logits[1, -1, 4], atol=1e-4)
    big = direct_logit_attribution(parts, final, model.norm.data, direction, eps=1e3)
    assert abs(big.sum()) < abs(dla.sum())                  # eps is used
