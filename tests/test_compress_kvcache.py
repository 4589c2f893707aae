"""The int8 KV cache: bytes per token, close logits, and the plain cache unchanged."""
import numpy as np
import pytest

from tinyllm.compress.kvcache import cache_perplexity
from tinyllm.evaluate import perplexity
from tinyllm.models.llama import KVCache, Llama, LlamaConfig

TINY = LlamaConfig(vocab_size=97, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, head_dim=8, ffn_dim=80,
                   context_length=128)


def test_int8_cache_bytes_per_token():
    c = TINY
    fp = KVCache(c, 2, 32)
    q = KVCache(c, 2, 32, int8=True)
    per_token_fp = 2 * c.n_layers * c.n_kv_heads * c.head_dim * 4
    assert fp.bytes_per_token == per_token_fp
    assert q.bytes_per_token == 2 * c.n_layers * c.n_kv_heads * (c.head_dim + 4)   # int8 codes + a float32 scale
    assert q.k.dtype == np.int8 and q.k_scale.shape == (c.n_layers, 2, c.n_kv_heads, 32, 1)


def test_int8_cache_decodes_close_to_the_float_cache():
    m = Llama(TINY, rng=0)
    ids = np.random.default_rng(1).integers(0, TINY.vocab_size, (2, 24))
    ref = m(ids)                                                            # no cache
    outs = {}
    for int8 in (False, True):
        cache = KVCache(TINY, 2, 24, int8=int8)
        first = m(ids[:, :16], cache=cache)                                 # prefill
        steps = [m(ids[:, t:t + 1], cache=cache) for t in range(16, 24)]    # decode one at a time
        outs[int8] = np.concatenate([first] + steps, axis=1)
    np.testing.assert_allclose(outs[False], ref, atol=1e-4)                 # the plain cache is exact
    err = np.abs(outs[True] - ref).max()
    assert 0 < err < 0.05 * np.abs(ref).max()                               # int8 rounding: small but real


def test_cache_perplexity_matches_one_window_without_quantisation():
    m = Llama(TINY, rng=0)
    ids = np.random.default_rng(2).integers(0, TINY.vocab_size, 100)
    p = cache_perplexity(m, ids, chunk=32)
    assert p == pytest.approx(perplexity(m, ids, window=100), rel=1e-5)
    q = cache_perplexity(m, ids, chunk=32, int8=True)
    assert q != p and q == pytest.approx(p, rel=0.05)
    with pytest.raises(ValueError, match="chunk"):
        cache_perplexity(m, ids, chunk=0)
