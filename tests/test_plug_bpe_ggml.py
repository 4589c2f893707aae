"""Plug points of lessons 04 and 07: bpe_merge (BPE training and encoding) and the GGML row dequantisers."""
import numpy as np
import pytest

from tinyllm import plug
from tinyllm.errors import QuantizationError, TokenizerError
from tinyllm.io import ggml
from tinyllm.tokenizers.bpe import BPETokenizer, bpe_merge

TEXT = "the cat sat on the mat; the hat is flat. " * 20


def my_merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def test_bpe_merge_is_the_merge_of_training_and_encoding():
    assert bpe_merge([5, 5, 5, 1, 5, 5], (5, 5), 7) == [7, 5, 1, 7]
    calls = []

    def spy(ids, pair, new_id):
        calls.append(pair)
        return my_merge(ids, pair, new_id)

    ref = BPETokenizer.train(TEXT, 300)
    ref.encode(TEXT)                                                    # fills the cache
    with plug.use(bpe_merge=spy):
        tok = BPETokenizer.train(TEXT, 300)
        n_train = len(calls)
        ids = tok.encode(TEXT)
    assert tok.merges == ref.merges and ids == ref.encode(TEXT)
    assert n_train > 0 and len(calls) > n_train
    with plug.use(bpe_merge=lambda ids, pair, new_id: list(ids)):     # plugged: no cached result is used...
        with pytest.raises(TokenizerError, match="must replace the pair"):
            ref.encode(TEXT)
    assert ref.encode(TEXT) == ids                                      # ...and none is left behind
    with plug.use(bpe_merge=lambda ids, pair, new_id: list(ids)):      # a merge that does nothing
        assert BPETokenizer.train(TEXT, 300).merges != ref.merges


def test_the_row_dequantisers_decode_every_q8_0_and_q4_1_tensor():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 32 * 8192)).astype(np.float32)
    for t, fn in (("Q8_0", "dequantize_row_q8_0"), ("Q4_1", "dequantize_row_q4_1")):
        raw = ggml.quantize(w, t)
        ref = ggml.dequantize(raw, t, w.shape)
        np.testing.assert_array_equal(getattr(ggml, fn)(raw.reshape(-1)).reshape(w.shape), ref)
        calls = []

        def spy(raw, _fn=getattr(ggml, fn).library):
            calls.append(raw.size)
            return _fn(raw)

        with plug.use(**{fn: spy}):
            got = ggml.dequantize(raw, t, w.shape)
        np.testing.assert_array_equal(got, ref)
        assert sum(calls) == raw.size and len(calls) > 1                    # chunk by chunk
        with plug.use(**{fn: lambda raw: np.zeros(3, np.float32)}):
            try:
                ggml.dequantize(raw, t, w.shape)
            except QuantizationError as e:
                assert fn in str(e) and "expected float32" in str(e)
            else:
                raise AssertionError("a wrong-sized result must be refused")


def test_plugs_reach_the_loader_threads():
    """weights_from_gguf dequantises on worker threads; a plugged dequantiser must run there too."""
    from tinyllm.models.gguf_map import weights_from_gguf
    from tinyllm.models.llama import LlamaConfig

    cfg = LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64,
                      context_length=16)
    rng = np.random.default_rng(1)
    shapes = {"token_embd.weight": (64, 32), "output_norm.weight": (32,)}
    for i in range(2):
        p = f"blk.{i}."
        shapes.update({p + "attn_q.weight": (32, 32), p + "attn_k.weight": (16, 32), p + "attn_v.weight": (16, 32),
                       p + "attn_output.weight": (32, 32), p + "ffn_gate.weight": (64, 32), p + "ffn_up.weight": (64, 32),
                       p + "ffn_down.weight": (32, 64), p + "attn_norm.weight": (32,), p + "ffn_norm.weight": (32,)})
    raw = {n: ggml.quantize(rng.standard_normal(s).astype(np.float32), "Q8_0") for n, s in shapes.items() if len(s) == 2}

    def get(name):
        if name in raw:
            return ggml.dequantize(raw[name], "Q8_0", shapes[name])
        return np.ones(shapes[name], np.float32)

    calls = []

    def spy(r):
        calls.append(r.size)
        return ggml.dequantize_row_q8_0.library(r)

    ref = weights_from_gguf(cfg, get, threads=2)
    with plug.use(dequantize_row_q8_0=spy):
        got = weights_from_gguf(cfg, get, threads=2)
    assert len(calls) == len(raw) and all(np.array_equal(got[k], ref[k]) for k in ref)
