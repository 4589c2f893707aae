"""Checkpoints: bit-identical resume, dtype conversion, RNG state, atomicity and clear errors."""
from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest

from tinyllm.errors import CheckpointError
from tinyllm.io import checkpoint as ck
from tinyllm.io.safetensors import SafetensorsFile, save_file
from tinyllm.nn import CrossEntropyLoss, Linear, ReLU, Sequential
from tinyllm.optim import SGD, AdamW


def mlp(seed=0, width=16):
    rng = np.random.default_rng(seed)
    return Sequential(Linear(8, width, rng=rng), ReLU(), Linear(width, 5, rng=rng))


def train(model, opt, rng, steps):
    """A few AdamW steps on random batches drawn from ``rng``; returns the losses."""
    ce = CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        x = rng.standard_normal((4, 8)).astype(np.float32)
        y = rng.integers(0, 5, 4)
        model.zero_grad()
        losses.append(ce.forward(model.forward(x), y))
        model.backward(ce.backward())
        opt.step()
    return losses


def test_resume_is_bit_identical(tmp_path):
    # uninterrupted: 6 steps
    m1 = mlp()
    o1 = AdamW(m1.parameters(), lr=1e-2)
    r1 = np.random.default_rng(42)
    full = train(m1, o1, r1, 6)
    # interrupted after 3 steps: save, build everything fresh, load, continue 3 steps
    m2 = mlp()
    o2 = AdamW(m2.parameters(), lr=1e-2)
    r2 = np.random.default_rng(42)
    first = train(m2, o2, r2, 3)
    p = tmp_path / "ckpt.safetensors"
    ck.save_checkpoint(p, m2, o2, step=3, extra={"rng": ck.rng_state(r2), "note": "half way"})
    m3 = mlp(seed=99)
    o3 = AdamW(m3.parameters(), lr=1e-2)
    r3 = np.random.default_rng(0)
    info = ck.load_checkpoint(p, m3, o3)
    assert info["step"] == 3 and info["extra"]["note"] == "half way" and info["model_class"] == "Sequential"
    ck.set_rng_state(r3, info["extra"]["rng"])
    second = train(m3, o3, r3, 3)
    assert first + second == full
    for (n, a), (_, b) in zip(m1.named_parameters(), m3.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=n)
    for k, v in o1.state_dict().items():
        w = o3.state_dict()[k]
        assert np.array_equal(v, w) if hasattr(v, "shape") else v == w


def test_file_is_plain_safetensors(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.numpy import load_file

    m = mlp()
    o = AdamW(m.parameters(), lr=1e-3)
    p = tmp_path / "c.safetensors"
    ck.save_checkpoint(p, m, o, step=7)
    theirs = load_file(str(p))
    assert {"model.layers.0.weight", "optim.exp_avg.0", "optim.exp_avg_sq.3"} <= set(theirs)
    np.testing.assert_array_equal(theirs["model.layers.0.weight"], m.state_dict()["layers.0.weight"])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtype_conversion(tmp_path, dtype):
    m = mlp()
    p = tmp_path / "half.safetensors"
    ck.save_checkpoint(p, m, dtype=dtype)
    f = SafetensorsFile(p)
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    assert f.dtype("model.layers.0.weight") == np_dtype
    assert sum(f.get(k).nbytes for k in f.keys()) * 2 == sum(v.nbytes for v in m.state_dict().values())
    m2 = mlp(seed=5)
    ck.load_checkpoint(p, m2)
    for (n, a), (_, b) in zip(m.named_parameters(), m2.named_parameters()):
        assert b.data.dtype == np.float32
        np.testing.assert_array_equal(b.data, a.data.astype(np_dtype).astype(np.float32), err_msg=n)


def test_errors(tmp_path):
    m = mlp()
    p = tmp_path / "c.safetensors"
    ck.save_checkpoint(p, m, AdamW(m.parameters()), step=1)
    before = {k: v.copy() for k, v in mlp(seed=3).state_dict().items()}
    wide = mlp(seed=3, width=32)
    with pytest.raises(CheckpointError, match="c.safetensors.*'model.layers.0.weight'.*shape"):
        ck.load_checkpoint(p, wide)
    other = mlp(seed=3)
    with pytest.raises(CheckpointError, match="optimiser state is for AdamW, not SGD"):
        ck.load_checkpoint(p, other, SGD(other.parameters(), lr=0.1))
    for k, v in other.state_dict().items():  # nothing was written before the error
        np.testing.assert_array_equal(v, before[k])
    bigger = Sequential(Linear(8, 16), ReLU(), Linear(16, 5), ReLU(), Linear(5, 5))
    with pytest.raises(CheckpointError, match="'model.layers.4.bias'.*missing"):
        ck.load_checkpoint(p, bigger)
    q = tmp_path / "no_optim.safetensors"
    ck.save_checkpoint(q, m)
    with pytest.raises(CheckpointError, match="no optimiser state"):
        ck.load_checkpoint(q, m, AdamW(m.parameters()))
    r = tmp_path / "plain.safetensors"
    save_file({"w": np.ones(2, np.float32)}, r)
    with pytest.raises(CheckpointError, match="not a tinyllm checkpoint"):
        ck.load_checkpoint(r, m)
    with pytest.raises(TypeError, match="JSON"):
        ck.save_checkpoint(tmp_path / "x.safetensors", m, extra={"f": object()})
    with pytest.raises(ValueError, match="step"):
        ck.save_checkpoint(tmp_path / "x.safetensors", m, step=-1)
    assert sorted(os.listdir(tmp_path)) == ["c.safetensors", "no_optim.safetensors", "plain.safetensors"]
