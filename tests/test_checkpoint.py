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


# ---- hostile files: every field checked, nothing written before the error ---------------

def _saved(tmp_path):
    m = mlp()
    o = AdamW(m.parameters(), lr=1e-2)
    train(m, o, np.random.default_rng(0), 2)
    p = tmp_path / "good.safetensors"
    ck.save_checkpoint(p, m, o, step=2, extra={"note": "x"})
    return p


def _rewrite(p, q, edit_meta=None, edit_tensors=None):
    """Copy checkpoint ``p`` to ``q`` with its metadata JSON (a dict) or its tensors edited."""
    import json

    f = SafetensorsFile(p)
    tensors = {k: f.get(k) for k in f.keys()}
    meta = json.loads(f.metadata["tinyllm"])
    text = json.dumps(meta)
    if edit_meta is not None:
        out = edit_meta(meta)
        text = out if isinstance(out, str) else json.dumps(meta)
    if edit_tensors is not None:
        edit_tensors(tensors)
    save_file(tensors, q, metadata={"tinyllm": text})
    return q


def _fresh():
    m = mlp(seed=7)
    o = AdamW(m.parameters(), lr=5e-3)
    return m, o, ({k: v.copy() for k, v in m.state_dict().items()}, o.state_dict())


def _unchanged(m, o, before):
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[0][k], err_msg=k)
    for k, v in o.state_dict().items():
        assert np.array_equal(v, before[1][k]) if hasattr(v, "shape") else v == before[1][k], k


def _set(path, value):
    def edit(meta):
        node = meta
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit,match", [
    (_set(["step"], "3"), "step must be an int"),
    (_set(["step"], 1e400), "step must be an int"),  # was OverflowError
    (_set(["step"], 2**70), "step must be an int"),
    (_set(["step"], True), "step must be an int"),
    (_set(["format_version"], True), "format_version"),
    (_set(["model_class"], ["x"]), "model_class"),
    (_set(["extra"], [1]), "extra must be an object"),
    (_set(["optimizer"], [1]), "optimizer must be an object"),  # was AttributeError
    (_set(["optimizer", "class"], {"a": 1}), "optimizer must be an object"),  # was TypeError
    (_set(["optimizer", "scalars"], None), "optimizer must be an object"),
    (_set(["optimizer", "scalars", "lr"], [1e-3]), "scalar 'lr'"),  # was TypeError in float()
    (_set(["optimizer", "scalars", "lr"], -1.0), "lr .*must be >= 0"),  # was: model written, then the error
    (_set(["optimizer", "scalars", "lr"], 10**60 * 1.0), None),  # a huge but valid float is fine
    (_set(["optimizer", "scalars", "beta1"], 1.5), "beta1 must be in"),
    (_set(["optimizer", "scalars", "step"], -1), "step must be an int"),
    (_set(["optimizer", "scalars", "step"], 3.5), "step must be an int"),
    (lambda meta: meta["optimizer"]["scalars"].pop("eps"), "missing \\['eps'\\]"),  # was KeyError
    (lambda meta: "[" * 10_000 + "]" * 10_000, "nested 10000 levels"),  # was RecursionError
    (lambda meta: '{"format_version": 1, "step": 1' + "0" * 5000 + "}", "integer of 5001 digits"),
])
def test_bad_metadata_is_refused_before_anything_changes(tmp_path, edit, match):
    q = _rewrite(_saved(tmp_path), tmp_path / "bad.safetensors", edit_meta=edit)
    m, o, before = _fresh()
    if match is None:
        ck.load_checkpoint(q, m, o)
        return
    with pytest.raises(CheckpointError, match="bad.safetensors: .*" + match):
        ck.load_checkpoint(q, m, o)
    _unchanged(m, o, before)


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.update({"optim.exp_avg.0": t["optim.exp_avg.0"].view(np.int32)}), "'optim.exp_avg.0': dtype int32"),
    (lambda t: t.update({"optim.exp_avg.1": t["optim.exp_avg.1"][:-1]}), "exp_avg.1: expected shape"),
    (lambda t: t.update({"model.layers.0.weight": t["model.layers.0.weight"].view(np.int32)}), "dtype int32 in the file"),
    (lambda t: t.update({"optim.lr": np.zeros(1, np.float32)}), "'optim.lr': also an optimiser scalar"),
])
def test_bad_tensors_are_refused_before_anything_changes(tmp_path, edit, match):
    q = _rewrite(_saved(tmp_path), tmp_path / "bad.safetensors", edit_tensors=edit)
    m, o, before = _fresh()
    with pytest.raises(CheckpointError, match="bad.safetensors: .*" + match):
        ck.load_checkpoint(q, m, o)
    _unchanged(m, o, before)


def test_save_refuses_extra_that_could_not_be_loaded(tmp_path):
    m = mlp()
    nested: list = []
    for _ in range(100):
        nested = [nested]
    with pytest.raises(ValueError, match="nested .* could not be loaded back"):
        ck.save_checkpoint(tmp_path / "x.safetensors", m, extra={"deep": nested})
    with pytest.raises(ValueError, match="digits"):
        ck.save_checkpoint(tmp_path / "x.safetensors", m, extra={"big": 10**100})
    assert not os.listdir(tmp_path)
