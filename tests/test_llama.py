"""The Llama forward pass on small random models: cache, batching, dtypes, and
parity with HF transformers' LlamaForCausalLM (when installed)."""
from __future__ import annotations

import numpy as np
import pytest

from tinyllm.generate import decode_step, generate_batch, left_pad, prefill, stream_generate
from tinyllm.models.gguf_map import (config_from_gguf_metadata, gguf_tensors, hf_state_dict, unpermute_qk,
                                     weights_from_gguf, weights_from_hf)
from tinyllm.models.llama import KVCache, Llama, LlamaConfig, random_weights

TINY = LlamaConfig(vocab_size=97, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, head_dim=8, ffn_dim=80,
                   rope_base=10000.0, norm_eps=1e-5, context_length=128)


@pytest.fixture(scope="module")
def model():
    return Llama(TINY, rng=0)


def test_config_from_gguf_metadata():
    md = {"general.architecture": "llama", "llama.block_count": 30, "llama.context_length": 8192,
          "llama.embedding_length": 576, "llama.feed_forward_length": 1536, "llama.attention.head_count": 9,
          "llama.attention.head_count_kv": 3, "llama.rope.freq_base": 100000.0,
          "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": 49152, "llama.rope.dimension_count": 64}
    assert config_from_gguf_metadata(md) == LlamaConfig()
    from tinyllm.errors import GGUFError

    with pytest.raises(GGUFError, match="llama.block_count"):
        config_from_gguf_metadata({k: v for k, v in md.items() if k != "llama.block_count"})
    with pytest.raises(GGUFError, match="architecture"):
        config_from_gguf_metadata({**md, "general.architecture": "gpt2"})


def test_config_rejects_bad_heads():
    with pytest.raises(ValueError, match="n_kv_heads"):
        LlamaConfig(n_heads=9, n_kv_heads=2)


def test_forward_shapes_and_float32(model):
    ids = np.random.default_rng(1).integers(0, TINY.vocab_size, (2, 7))
    logits = model(ids)
    assert logits.shape == (2, 7, TINY.vocab_size)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
    assert model(ids, last_only=True).shape == (2, 1, TINY.vocab_size)


def test_weights_stay_float32(model):
    assert all(p.data.dtype == np.float32 for p in model.parameters())
    assert model.rope_cos.dtype == np.float32


def test_causal(model):
    ids = np.random.default_rng(2).integers(0, TINY.vocab_size, (1, 9))
    a = model(ids)
    ids2 = ids.copy()
    ids2[0, 6:] = (ids2[0, 6:] + 1) % TINY.vocab_size
    b = model(ids2)
    np.testing.assert_allclose(a[0, :6], b[0, :6], atol=1e-6)
    assert not np.allclose(a[0, 6:], b[0, 6:])


def test_cache_prefill_then_decode_matches_full_forward(model):
    ids = np.random.default_rng(3).integers(0, TINY.vocab_size, (2, 12))
    full = model(ids)                                                      # (B, T, V)
    logits, cache = prefill(model, ids[:, :8], max_len=12)
    np.testing.assert_allclose(logits, full[:, 7], atol=1e-5)
    assert isinstance(cache, KVCache) and cache.k.shape == (2, 2, 2, 12, 8)
    k_buffer = cache.k
    for t in range(8, 12):
        logits = decode_step(model, cache, ids[:, t])
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5)
    assert cache.k is k_buffer and cache.length == 12                     # preallocated, never regrown
    with pytest.raises(ValueError, match="cache holds 12"):
        decode_step(model, cache, ids[:, 0])


def test_left_padded_batch_matches_single_prompts(model):
    rng = np.random.default_rng(4)
    prompts = [rng.integers(1, TINY.vocab_size, n).tolist() for n in (3, 9, 6)]
    ids, mask = left_pad(prompts, pad_id=0)
    assert ids.shape == (3, 9) and mask.sum() == 18
    logits = model(ids, attention_mask=mask)[:, -1]
    for b, p in enumerate(prompts):
        np.testing.assert_allclose(logits[b], model(np.array([p]))[0, -1], atol=1e-5)
    batch = generate_batch(model, prompts, 6)
    for b, p in enumerate(prompts):
        assert batch[b] == list(stream_generate(model, p, 6))


def test_batch_stop_tokens_and_seed(model):
    prompts = [[5, 6, 7], [8, 9]]
    free = generate_batch(model, prompts, 8, temperature=1.0, seed=3)
    assert free == generate_batch(model, prompts, 8, temperature=1.0, seed=3)
    stop = free[0][2]
    cut = generate_batch(model, prompts, 8, temperature=1.0, seed=3, stop_ids=[stop])
    assert cut[0] == free[0][:free[0].index(stop)]
    assert stop not in cut[1]


def test_stream_generate_matches_uncached_greedy(model):
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    ids = np.array([prompt])
    for _ in range(10):                                                   # the plain loop, no cache
        ids = np.concatenate([ids, model(ids)[:, -1].argmax(-1)[:, None]], axis=1)
    assert list(stream_generate(model, prompt, 10)) == ids[0, len(prompt):].tolist()


def test_repetition_penalty_reduces_repeats(model):
    prompt = [1, 2, 3]
    plain = list(stream_generate(model, prompt, 30))
    penalised = list(stream_generate(model, prompt, 30, repetition_penalty=1.8))
    assert len(set(penalised)) >= len(set(plain))


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="ids must be an integer array"):
        model(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="attention_mask"):
        model(np.zeros((2, 3), dtype=np.int64), attention_mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match="context length"):
        model.new_cache(1, 10_000)
    with pytest.raises(ValueError, match="non-empty"):
        list(stream_generate(model, [], 3))


# ---------------------------------------------------------------------------
# live parity with HF transformers on a random tiny Llama, read through the GGUF layout
# ---------------------------------------------------------------------------
def _hf_tiny(torch, transformers):
    cfg = transformers.LlamaConfig(
        vocab_size=TINY.vocab_size, hidden_size=TINY.dim, intermediate_size=TINY.ffn_dim,
        num_hidden_layers=TINY.n_layers, num_attention_heads=TINY.n_heads, num_key_value_heads=TINY.n_kv_heads,
        head_dim=TINY.head_dim, rms_norm_eps=TINY.norm_eps, max_position_embeddings=TINY.context_length,
        rope_parameters={"rope_type": "default", "rope_theta": TINY.rope_base}, tie_word_embeddings=True)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1)
            else:  # weights large enough for sharp attention and logits of order 1
                p.normal_(0.0, 0.3 if ("q_proj" in name or "k_proj" in name) else 0.15)
    return hf


def _gguf_tensors_from_hf(hf):
    """What llama.cpp's converter would store: (OUT, IN) matrices, q/k rows permuted (through the name table)."""
    return gguf_tensors(TINY, weights_from_hf(TINY, hf.state_dict()))


def test_matches_transformers_llama():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = _hf_tiny(torch, transformers)
    tensors = _gguf_tensors_from_hf(hf)
    ours = Llama.from_weights(TINY, weights_from_gguf(TINY, tensors.__getitem__, threads=2))
    ids = np.random.default_rng(5).integers(0, TINY.vocab_size, (2, 40))
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)).logits.numpy()
    got = ours(ids)
    assert got.dtype == np.float32
    assert ref.std() > 0.5
    np.testing.assert_allclose(got, ref, atol=2e-4, rtol=0)
    # reading the stored rows without undoing the permutation gives a different model
    wrong = dict(tensors)
    for i in range(TINY.n_layers):
        wrong[f"blk.{i}.attn_q.weight"] = unpermute_qk(tensors[f"blk.{i}.attn_q.weight"], TINY.n_heads)
        wrong[f"blk.{i}.attn_k.weight"] = unpermute_qk(tensors[f"blk.{i}.attn_k.weight"], TINY.n_kv_heads)
    bad = Llama.from_weights(TINY, weights_from_gguf(TINY, wrong.__getitem__, threads=1))
    assert np.abs(bad(ids) - ref).max() > 1e-2
    # the state dict converted straight to named weights is the same model, and converts back exactly
    named = weights_from_hf(TINY, hf.state_dict())
    np.testing.assert_allclose(Llama.from_weights(TINY, named)(ids), ref, atol=2e-4, rtol=0)
    back = hf_state_dict(TINY, ours.weights())
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    assert set(back) == set(sd) - {"lm_head.weight"}                        # tied: lm_head is the embedding
    assert all(np.array_equal(back[k], sd[k]) for k in back)


def test_padded_batch_matches_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = _hf_tiny(torch, transformers)
    ours = Llama.from_weights(TINY, weights_from_gguf(TINY, _gguf_tensors_from_hf(hf).__getitem__, threads=1))
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]]
    ids, mask = left_pad(prompts, pad_id=0)
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64))).logits.numpy()
    got = ours(ids, attention_mask=mask)
    np.testing.assert_allclose(got[mask], ref[mask], atol=2e-4, rtol=0)


# ---- the plug points of exercises/08: the block as plain functions ----------------------------------
def _library(name):
    from tinyllm import plug

    plug.points()                                               # every point registered
    return plug._POINTS[name]


@pytest.mark.parametrize("names", [("llama_block",), ("apply_rope",), ("swiglu_mlp",), ("gqa_attention",),
                                   ("llama_block", "apply_rope", "swiglu_mlp", "gqa_attention", "rms_norm")])
def test_the_block_functions_give_the_fused_forward(model, names):
    """Each point replaced by the library's own function (a copy, so the dispatch sees a plug) runs every block
    through llama_block, and the logits equal the fused forward's at the fused path's tolerance."""
    from tinyllm import plug

    ids = np.random.default_rng(3).integers(0, TINY.vocab_size, size=(2, 11))
    ref = model(ids)
    calls = []

    def spy(fn):
        def wrapped(*a, **k):
            calls.append(fn.__name__)
            return fn(*a, **k)
        return wrapped

    with plug.use(**{n: spy(_library(n)) for n in names}):
        got = model(ids)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    per_block = {"llama_block": 1, "apply_rope": 2, "swiglu_mlp": 1, "gqa_attention": 1, "rms_norm": 2}
    for n in names:
        extra = 1 if n == "rms_norm" else 0                     # the final norm
        assert calls.count(_library(n).__name__) == per_block[n] * TINY.n_layers + extra


def test_a_plugged_block_is_what_runs_and_refuses_the_cache(model):
    from tinyllm import plug

    ids = np.arange(7).reshape(1, 7)
    with plug.use(llama_block=lambda x, w, n_heads, n_kv_heads, positions, base=1e4, eps=1e-5: x):
        got = model(ids)                                        # blocks that do nothing: norm(E[ids]) @ E^T
        with pytest.raises(plug.PlugError, match="without a KV cache"):
            prefill(model, ids)
        with pytest.raises(plug.PlugError, match="resid_pre and resid_post"):
            with model.hooks(attn_out=lambda v, layer: None):
                model(ids)
    E = model.tok_embd.data
    want = (E[ids] / np.sqrt((E[ids] ** 2).mean(-1, keepdims=True) + TINY.norm_eps) * model.norm.data) @ E.T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model(ids), Llama(TINY, rng=0)(ids))  # unplugged again: the fused path


def test_block_weights_are_the_fused_matrices_unfused(model):
    w = model.block_weights(1)
    blk = model.blocks[1]
    np.testing.assert_array_equal(np.concatenate([w["wq"], w["wk"], w["wv"]], axis=1), blk.wqkv.data)
    np.testing.assert_array_equal(np.concatenate([w["w_gate"], w["w_up"]], axis=1), blk.wgu.data)
    assert w["wq"].shape == (TINY.dim, TINY.n_heads * TINY.head_dim) and w["w_down"].shape == (TINY.ffn_dim, TINY.dim)
