"""Lessons 11 and 13's plug points: the library's quantise, GPTQ, pruning and distillation paths call them."""
import numpy as np

from tinyllm import interp, plug
from tinyllm.compress import prune
from tinyllm.compress.distill import distillation_loss, train_student
from tinyllm.compress.gptq import gptq_layer, gptq_model, gptq_quantize, hessian
from tinyllm.io import ggml
from tinyllm.models.gpt import GPT, GPTConfig
from tinyllm.models.llama import Llama, LlamaConfig

CFG = LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64,
                  context_length=32)


def test_quantize_weights_runs_the_q4_1_plug_and_gives_the_gguf_bytes():
    calls = []

    def spy(x):
        calls.append(x.shape)
        return ggml.quantize_q4_1.library(x)

    ref = Llama(CFG, rng=0).quantize_weights("Q4_1", head=None)
    with plug.use(quantize_q4_1=spy):
        got = Llama(CFG, rng=0).quantize_weights("Q4_1", head=None)
    assert len(calls) == 4 * CFG.n_layers
    for a, b in zip(ref.blocks, got.blocks):
        assert np.array_equal(a.wgu.data.blocks, b.wgu.data.blocks)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    try:
        import gguf
        from gguf import quants
    except ImportError:
        return
    assert np.array_equal(ggml.quantize(x, "Q4_1"), quants.quantize(x, gguf.GGMLQuantizationType.Q4_1))


def test_gptq_model_without_act_order_runs_gptq_layer_per_weight():
    model = Llama(CFG, rng=1)
    calib = np.random.default_rng(0).integers(0, CFG.vocab_size, (4, 16))
    seen = []

    def spy(w, h, bits=4, group_size=128, symmetric=True, damp=0.01):
        seen.append((w.shape, bits, group_size, symmetric, damp))
        return gptq_layer.library(w, h, bits, group_size, symmetric, damp)

    ref = gptq_model(model, calib, group_size=16, act_order=False, sequential=False)
    with plug.use(gptq_layer=spy):
        got = gptq_model(model, calib, group_size=16, act_order=False, sequential=False)
    assert len(seen) == 4 * CFG.n_layers and seen[0][1:] == (4, 16, False, 0.01)
    assert all(np.array_equal(a, b) for a, b in zip(ref, got))
    w = np.random.default_rng(2).standard_normal((8, 32)).astype(np.float32)
    h = hessian(np.random.default_rng(3).standard_normal((64, 32)))
    assert np.array_equal(gptq_layer(w, h, 3, 16, False, 0.1), gptq_quantize(w, h, 3, group_size=16, symmetric=False,
                                                                             damp=0.1)[1])


def test_prune_and_distillation_and_interp_points_are_replaceable():
    w = np.arange(16, dtype=np.float32).reshape(4, 4)
    with plug.use(prune_2_4=lambda w, axis=0: (w * 0, w == w)):
        assert not prune.prune_2_4(w)[0].any()
    assert prune.prune_2_4(w)[1].sum() == 8
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("alpha"))
        return distillation_loss.library(*args, **kwargs)

    cfg = GPTConfig(vocab_size=16, context_length=8, n_layers=1, n_heads=2, dim=16)
    tokens = np.random.default_rng(0).integers(0, 16, 400)
    with plug.use(distillation_loss=spy):
        train_student(GPT(cfg, rng=0), tokens, teacher=GPT(cfg, rng=1), steps=2, batch_size=2, alpha=0.7,
                      progress=False)
    assert seen == [0.0, 0.7, 0.0, 0.7]                    # hard-label CE, then the distillation loss, per step
    with plug.use(induction_score=lambda patterns, tokens: "mine"):
        assert interp.induction_score(np.zeros((1, 1, 2, 2)), [1, 1]) == "mine"
