"""The parts of GPU decoding that can be checked on the CPU.

- Llama's forward runs through ``tinyllm.kernels`` (one code path: NumPy reference here,
  fused CuPy kernels on a GPU);
- a cached decode step reads nothing back from the arrays (no ``int(...)``/``bool(...)``
  of array values), which on a GPU would be a device-to-host synchronisation and would
  make the step impossible to capture as a CUDA graph;
- decoding with the write slot on the device (static shapes, what a CUDA graph replays)
  gives the same logits as ordinary decoding;
- ``CudaGraphDecoder`` refuses NumPy models with a clear error.

The capture itself runs only on a GPU (``tests/test_gpu_parity.py``).
"""
from __future__ import annotations

import numpy as np
import pytest

from tinyllm import kernels
from tinyllm.generate import CudaGraphDecoder, decode_step, left_pad, prefill, stream_generate
from tinyllm.models import llama
from tinyllm.models.llama import KVCache, Llama, LlamaConfig
from test_llama import TINY, model  # noqa: F401  (the same tiny model and its fixture)


def test_llama_names_are_the_kernels():
    assert llama.rms_norm is kernels.rms_norm
    assert llama.apply_rope.plug_point == "apply_rope"          # the lesson's RoPE (positions, base) over kernels.rope


def test_forward_calls_each_kernel(model, monkeypatch):
    calls = {}
    # on the CPU the forward checks its arrays once and calls the unchecked NumPy references
    for name in ("rms_norm", "rope", "swiglu", "softmax", "rms_norm_reference", "rope_reference", "swiglu_reference"):
        fn = getattr(kernels, name)

        def counted(*args, _fn=fn, _name=name.removesuffix("_reference"), **kw):
            calls[_name] = calls.get(_name, 0) + 1
            return _fn(*args, **kw)

        monkeypatch.setattr(kernels, name, counted)
    model(np.arange(5)[None])
    L = TINY.n_layers
    assert calls == {"rms_norm": 2 * L + 1, "rope": L, "swiglu": L, "softmax": L}


class NoHostRead(np.ndarray):
    """An array whose values may not be read into Python (on a GPU: a device-to-host copy)."""

    def _refuse(self, *args, **kwargs):
        raise AssertionError("a decode step read array values on the host")

    __bool__ = __int__ = __float__ = __index__ = item = tolist = _refuse


def _guard(a):
    return a.view(NoHostRead)


@pytest.mark.parametrize("padded", [False, True])
def test_cached_decode_reads_nothing_back(model, padded):
    ids, mask = left_pad([[1, 2, 3, 4, 5], [7, 8, 9]])
    logits, cache = prefill(model, ids, mask if padded else None, max_new_tokens=4)
    cache.valid, cache.n_valid = _guard(cache.valid), _guard(cache.n_valid)
    cache.k, cache.v = _guard(cache.k), _guard(cache.v)
    for _ in range(3):
        logits = decode_step(model, cache, _guard(np.asarray(logits).argmax(-1)))
    assert cache.length == 8


@pytest.mark.parametrize("padded", [False, True])
def test_device_slot_decoding_matches_ordinary_decoding(model, padded):
    """The static-shape step a CUDA graph replays: all S_max slots, the empty ones masked."""
    ids, mask = left_pad([[1, 2, 3, 4, 5], [7, 8, 9]])
    runs = []
    for on_device in (False, True):
        logits, cache = prefill(model, ids, mask if padded else None, max_new_tokens=6)
        if on_device:
            cache.track_slot_on_device()
        out, nxt = [logits], logits.argmax(-1)
        for _ in range(5):
            logits = decode_step(model, cache, nxt)
            out.append(logits)
            nxt = logits.argmax(-1)
        runs.append(np.stack(out))                                         # (steps, B, V)
        assert cache.length == ids.shape[1] + 5
        if on_device:
            np.testing.assert_array_equal(cache.slot, [ids.shape[1] + 5])
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(runs[1].argmax(-1), runs[0].argmax(-1))


def test_device_slot_takes_one_token_at_a_time(model):
    cache = model.new_cache(1, 10).track_slot_on_device()
    with pytest.raises(ValueError, match="one token at a time"):
        model(np.arange(3)[None], cache=cache)


def test_cache_size_errors():
    with pytest.raises(ValueError, match="exceeds the model's context length"):
        KVCache(TINY, 1, TINY.context_length + 1)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_len must be a positive int"):
            KVCache(TINY, 1, bad)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        KVCache(TINY, 0, 8)


def test_rope_tables_are_sized_by_the_cache():
    m = Llama(LlamaConfig(vocab_size=31, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, ffn_dim=32,
                          context_length=8192), rng=0)
    assert m.rope_cos.shape[0] == 4096
    cache = KVCache(m.config, 1, 5000)                         # made by hand, not by new_cache
    cache.length = 4500
    m(np.array([[3]]), cache=cache)
    assert m.rope_cos.shape[0] == 5000


def test_cuda_graph_decoder_needs_the_gpu(model):
    _, cache = prefill(model, np.array([[1, 2, 3]]), max_new_tokens=2)
    with pytest.raises(TypeError, match="CudaGraphDecoder needs a model and a KV cache on the GPU"):
        CudaGraphDecoder(model, cache)
    with pytest.raises(TypeError, match="on the GPU"):
        next(stream_generate(model, [1, 2, 3], 4, cuda_graph=True))
