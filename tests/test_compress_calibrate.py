"""Calibration plumbing, folding, sequential GPTQ, AWQ and W8A8 on a tiny random Llama."""
import numpy as np
import pytest

from tinyllm.compress import fold
from tinyllm.compress.awq import awq_apply, awq_search, rtn_weight
from tinyllm.compress.calibrate import (CHAT_INSTRUCTIONS, block_output, chat_calibration, mixed_calibration,
                                        record_inputs, text_calibration)
from tinyllm.compress.gptq import cross_domain_damp, damp_errors, gptq_model, gptq_quantize, hessian, output_error
from tinyllm.compress.patch import linear_weights, replace_weights, restore_weights
from tinyllm.compress.smoothquant import W8A8Weight, quantize_per_token, smooth_scales, w8a8_apply
from tinyllm.models.llama import Llama, LlamaConfig

TINY = LlamaConfig(vocab_size=97, dim=48, n_layers=3, n_heads=6, n_kv_heads=2, head_dim=8, ffn_dim=80,
                   context_length=64)


def _model(seed=0):
    return Llama(TINY, rng=seed)


def _ids(seed=1, n=6, t=16):
    return np.random.default_rng(seed).integers(0, TINY.vocab_size, (n, t))


def _arrays(model):
    return [fold.block_arrays(b) for b in model.blocks]


def _restore(model, saved):
    for b, a in zip(model.blocks, saved):
        fold.set_block_arrays(b, a)


def test_block_outputs_chain_to_the_models_logits():
    from tinyllm import kernels

    m, ids = _model(), _ids()
    x = m.tok_embd.data[ids].astype(np.float32)
    for i in range(TINY.n_layers):
        x = block_output(m, i, x, batch=4)
    logits = kernels.rms_norm(x, m.norm.data, TINY.norm_eps) @ m.tok_embd.data.T
    np.testing.assert_allclose(logits, m(ids), rtol=1e-4, atol=1e-4)
    assert m.blocks[0].wo.data.__class__ is np.ndarray                      # recorders removed again


@pytest.mark.parametrize("kind", fold.KINDS)
def test_folding_a_scale_leaves_the_model_unchanged(kind):
    m, ids = _model(), _ids()
    ref = m(ids)
    saved = _arrays(m)
    s = np.random.default_rng(2).uniform(0.2, 5.0, fold.scale_width(kind, TINY)).astype(np.float32)
    fold.fold_input_scale(m.blocks[1], kind, s, TINY)
    assert not np.allclose(m.blocks[1].__dict__[kind].data, saved[1][kind])   # the weight really changed
    np.testing.assert_allclose(m(ids), ref, rtol=1e-4, atol=1e-4)
    _restore(m, saved)
    np.testing.assert_array_equal(m(ids), ref)


def test_fold_rejects_bad_scales():
    m = _model()
    with pytest.raises(ValueError, match="shape"):
        fold.fold_input_scale(m.blocks[0], "wo", np.ones(TINY.n_heads * TINY.head_dim), TINY)  # must be KV*D
    with pytest.raises(ValueError, match="positive"):
        fold.fold_input_scale(m.blocks[0], "wqkv", np.zeros(TINY.dim), TINY)
    with pytest.raises(ValueError, match="kind"):
        fold.scale_width("wq", TINY)


def test_wo_scale_is_shared_by_the_query_heads_of_a_group():
    G = TINY.n_heads // TINY.n_kv_heads
    s_v = np.arange(1, TINY.n_kv_heads * TINY.head_dim + 1, dtype=np.float32)
    full = fold.expand_wo_scale(s_v, TINY).reshape(TINY.n_kv_heads, G, TINY.head_dim)
    for g in range(G):
        np.testing.assert_array_equal(full[:, g], s_v.reshape(TINY.n_kv_heads, TINY.head_dim))
    stat = np.arange(TINY.n_heads * TINY.head_dim, dtype=np.float32)
    np.testing.assert_array_equal(fold.group_wo_stat(stat, TINY, "max").reshape(TINY.n_kv_heads, -1)[:, 0],
                                  [(k * G + G - 1) * TINY.head_dim for k in range(TINY.n_kv_heads)])


def test_sequential_gptq_calibrates_on_the_quantised_prefix():
    m, ids = _model(), _ids(n=8, t=16)
    ref = m(ids)
    seq = gptq_model(m, ids, 4, group_size=16, symmetric=False, sequential=True, batch=3)
    par = gptq_model(m, ids, 4, group_size=16, symmetric=False, sequential=False)
    np.testing.assert_array_equal(m(ids), ref)                              # the model is left unchanged
    assert len(seq) == len(par) == 4 * TINY.n_layers
    targets = linear_weights(m)
    # block 0 sees the same (float) inputs either way; later blocks see the quantised prefix
    for j in range(4):
        np.testing.assert_allclose(seq[j], par[j], atol=1e-6)
    assert any(not np.allclose(seq[j], par[j]) for j in range(4, 4 * TINY.n_layers))
    # by hand: block 1's Hessians from the output of quantised block 0 give the same weights
    old = replace_weights(targets[:4], lambda w, it=iter(seq[:4]): next(it))
    recs = record_inputs(m, ids, targets[4:8], batch=3)
    restore_weights(targets[:4], old)
    for j, r in zip(range(4, 8), recs):
        _, q = gptq_quantize(np.ascontiguousarray(targets[j][0].__dict__[targets[j][1]].data.T), r.hessian(), 4,
                             group_size=16, symmetric=False, damp=0.01, act_order=True)
        np.testing.assert_allclose(seq[j], q.T, atol=1e-5)
    with pytest.raises(ValueError, match="calib"):
        gptq_model(m, ids[0], 4)


def test_damp_errors_measure_held_out_error():
    rng = np.random.default_rng(0)
    low = rng.standard_normal((400, 4)) @ rng.standard_normal((4, 32))
    x = (low + 0.05 * rng.standard_normal((400, 32))).astype(np.float32)
    w = rng.standard_normal((16, 32)).astype(np.float32)
    errs = damp_errors(w, hessian(x[:40]), hessian(x[200:]), [1e-4, 1e-2, 1.0], group_size=16, symmetric=False)
    assert len(errs) == 3 and all(e > 0 for e in errs)
    for d, e in zip([1e-4, 1e-2, 1.0], errs):                              # = the output error on the held-out rows
        _, q = gptq_quantize(w, hessian(x[:40]), 4, group_size=16, symmetric=False, damp=d)
        assert e == pytest.approx(output_error(x[200:], w, q), rel=1e-3)


def test_cross_domain_damp_fits_on_one_set_and_measures_on_the_other():
    m = _model()
    rng = np.random.default_rng(5)
    low, high = rng.integers(0, 40, (6, 16)), rng.integers(40, TINY.vocab_size, (5, 16))   # two kinds of "text"
    damps, probe = (0.01, 0.3, 3.0), [1, 6]
    kw = dict(bits=3, group_size=16, symmetric=False, act_order=True)
    best, mean = cross_domain_damp(m, [low, high], damps, probe, **kw)
    targets = [linear_weights(m)[j] for j in probe]
    h_low = [r.hessian() for r in record_inputs(m, low, targets)]
    h_high = [r.hessian() for r in record_inputs(m, high, targets)]
    ref = [damp_errors(np.ascontiguousarray(getattr(b, k).data.T), hf[j], hv[j], damps, **kw)
           for hf, hv in ((h_low, h_high), (h_high, h_low)) for j, (b, k) in enumerate(targets)]
    np.testing.assert_allclose(mean, np.mean(ref, axis=0), rtol=1e-6)
    assert best == damps[int(np.argmin(mean))] and mean.shape == (3,)
    assert not np.allclose(mean, np.mean(ref[:2], axis=0))                 # both directions count
    with pytest.raises(ValueError, match="two calibration sets"):
        cross_domain_damp(m, [low], damps, probe)
    with pytest.raises(ValueError, match="at least one"):
        cross_domain_damp(m, [low, high], (), probe)


def test_calibration_sets():
    text = "the quick brown fox jumps over the lazy dog. " * 400
    enc = lambda s: [ord(c) for c in s]                                     # noqa: E731
    a = text_calibration(enc, text, 5, 32, seed=0)
    assert a.shape == (5, 32) and np.array_equal(a, text_calibration(enc, text, 5, 32, seed=0))
    b = mixed_calibration(a, a + 1, n=6, seed=0)
    assert b.shape == (6, 32)
    with pytest.raises(ValueError, match="characters"):
        text_calibration(enc, "short", 2, 32)
    with pytest.raises(ValueError, match="same sequence length"):
        mixed_calibration(a, a[:, :8])


class _CharTokenizer:
    """Characters as ids (mod the tiny vocabulary); remembers the texts it encoded."""

    def __init__(self):
        self.texts = []

    def encode(self, text, allowed_special=None):
        self.texts.append(text)
        return [ord(c) % TINY.vocab_size for c in text[-24:]]


def test_chat_calibration_answers_each_instruction_through_the_chat_template():
    from tinyllm.generate import generate_batch
    from tinyllm.tokenizers.chat import apply_chat_template

    m, tok = _model(), _CharTokenizer()
    instr = ["Tell a story.", "Explain tides.", "Write code."]
    rows = chat_calibration(m, tok, 5, 7, seed=2, instructions=instr)
    assert rows.shape == (5, 7) and rows.dtype == np.int64
    assert tok.texts == [apply_chat_template([{"role": "user", "content": instr[i % 3]}], add_generation_prompt=True)
                         for i in range(5)]                                 # row i answers instruction i % 3
    prompts = [tok.encode(t) for t in list(tok.texts)]                     # a copy: encode() appends to tok.texts
    ref = generate_batch(m, prompts, max_new_tokens=7, temperature=0.8, top_k=50, seed=2)
    np.testing.assert_array_equal(rows, ref)                                # the replies only, not the prompts
    a = chat_calibration(m, _CharTokenizer(), 4, 6, seed=3, instructions=instr)
    np.testing.assert_array_equal(a, chat_calibration(m, _CharTokenizer(), 4, 6, seed=3, instructions=instr))
    assert not np.array_equal(a, chat_calibration(m, _CharTokenizer(), 4, 6, seed=4, instructions=instr))
    assert len(CHAT_INSTRUCTIONS) >= 8 and len(set(CHAT_INSTRUCTIONS)) == len(CHAT_INSTRUCTIONS)
    for bad in ({"n": 0}, {"length": 0}, {"instructions": []}, {"instructions": "one string"}, {"instructions": [""]}):
        kw = {"n": 2, "length": 4, **bad}
        with pytest.raises(ValueError, match="positive|instructions"):
            chat_calibration(m, tok, kw.pop("n"), kw.pop("length"), **kw)


def test_awq_search_never_worse_than_rtn_and_finds_salient_channels():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 64)).astype(np.float32)
    x[:, :4] *= 30.0                                                         # four salient input channels
    w = rng.standard_normal((64, 32)).astype(np.float32)                    # (IN, OUT)
    xtx = x.T.astype(np.float64) @ x
    s, alpha, errs = awq_search(w, np.abs(x).mean(0), xtx, bits=3, group_size=16, grid=11)
    assert errs[0] == pytest.approx(float(((xtx @ (rtn_weight(w, 3, 16) - w)) * (rtn_weight(w, 3, 16) - w)).sum()),
                                    rel=1e-4)                                # alpha = 0 is plain RTN
    assert min(errs) < 0.8 * errs[0] and alpha > 0
    assert s[:4].min() > s[4:].max()                                        # the salient rows are scaled up
    with pytest.raises(ValueError, match="rows"):
        awq_search(w, np.ones(10), xtx)


def test_awq_apply_beats_rtn_on_the_tiny_model():
    m, ids = _model(), _ids(n=8, t=16)
    ref = m(ids)
    saved = _arrays(m)
    recs = record_inputs(m, ids)
    targets = linear_weights(m)
    old = replace_weights(targets, lambda w: rtn_weight(w, 3, 16))
    err_rtn = np.abs(m(ids) - ref).mean()
    restore_weights(targets, old)
    alphas = awq_apply(m, recs, bits=3, group_size=16)
    err_awq = np.abs(m(ids) - ref).mean()
    assert len(alphas) == TINY.n_layers and set(alphas[0]) == set(fold.KINDS)
    assert err_awq < err_rtn
    _restore(m, saved)
    np.testing.assert_array_equal(m(ids), ref)


def test_smooth_scales_formula_and_edge_cases():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 5)).astype(np.float32)
    a = rng.uniform(0.1, 20, 8).astype(np.float32)
    s = smooth_scales(a, w, 0.7)
    np.testing.assert_allclose(s, a ** 0.7 / np.abs(w).max(1) ** 0.3, rtol=1e-5)
    a[2], w[5] = 0.0, 0.0
    s = smooth_scales(a, w, 0.5)
    assert s[2] == 1.0 and s[5] == 1.0 and np.isfinite(s).all()
    with pytest.raises(ValueError, match="alpha"):
        smooth_scales(a, w, 1.5)
    with pytest.raises(ValueError, match="input channel"):
        smooth_scales(a[:3], w)


def test_w8a8_weight_is_int8_on_both_sides():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 16)).astype(np.float32)
    x = rng.standard_normal((3, 5, 32)).astype(np.float32)
    q = W8A8Weight(w)
    xq, sx = quantize_per_token(x)
    assert np.abs(xq).max() <= 127 and np.array_equal(xq, np.rint(xq)) and sx.shape == (3, 5, 1)
    np.testing.assert_allclose(x @ q, (xq * sx) @ (q.codes.astype(np.float32) * q.scale), rtol=1e-5, atol=1e-5)
    assert q.codes.dtype == np.int8 and q.nbytes == 32 * 16 + 2 * 16
    rel = np.linalg.norm(x @ q - x @ w) / np.linalg.norm(x @ w)
    assert 1e-4 < rel < 0.03


def test_smoothquant_helps_when_activations_have_outlier_channels():
    m, ids = _model(), _ids(n=8, t=16)
    for b in m.blocks:                                                      # outlier channels, as in real LLMs
        b.attn_norm.data = b.attn_norm.data.copy()
        b.attn_norm.data[:3] *= 40.0
    ref = m(ids)
    saved = _arrays(m)
    recs = record_inputs(m, ids)
    w8a8_apply(m, alpha=None)
    err_naive = np.abs(m(ids) - ref).mean()
    _restore(m, saved)
    w8a8_apply(m, recs, alpha=0.5)
    err_smooth = np.abs(m(ids) - ref).mean()
    _restore(m, saved)
    assert err_smooth < 0.7 * err_naive
