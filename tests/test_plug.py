"""The plug mechanism (tinyllm.plug): learner functions replace the library's only inside ``plug.use``."""
import threading

import numpy as np
import pytest

from tinyllm import kernels, plug
from tinyllm.models.llama import Llama, LlamaConfig

CFG = LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=48,
                  context_length=32)


def my_rms_norm(x, w, eps=1e-5):
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w).astype(x.dtype)


def test_off_by_default_and_restored_after_the_block():
    assert plug.in_use() == {}
    calls = []

    def spy(x, w, eps=1e-5):
        calls.append(x.shape)
        return my_rms_norm(x, w, eps)

    model = Llama(CFG, rng=0)
    ids = np.arange(10).reshape(1, 10)
    ref = model.forward(ids)
    with plug.use(rms_norm=spy) as active:
        assert set(active) == {"rms_norm"} and plug.in_use()["rms_norm"] is spy
        got = model.forward(ids)
    assert len(calls) == 2 * CFG.n_layers + 1                  # two norms per block and the final one
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert plug.in_use() == {}
    model.forward(ids)
    assert len(calls) == 2 * CFG.n_layers + 1                  # nothing stays plugged


def test_restored_when_the_block_raises_and_nested_blocks_stack():
    with pytest.raises(RuntimeError):
        with plug.use(rms_norm=my_rms_norm):
            raise RuntimeError("boom")
    assert plug.in_use() == {}
    outer = lambda x, w, eps=1e-5: x                           # noqa: E731
    with plug.use(rms_norm=outer):
        with plug.use(rms_norm=my_rms_norm):
            assert plug.in_use()["rms_norm"] is my_rms_norm
        assert plug.in_use()["rms_norm"] is outer
    x = np.ones((2, 4), np.float32)
    assert kernels.rms_norm(x, np.full(4, 2.0, np.float32)).max() == pytest.approx(2.0, rel=1e-5)


def test_a_replacement_changes_the_result():
    x = np.arange(8, dtype=np.float32).reshape(2, 4) + 1
    with plug.use(rms_norm=lambda x, w, eps=1e-5: np.zeros_like(x)):
        assert not kernels.rms_norm(x, np.ones(4, np.float32)).any()
    assert kernels.rms_norm(x, np.ones(4, np.float32)).any()


def test_plugs_do_not_leak_into_other_threads():
    seen = {}
    with plug.use(rms_norm=my_rms_norm):
        t = threading.Thread(target=lambda: seen.update(plug.in_use()))
        t.start()
        t.join()
    assert seen == {}


def test_bad_names_and_values_are_refused_with_the_list_of_points():
    with pytest.raises(plug.PlugError, match="no plug point named rms_nrom.*rms_norm"):
        with plug.use(rms_nrom=my_rms_norm):
            pass
    with pytest.raises(plug.PlugError, match="needs a function"):
        with plug.use(rms_norm=3):
            pass
    assert "rms_norm" in plug.points() and plug.points()["rms_norm"].startswith("rms_norm(x")
    assert kernels.rms_norm.library is not kernels.rms_norm and kernels.rms_norm.plug_point == "rms_norm"


def test_linear_weight_plug_point_initialises_tinyllm_linear():
    from tinyllm.nn import Linear

    ref = Linear(6, 4, rng=3)
    assert plug.points()["linear_weight"] == "linear_weight(fan_in: 'int', fan_out: 'int', rng: 'np.random.Generator')"

    def he(fan_in, fan_out, rng):
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out)).astype(np.float32)

    with plug.use(linear_weight=he):
        mine = Linear(6, 4, rng=3)
    np.testing.assert_array_equal(mine.weight.data, he(6, 4, np.random.default_rng(3)))
    assert mine.weight.data.dtype == np.float32 and not np.array_equal(mine.weight.data, ref.weight.data)
    np.testing.assert_array_equal(Linear(6, 4, rng=3).weight.data, ref.weight.data)     # unplugged again
    with plug.use(linear_weight=lambda fan_in, fan_out, rng: np.zeros((fan_out, fan_in))):
        with pytest.raises(plug.PlugError, match=r"must return a float array of shape \(6, 4\)"):
            Linear(6, 4, rng=3)


def test_adam_step_plug_point_runs_the_library_optimiser_on_a_functional_update():
    from tinyllm.nn.module import Parameter
    from tinyllm.optim import Adam, AdamW

    def functional_adam(param, grad, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        return param - lr * (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps), m, v

    def train(cls, **kw):
        p = Parameter(np.linspace(-1, 1, 12).reshape(3, 4))
        opt = cls([p], lr=0.05, betas=(0.8, 0.95), **kw)
        for k in range(5):
            p.grad[...] = np.sin(p.data * (k + 1))
            opt.step()
        return p.data, opt.state["exp_avg"][0], opt.state["exp_avg_sq"][0]

    for cls, kw in ((Adam, {}), (Adam, {"weight_decay": 0.1}), (AdamW, {"weight_decay": 0.1})):
        ref = train(cls, **kw)
        with plug.use(adam_step=functional_adam):
            got = train(cls, **kw)
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    with plug.use(adam_step=lambda param, grad, m, v, t, **kw: (param[:1], m, v)):
        with pytest.raises(plug.PlugError, match="adam_step returned param of shape"):
            train(Adam)
