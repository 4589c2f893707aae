"""Weights kept as GGML blocks (kernels.QuantizedMatrix) give the dequantised model's logits.

On NumPy ``h @ W`` with a QuantizedMatrix runs the reference (dequantise, multiply);
on CuPy the fused dequantise-and-multiply kernel (checked in tests/test_gpu_parity.py).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tinyllm import kernels
from tinyllm.generate import decode_step, prefill
from tinyllm.io import ggml
from tinyllm.io.ggml import GGMLType
from tinyllm.kernels import QuantizedMatrix
from tinyllm.models.gguf_map import permute_qk, quantized_weights_from_gguf, weights_from_gguf
from tinyllm.models.llama import BLOCK_MATRICES, BLOCK_STORAGE, Llama, LlamaConfig

TINY = LlamaConfig(vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96,
                   rope_base=10000.0, norm_eps=1e-5, context_length=64)


@pytest.mark.parametrize("qtype", kernels.QUANT_TYPES)
def test_matmul_reaches_the_quantised_product(rng, qtype):
    w = rng.standard_normal((64, 40)).astype(np.float32)                   # (IN, OUT)
    qm = QuantizedMatrix.quantize(w, qtype)
    assert qm.shape == (64, 40) and qm.dtype == np.float32 and qm.blocks.dtype == np.uint8
    assert qm.nbytes == 40 * 2 * ggml.BLOCK_SIZES[qtype][1]
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    y = x @ qm                                                             # ndarray.__matmul__ defers to qm
    assert isinstance(y, np.ndarray) and y.shape == (2, 3, 40) and y.dtype == np.float32
    np.testing.assert_array_equal(y, kernels.q_matvec(x, qm.blocks, qtype))
    np.testing.assert_allclose(y, x @ qm.dequantize(), rtol=1e-5, atol=1e-5)
    step = {GGMLType.Q8_0: 2 * 4.5 / 255, GGMLType.Q4_1: 9.0 / 15}[qtype]                 # |w| < 4.5 here
    assert np.abs(qm.dequantize() - w).max() <= step / 2


def test_operator_protocol_is_the_one_cupy_follows():
    """CuPy's ndarray.__matmul__ returns NotImplemented when the other operand sets
    ``__array_ufunc__ = None`` (NEP 13), and Python then calls ``__rmatmul__``. A stand-in
    array with that rule shows the model's ``h @ W`` needs no isinstance branch."""
    assert QuantizedMatrix.__array_ufunc__ is None

    class DeviceArray:                                                     # the rule, as CuPy's source writes it
        def __init__(self, a):
            self.a = a

        def __matmul__(self, other):
            if getattr(other, "__array_ufunc__", 0) is None:
                return NotImplemented
            raise TypeError("would try to convert the operand to a device array")

    qm = QuantizedMatrix.quantize(np.ones((32, 4), np.float32), "Q8_0")
    seen = []
    original = QuantizedMatrix.__rmatmul__
    try:
        QuantizedMatrix.__rmatmul__ = lambda self, x: seen.append(x) or "rmatmul"
        x = DeviceArray(np.ones((1, 32), np.float32))
        assert (x @ qm) == "rmatmul" and seen == [x]
    finally:
        QuantizedMatrix.__rmatmul__ = original


def test_real_cupy_dispatches_to_rmatmul():
    """With CuPy installed (no GPU needed), ``cupy.ndarray @ QuantizedMatrix`` calls ``__rmatmul__``
    before touching device memory."""
    cupy = pytest.importorskip("cupy")
    try:
        from cupy._core.core import _ndarray_base
        x = _ndarray_base.__new__(cupy.ndarray)                            # no memory: dispatch only
    except Exception as exc:  # noqa: BLE001 - CuPy internals moved
        pytest.skip(f"cannot build a memory-less cupy.ndarray here: {exc}")
    original = QuantizedMatrix.__rmatmul__
    try:
        QuantizedMatrix.__rmatmul__ = lambda self, other: "rmatmul"
        assert (x @ QuantizedMatrix.quantize(np.ones((32, 4), np.float32), "Q8_0")) == "rmatmul"
    finally:
        QuantizedMatrix.__rmatmul__ = original


def _dequantised_copy(model: Llama) -> Llama:
    """The same model with every QuantizedMatrix replaced by its float32 matrix."""
    w = {"tok_embd": model.tok_embd.data, "norm": model.norm.data}
    for i, b in enumerate(model.blocks):
        for n in BLOCK_STORAGE:
            d = getattr(b, n).data
            w[f"blk.{i}.{n}"] = np.ascontiguousarray(d.dequantize()) if isinstance(d, QuantizedMatrix) else d
    if model.head is not None:
        w["head"] = np.ascontiguousarray(model.head.data.dequantize())
    return Llama(model.config, weights=w)


@pytest.mark.parametrize("qtype,head", [("Q4_1", "Q8_0"), ("Q8_0", None)])
def test_kept_quantised_model_equals_dequantised_model(qtype, head):
    q = Llama(TINY, rng=0).quantize_weights(qtype, head=head)
    assert all(isinstance(getattr(b, n).data, QuantizedMatrix) for b in q.blocks for n in BLOCK_MATRICES)
    assert (q.head is not None) == (head is not None)
    f = _dequantised_copy(q)
    ids = np.random.default_rng(1).integers(0, TINY.vocab_size, (2, 9))
    np.testing.assert_allclose(q(ids), f(ids), rtol=1e-4, atol=1e-4)
    lq, cq = prefill(q, ids[:, :6], max_new_tokens=3)
    lf, cf = prefill(f, ids[:, :6], max_new_tokens=3)
    for t in range(6, 9):
        np.testing.assert_allclose(lq, lf, rtol=1e-4, atol=1e-4)
        lq, lf = decode_step(q, cq, ids[:, t]), decode_step(f, cf, ids[:, t])
    np.testing.assert_allclose(lq, lf, rtol=1e-4, atol=1e-4)


def test_to_cpu_keeps_the_blocks():
    q = Llama(TINY, rng=0).quantize_weights("Q4_1").to("cpu")
    assert isinstance(q.blocks[0].wgu.data, QuantizedMatrix)
    assert isinstance(q.blocks[0].wgu.data.blocks, np.ndarray)


class FakeReader:
    """A GGUF reader stand-in: GGUF-layout tensors (q/k rows permuted as llama.cpp stores them)."""

    def __init__(self, config: LlamaConfig, rng):
        c = config
        H, KV, D, C, F = c.n_heads, c.n_kv_heads, c.head_dim, c.dim, c.ffn_dim
        self.tensors, self._raw, self._float = {}, {}, {}

        def put(name, w, qtype):
            self.tensors[name] = SimpleNamespace(shape=w.shape, ggml_type=getattr(GGMLType, qtype))
            if qtype == "F32":
                self._float[name] = w
            else:
                self._raw[name] = ggml.quantize(w, qtype).reshape(-1)     # flat bytes, as in the file

        n = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)  # noqa: E731
        put("token_embd.weight", n(c.vocab_size, C), "Q8_0")
        put("output_norm.weight", 1 + n(C), "F32")
        for i in range(c.n_layers):
            p = f"blk.{i}."
            put(p + "attn_q.weight", permute_qk(n(H * D, C), H), "Q4_1")
            put(p + "attn_k.weight", permute_qk(n(KV * D, C), KV), "Q4_1")
            put(p + "attn_v.weight", n(KV * D, C), "Q4_1")
            put(p + "attn_output.weight", n(C, H * D), "Q4_1")
            put(p + "ffn_gate.weight", n(F, C), "Q4_1")
            put(p + "ffn_up.weight", n(F, C), "Q4_1")
            put(p + "ffn_down.weight", n(C, F), "Q4_1")
            put(p + "attn_norm.weight", 1 + n(C), "F32")
            put(p + "ffn_norm.weight", 1 + n(C), "F32")

    def raw(self, name):
        return self._raw[name]

    def dequantize(self, name):
        if name in self._float:
            return self._float[name]
        info = self.tensors[name]
        return ggml.dequantize(self._raw[name], info.ggml_type, info.shape)


def test_gguf_blocks_kept_quantised_match_the_dequantised_load(rng):
    reader = FakeReader(TINY, rng)
    q = Llama(TINY, weights=quantized_weights_from_gguf(TINY, reader))
    f = Llama(TINY, weights=weights_from_gguf(TINY, reader.dequantize, threads=1))
    assert isinstance(q.head.data, QuantizedMatrix) and q.head.data.qtype is GGMLType.Q8_0
    assert q.blocks[0].wqkv.data.shape == f.blocks[0].wqkv.data.shape
    ids = np.random.default_rng(2).integers(0, TINY.vocab_size, (1, 7))
    np.testing.assert_allclose(q(ids), f(ids), rtol=1e-4, atol=1e-4)


def test_gguf_unsupported_type_is_a_clear_error(rng):
    from tinyllm.errors import GGUFError

    reader = FakeReader(TINY, rng)
    reader.tensors["blk.1.ffn_up.weight"].ggml_type = GGMLType.F16
    with pytest.raises(GGUFError, match=r"'blk.1.ffn_up.weight' is F16"):
        quantized_weights_from_gguf(TINY, reader)


@pytest.mark.slow
def test_smollm2_kept_quantised_logits_equal_the_float32_model():
    smollm2 = pytest.importorskip("tinyllm.models.smollm2")
    try:
        q, tok = smollm2.load_smollm2("cpu", quantized=True)
        f, _ = smollm2.load_smollm2("cpu")
    except (ImportError, OSError) as exc:
        pytest.skip(f"SmolLM2 cannot be loaded here: {exc}")
    assert q.blocks[0].wgu.data.qtype is GGMLType.Q4_1 and q.head.data.qtype is GGMLType.Q8_0
    assert sum(p.data.nbytes for p in q.parameters()) < 0.45 * sum(p.data.nbytes for p in f.parameters())
    ids = np.asarray([tok.encode("The capital of France is Paris. The capital of Italy is")])
    lq, lf = q(ids, last_only=True), f(ids, last_only=True)
    np.testing.assert_allclose(lq, lf, rtol=1e-4, atol=1e-4)
    assert int(lq.argmax()) == int(lf.argmax())


def test_untied_head_is_quantised_in_place():
    from dataclasses import replace

    m = Llama(replace(TINY, tie_embeddings=False), rng=0)
    ids = np.arange(7)[None]
    m.quantize_weights("Q8_0", head="Q8_0")
    assert isinstance(m.head.data, QuantizedMatrix) and m.head.data.shape == (TINY.dim, TINY.vocab_size)
    np.testing.assert_allclose(m(ids), _dequantised_copy(m)(ids), rtol=1e-4, atol=1e-4)
