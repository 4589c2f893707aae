"""tinyllm.threads.map_rows: row blocks on the BLAS threads give the bits of the one-call computation.

Every layer that runs on map_rows (GELU, LayerNorm, attention, Linear and the GPT head, the loss, AdamW) is run
three ways on sizes that do not divide into the blocks: in one call (the inline path), in blocks on
one thread, and in blocks on two and three threads; all must agree bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from tinyllm import threads
from tinyllm.models.gpt import GPT, GPTConfig
from tinyllm.nn.activations import GELU
from tinyllm.nn.attention import causal_attention, causal_attention_backward
from tinyllm.nn import linear
from tinyllm.nn.linear import Linear, matmul
from tinyllm.nn.loss import CrossEntropyLoss
from tinyllm.nn.norm import LayerNorm
from tinyllm.optim import Adam, AdamW
from tinyllm.threads import compute_threads, map_rows


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


@pytest.fixture
def run_on(monkeypatch):
    """run_on(n, f): f() with map_rows on n threads (n=0: every map_rows one inline call)."""
    def run(n, f):
        with monkeypatch.context() as m:
            if n == 0:
                m.setattr(threads, "INLINE_ELEMENTS", 1 << 62)
            else:
                m.setattr(threads, "compute_threads", lambda: n)
                m.setattr(linear, "compute_threads", lambda: n)
                m.setattr(threads, "INLINE_ELEMENTS", 1)         # every array in blocks,
                m.setattr(threads, "ROW_BLOCK_ELEMENTS", 997)   # many small, uneven ones
            return f()
    return run


def _same(results):
    ref = results[0]
    for other in results[1:]:
        for a, b in zip(ref, other):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(a, b, equal_nan=True), "threaded result differs from the inline one"


def _rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def test_map_rows_splits_rows_and_covers_each_once():
    x = np.arange(1001 * 40, dtype=np.float64).reshape(1001, 40)
    seen = np.zeros(1001, dtype=int)
    calls = []

    def f(a, out):
        calls.append(a.shape[0])
        out[:] = a * 2.0
        seen[np.asarray(a[:, 0] // 40, dtype=int)] += 1

    out = np.empty_like(x)
    map_rows(f, x, out, threads=3, block_elements=4000)           # 100 rows a block, 11 blocks
    assert np.array_equal(out, x * 2.0) and (seen == 1).all()
    assert len(calls) == 11 and sum(calls) == 1001


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("rows, cols", [(1, 40000), (37, 1031), (2048, 33)])
def test_map_rows_equals_one_call_for_elementwise_work_and_row_reductions(n, rows, cols):
    rng = np.random.default_rng(rows)
    x = _rand(rng, rows, cols)

    def f(a, out):
        np.tanh(a, out=out)
        out -= out.max(axis=-1, keepdims=True)
        np.exp(out, out=out)
        out /= out.sum(axis=-1, keepdims=True)

    ref, got = np.empty_like(x), np.empty_like(x)
    f(x, ref)
    map_rows(f, x, got, threads=n, block_elements=4096)
    assert np.array_equal(ref, got)


def test_map_rows_inline_for_small_or_foreign_arrays_and_inside_a_block():
    calls = []
    small = np.ones((4, 4))
    map_rows(lambda a: calls.append(a.shape), small, threads=2)
    assert calls == [(4, 4)]                                        # below INLINE_ELEMENTS: one call

    class NotNumPy(np.ndarray):                                     # stands in for a CuPy array
        pass

    big = np.ones((64, 1024)).view(NotNumPy)
    calls.clear()
    map_rows(lambda a: calls.append(a.shape), big, threads=2)
    assert calls == [(64, 1024)]

    inner = []
    outer = np.ones((64, 1024))
    map_rows(lambda a: map_rows(lambda b: inner.append(b.shape), np.ones((64, 1024))), outer, threads=2,
             block_elements=1024)
    assert inner == [(64, 1024)] * 64                               # nested: inline, no deadlock


def test_map_rows_raises_what_a_block_raised_and_checks_shapes():
    def f(a):
        if a[0, 0] >= 32:
            raise ValueError("bad block")

    x = np.arange(64.0 * 1024).reshape(64, 1024) / 1024
    with pytest.raises(ValueError, match="bad block"):
        map_rows(f, x, threads=2, block_elements=1024)
    with pytest.raises(ValueError, match="need the same first axis"):
        map_rows(lambda a, b: None, np.ones((64, 1024)), np.ones((63, 1024)), threads=2)


@pytest.mark.skipif(not _blas_threads(), reason="threadpoolctl finds no BLAS behind NumPy")
def test_compute_threads_follows_the_blas_limit_and_one_blas_thread_restores_it():
    with threadpool_limits(limits=1, user_api="blas"):
        assert compute_threads() == 1
    with threadpool_limits(limits=2, user_api="blas"):
        expected = max(_blas_threads())
        assert compute_threads() == expected
        seen = []
        map_rows(lambda a: seen.append(max(_blas_threads())), np.ones((64, 1024)), threads=2,
                 one_blas_thread=True, block_elements=1024)
        assert set(seen) == {1}                                     # inside: one BLAS thread per block
        assert max(_blas_threads()) == expected                     # after: restored


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_layernorm_linear_loss_threaded_equal_inline(run_on, dtype):
    rng = np.random.default_rng(5)
    x, dy = _rand(rng, 3, 67, 129, dtype=dtype), _rand(rng, 3, 67, 129, dtype=dtype)
    dy_lin = _rand(rng, 3, 67, 65, dtype=dtype)
    targets = rng.integers(-1, 129, size=(3, 67))                   # -1: ignored

    def layers():
        gelu = GELU()
        ln = LayerNorm(129, dtype=dtype)
        ln.weight.data = np.linspace(0.5, 1.5, 129).astype(dtype)
        ln.bias.data = np.linspace(-0.2, 0.2, 129).astype(dtype)
        lin = Linear(129, 65, rng=3, dtype=dtype)
        for p in (ln.weight, ln.bias, lin.weight, lin.bias):
            p.grad = np.zeros_like(p.data)
        out = [gelu.forward(x), gelu.backward(dy), ln.forward(x), ln.backward(dy), lin.forward(x), lin.backward(dy_lin)]
        loss = CrossEntropyLoss(ignore_index=-1)
        out += [np.array(loss.forward(x, targets)), loss.backward()]
        return out + [ln.weight.grad, ln.bias.grad, lin.weight.grad, lin.bias.grad]

    _same([run_on(n, layers) for n in (0, 1, 2, 3)])


@pytest.mark.parametrize("M, K, N", [(4099, 257, 33), (2048, 128, 128), (2048, 96, 96), (1031, 65, 520), (1, 300, 70000)])
def test_matmul_in_row_blocks_equals_one_product(run_on, M, K, N):
    rng = np.random.default_rng(M)
    a, b, bias, acc = _rand(rng, M, K), _rand(rng, K, N), _rand(rng, N), _rand(rng, M, N)

    def products():
        out = acc.copy()
        matmul(a, b, out=out, accumulate=True)
        return [matmul(a, b, bias=bias), out, matmul(b.T, a.T)]

    ref = [a @ b + bias, acc + a @ b, b.T @ a.T]
    _same([ref] + [run_on(n, products) for n in (0, 1, 2, 3)])


def test_attention_threaded_equals_inline(run_on):
    rng = np.random.default_rng(6)
    q, k, v, dy = (_rand(rng, 3, 5, 37, 8) for _ in range(4))

    def attention():
        y, att = causal_attention(q, k, v)
        return [y, att, *causal_attention_backward(dy, q, k, v, att)]

    _same([run_on(n, attention) for n in (0, 1, 2, 3)])


@pytest.mark.parametrize("opt_class", [Adam, AdamW])
def test_adam_threaded_equals_inline(run_on, opt_class):
    rng = np.random.default_rng(7)
    shapes = [(131, 257), (1001,), (3, 67, 129)]

    def steps():
        from tinyllm.nn.module import Parameter
        params = [Parameter(_rand(np.random.default_rng(i), *s)) for i, s in enumerate(shapes)]
        opt = opt_class(params, lr=1e-2, weight_decay=0.1)
        for step in range(3):
            for i, p in enumerate(params):
                p.grad = _rand(np.random.default_rng(100 * step + i), *p.shape)
            opt.step()
        return [p.data for p in params] + opt.state["exp_avg"] + opt.state["exp_avg_sq"]

    del rng
    _same([run_on(n, steps) for n in (0, 1, 2, 3)])


def test_gpt_training_steps_threaded_equal_inline(run_on):
    cfg = GPTConfig(vocab_size=23, context_length=19, n_layers=2, n_heads=3, dim=48, dropout=0.1)
    rng = np.random.default_rng(8)
    x, y = rng.integers(0, 23, size=(5, 19)), rng.integers(0, 23, size=(5, 19))

    def train():
        model = GPT(cfg, rng=0)
        opt = AdamW(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(2):
            model.zero_grad()
            losses.append(model.loss(x, y))
            model.backward()
            opt.step()
        return [np.array(losses)] + [p.data for p in model.parameters()]

    _same([run_on(n, train) for n in (0, 1, 2)])
