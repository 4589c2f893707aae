"""The same library code on the GPU gives the CPU's numbers (skipped without a usable GPU).

- SmolLM2 logits on CuPy equal the NumPy logits within 1e-3 (float32), with and
  without the fused kernels routed in, for the full forward and for cached decoding;
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
def _fused():
    """Route llama.py's rms_norm and apply_rope through tinyllm.kernels (opt-in from the outside)."""
    from tinyllm import kernels
    from tinyllm.models import llama

    saved = llama.rms_norm, llama.apply_rope
    llama.rms_norm, llama.apply_rope = kernels.rms_norm, kernels.rope
    try:
        yield
    finally:
        llama.rms_norm, llama.apply_rope = saved


def _logits_cpu_and_gpu(model, ids):
    """Full-forward logits and 3 cached greedy decode steps' logits, on the CPU and then on the GPU."""
    from tinyllm.generate import decode_step, prefill

    def run(use_fused):
        ctx = _fused() if use_fused else contextlib.nullcontext()
        with ctx:
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
