"""The name table (tinyllm.models.gguf_map), Llama.weights / from_weights and LlamaConfig.replace.

Parity with transformers through the table: tests/test_llama.py; kept-quantised loading:
tests/test_quantized_weights.py."""
from __future__ import annotations

import numpy as np
import pytest

from tinyllm.errors import ConfigError, GGUFError
from tinyllm.models import gguf_map
from tinyllm.models.gguf_map import (BLOCK_TENSORS, GLOBAL_TENSORS, gguf_tensors, permute_qk, tensor_names,
                                     unpermute_qk, weights_from_gguf)
from tinyllm.models.llama import BLOCK_STORAGE, BLOCK_WEIGHTS, Llama, LlamaConfig, fused_columns, weight_shapes

TINY = LlamaConfig(vocab_size=97, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, head_dim=8, ffn_dim=80,
                   rope_base=10000.0, norm_eps=1e-5, context_length=128)
IDS = np.random.default_rng(3).integers(0, TINY.vocab_size, (2, 9))


def test_permutation_roundtrip_and_pairs():
    w = np.arange(48 * 3, dtype=np.float32).reshape(48, 3)             # (OUT=48, IN=3): 6 heads of 8
    np.testing.assert_array_equal(unpermute_qk(permute_qk(w, 6), 6), w)
    np.testing.assert_array_equal(permute_qk(unpermute_qk(w, 6), 6), w)
    # GGUF row 2i + j of a head is HF row i + j * D/2
    g = permute_qk(w, 6)
    np.testing.assert_array_equal(g[1], w[4])
    np.testing.assert_array_equal(g[2], w[1])
    out = np.empty_like(w)
    assert unpermute_qk(g, 6, out=out) is out
    np.testing.assert_array_equal(out, w)
    b = np.arange(24 * 18, dtype=np.uint8).reshape(24, 18)             # rows of GGML block bytes move the same way
    np.testing.assert_array_equal(unpermute_qk(permute_qk(b, 3), 3), b)


def test_the_table_names_every_weight_once():
    rows = tensor_names(TINY)
    assert {r.model for r in rows} == set(weight_shapes(TINY))          # exactly the model's weights
    for field in ("model", "gguf", "hf"):
        assert len({getattr(r, field) for r in rows}) == len(rows)
    assert [t.model.removeprefix("blk.{i}.") for t in BLOCK_TENSORS] == list(BLOCK_WEIGHTS)
    assert {t.model for t in GLOBAL_TENSORS} == {"tok_embd", "norm", "head"}
    assert {r.model for r in tensor_names(TINY.replace(tie_embeddings=False))} == \
        set(weight_shapes(TINY.replace(tie_embeddings=False)))
    assert {t.rotary for t in BLOCK_TENSORS} == {None, "n_heads", "n_kv_heads"}


def test_weights_are_named_views_and_rebuild_the_same_model():
    model = Llama(TINY, rng=0)
    w = model.weights()
    assert set(w) == set(weight_shapes(TINY))
    assert all(tuple(w[k].shape) == s for k, s in weight_shapes(TINY).items())
    blk = model.blocks[1]
    assert np.shares_memory(w["blk.1.wk"], blk.wqkv.data) and np.shares_memory(w["blk.1.w_up"], blk.wgu.data)
    assert w["blk.1.w_down"] is blk.wdown.data and w["tok_embd"] is model.tok_embd.data
    rebuilt = Llama.from_weights(TINY, w)
    np.testing.assert_array_equal(rebuilt(IDS), model(IDS))
    for name in BLOCK_STORAGE:
        np.testing.assert_array_equal(getattr(rebuilt.blocks[1], name).data, getattr(blk, name).data)
    # untied: the head is a named weight too
    untied = Llama(TINY.replace(tie_embeddings=False), rng=1)
    np.testing.assert_array_equal(Llama.from_weights(untied.config, untied.weights())(IDS), untied(IDS))


def test_fused_columns_tile_each_stored_matrix_in_order():
    cfg = TINY.replace(n_heads=4, n_kv_heads=1, head_dim=6, ffn_dim=20)
    cols = fused_columns(cfg)
    assert list(cols) == list(BLOCK_WEIGHTS)
    blk = Llama(cfg, rng=2).blocks[0]
    for stored, parts in BLOCK_STORAGE.items():
        width = getattr(blk, stored).data.shape[-1]
        slices = [cols[p][1] for p in parts]
        assert all(cols[p][0] == stored for p in parts)
        assert [s.start for s in slices] == [0] + [s.stop for s in slices[:-1]] and slices[-1].stop == width
    assert cols["wv"][1] == slice((4 + 1) * 6, (4 + 2) * 6) and cols["w_up"][1] == slice(20, 40)


def test_writing_into_weights_changes_the_model():
    model = Llama(TINY, rng=0)
    before = model(IDS)
    model.weights()["blk.0.wv"][...] = 0                                # the value columns of the fused wqkv
    assert not np.allclose(model(IDS), before)
    assert not model.blocks[0].wqkv.data[:, (TINY.n_heads + TINY.n_kv_heads) * TINY.head_dim:].any()


def test_a_model_exported_to_gguf_names_loads_back_identically():
    model = Llama(TINY, rng=2)
    tensors = gguf_tensors(TINY, model.weights())
    assert tensors["blk.0.attn_q.weight"].shape == (TINY.n_heads * TINY.head_dim, TINY.dim)     # (OUT, IN)
    for threads in (1, 2):
        loaded = Llama(TINY, weights=weights_from_gguf(TINY, tensors.__getitem__, threads=threads))
        for a, b in zip(model.parameters(), loaded.parameters()):
            np.testing.assert_array_equal(a.data, b.data)
        # equal weights; the loader keeps the tied embedding as a (C, V) matrix (E is its transposed view),
        # so the head's product runs in another memory order: float32 rounding, not another model
        np.testing.assert_allclose(loaded(IDS), model(IDS), rtol=0, atol=1e-6)


def test_gguf_tensor_of_a_wrong_shape_is_a_clear_error():
    tensors = gguf_tensors(TINY, Llama(TINY, rng=2).weights())
    tensors["blk.1.ffn_up.weight"] = tensors["blk.1.ffn_up.weight"][:-1]
    with pytest.raises(GGUFError, match=r"'blk.1.ffn_up.weight' has shape \(79, 48\), expected \(80, 48\)"):
        weights_from_gguf(TINY, tensors.__getitem__, threads=1)


def test_from_weights_names_what_is_wrong():
    w = Llama(TINY, rng=0).weights()
    with pytest.raises(ConfigError, match=r"lack \['blk.1.wq'\]"):
        Llama.from_weights(TINY, {k: v for k, v in w.items() if k != "blk.1.wq"})
    with pytest.raises(ConfigError, match=r"unexpected \['blk.1.wk', 'blk.1.wq', 'blk.1.wv'\]"):  # two namings
        Llama.from_weights(TINY, {**w, "blk.1.wqkv": Llama(TINY, rng=0).blocks[1].wqkv.data})
    with pytest.raises(ConfigError, match=r"'blk.0.w_gate' has shape \(48, 79\), expected \(48, 80\)"):
        Llama.from_weights(TINY, {**w, "blk.0.w_gate": w["blk.0.w_gate"][:, :-1]})
    with pytest.raises(ConfigError, match="lack"):
        Llama.from_weights(TINY.replace(n_layers=3), w)
    with pytest.raises(ConfigError, match="dict"):
        Llama.from_weights(TINY, list(w.values()))


def test_config_replace_validates():
    assert TINY.replace(n_layers=1) == LlamaConfig(**{**TINY.to_dict(), "n_layers": 1})
    assert TINY.replace() == TINY
    for bad in ({"n_kv_heads": 4}, {"head_dim": 7}, {"dim": 0}, {"n_layers": 1.5}, {"n_layers": True},
                {"norm_eps": -1e-5}, {"rope_base": 0.0}):
        with pytest.raises(ConfigError):
            TINY.replace(**bad)
    with pytest.raises(ConfigError, match="no field"):
        TINY.replace(n_layer=1)


def test_hf_state_dict_missing_a_key_is_a_clear_error():
    sd = gguf_map.hf_state_dict(TINY, Llama(TINY, rng=0).weights())
    del sd["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ConfigError, match="model.layers.1.mlp.up_proj.weight"):
        gguf_map.weights_from_hf(TINY, sd)
