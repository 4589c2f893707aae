"""The same library code on the GPU gives the CPU's numbers (skipped without a usable GPU).

- SmolLM2 logits on CuPy equal the NumPy logits within 1e-3 (float32), with the
  fused kernels on and off (``kernels.set_fused``), for the full forward and for cached decoding;
- decoding with a captured CUDA graph (``CudaGraphDecoder``) gives the tokens and logits of
  ordinary decoding;
- a model with weights kept as Q4_1 / Q8_0 blocks (the fused dequantise-and-multiply kernel)
  gives the NumPy reference's logits;
- a few GPT training steps on CuPy follow the NumPy loss curve.

Run the whole suite on CuPy with ``TINYLLM_TEST_BACKENDS=numpy,cupy`` (the default
when a GPU is usable) or ``scripts/gpu_check.sh``.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from tinyllm import backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not backend.gpu_available(), reason=f"no usable GPU: {backend.gpu_problem()}"),
]


@contextlib.contextmanager
def _fused(enabled: bool):
    """The model always calls tinyllm.kernels; this switches the fused CuPy kernels on or off."""
    from tinyllm import kernels

    previous = kernels.set_fused(enabled)
    try:
        yield
    finally:
        kernels.set_fused(previous)


def _logits_cpu_and_gpu(model, ids):
    """Full-forward logits and 3 cached greedy decode steps' logits, on the CPU and then on the GPU."""
    from tinyllm.generate import decode_step, prefill

    def run(use_fused):
        with _fused(use_fused):
            full = backend.to_numpy(model.forward(model.xp.asarray(ids)))                 # (B, T, V)
            logits, cache = prefill(model, model.xp.asarray(ids), max_new_tokens=4)
            steps = [backend.to_numpy(logits)]
            nxt = np.full(ids.shape[0], 5)                                                # fixed tokens: same path on both
            for _ in range(3):
                steps.append(backend.to_numpy(decode_step(model, cache, model.xp.asarray(nxt))))
        return full, np.stack(steps)

    cpu = run(False)
    model.to("gpu")
    gpu = run(False)
    gpu_fused = run(True)
    model.to("cpu")
    return cpu, gpu, gpu_fused


def _assert_close(cpu, gpu, tol=1e-3):
    for a, b in zip(cpu, gpu):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol)


def test_random_llama_logits_match():
    from tinyllm.models.llama import Llama, LlamaConfig

    cfg = LlamaConfig(vocab_size=300, dim=96, n_layers=3, n_heads=6, n_kv_heads=2, head_dim=16, ffn_dim=192,
                      context_length=128)
    model = Llama(cfg, rng=0)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12))
    cpu, gpu, gpu_fused = _logits_cpu_and_gpu(model, ids)
    _assert_close(cpu, gpu)
    _assert_close(cpu, gpu_fused)


@pytest.mark.slow
def test_smollm2_logits_match():
    smollm2 = pytest.importorskip("tinyllm.models.smollm2")
    try:
        model, tok = smollm2.load_smollm2(device="cpu")
    except (ImportError, OSError) as exc:
        pytest.skip(f"SmolLM2 cannot be loaded here: {exc}")
    ids = np.asarray([tok.encode("The capital of France is Paris. The capital of Italy is")])
    cpu, gpu, gpu_fused = _logits_cpu_and_gpu(model, ids)
    _assert_close(cpu, gpu)
    _assert_close(cpu, gpu_fused)
    assert int(cpu[1][0].argmax()) == int(gpu[1][0].argmax())                  # same next token


def test_gpt_training_loss_curve_matches():
    from tinyllm.models.gpt import GPT, GPTConfig
    from tinyllm.optim import AdamW

    cfg = GPTConfig.preset("char-small")
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, cfg.vocab_size, (8, 32)), rng.integers(0, cfg.vocab_size, (8, 32))) for _ in range(6)]

    def curve(device):
        model = GPT(cfg, rng=0).to(device)
        opt = AdamW(model.parameters(), lr=3e-3)
        losses = []
        for x, y in batches:
            model.zero_grad()
            losses.append(model.loss(backend.to_device(x, device), backend.to_device(y, device)))
            model.backward()
            opt.step()
        return np.array(losses), backend.to_numpy(model.wte.weight.data)

    cpu_losses, cpu_w = curve("cpu")
    gpu_losses, gpu_w = curve("gpu")
    assert cpu_losses[-1] < cpu_losses[0]                                       # it learned something
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gpu_w, cpu_w, rtol=1e-3, atol=1e-4)


def _small_llama():
    from tinyllm.models.llama import Llama, LlamaConfig

    cfg = LlamaConfig(vocab_size=300, dim=96, n_layers=3, n_heads=6, n_kv_heads=2, head_dim=16, ffn_dim=192,
                      context_length=128)
    return Llama(cfg, rng=0)


@pytest.mark.parametrize("fused", [True, False])
def test_cuda_graph_decode_matches_ordinary_decode(fused):
    from tinyllm.generate import CudaGraphDecoder, decode_step, prefill, stream_generate

    model = _small_llama().to("gpu")
    prompt = [5, 17, 42, 7, 99]
    with _fused(fused):
        eager = list(stream_generate(model, prompt, 12))
        graphed = list(stream_generate(model, prompt, 12, cuda_graph=True))
        assert graphed == eager                                                   # greedy tokens
        _, cache = prefill(model, np.asarray([prompt]), max_new_tokens=5)          # room for 5 decode steps
        _, cache2 = prefill(model, np.asarray([prompt]), max_new_tokens=5)
        decoder = CudaGraphDecoder(model, cache2)
        for t in (3, 8, 13, 21, 34):                                              # warm-up, capture, replays
            a = backend.to_numpy(decode_step(model, cache, [t]))
            b = backend.to_numpy(decoder.step([t]))
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
        assert decoder.graph is not None and cache2.length == cache.length
        with pytest.raises(ValueError, match="all are used"):
            decoder.step([1])


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
def test_quantised_weights_on_gpu_match_the_reference(qtype):
    from tinyllm.generate import decode_step, prefill

    model = _small_llama().quantize_weights(qtype, head="Q8_0")
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, 12))
    cpu = [backend.to_numpy(model(ids))]
    logits, cache = prefill(model, ids, max_new_tokens=3)
    cpu.append(backend.to_numpy(decode_step(model, cache, [7])))
    model.to("gpu")
    assert backend.is_gpu_array(model.blocks[0].wgu.data.blocks)
    gpu = [backend.to_numpy(model(model.xp.asarray(ids)))]                      # prefill rows: dequantise + GEMM
    logits, cache = prefill(model, model.xp.asarray(ids), max_new_tokens=3)
    gpu.append(backend.to_numpy(decode_step(model, cache, [7])))                # one row: the fused kernel
    _assert_close(cpu, gpu)
