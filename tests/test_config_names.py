"""GPTConfig speaks LlamaConfig's vocabulary (dim, n_heads, n_layers, context_length); the GPT-2 names still work,
with a DeprecationWarning naming the new one (issue 13). This file uses the old names on purpose."""
import dataclasses
import warnings

import numpy as np
import pytest

import tinyllm.io.checkpoint as ck
from tinyllm.models.gpt import GPT, OLD_NAMES, PRESETS, GPTConfig
from tinyllm.models.llama import LlamaConfig
from tinyllm.optim import AdamW

NEW = dict(vocab_size=11, context_length=8, n_layers=2, n_heads=2, dim=8)
OLD = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def test_the_shared_vocabulary():
    gpt_fields = {f.name for f in dataclasses.fields(GPTConfig)}
    llama_fields = {f.name for f in dataclasses.fields(LlamaConfig)}
    assert set(OLD_NAMES.values()) <= gpt_fields & llama_fields
    assert not set(OLD_NAMES) & gpt_fields
    assert all(set(p) <= gpt_fields for p in PRESETS.values())
    cfg = GPTConfig(**NEW)
    assert cfg.to_dict() == {**NEW, "dropout": 0.0, "bias": True}
    assert repr(cfg) == ("GPTConfig(vocab_size=11, context_length=8, n_layers=2, n_heads=2, dim=8, "
                         "dropout=0.0, bias=True)")
    assert GPTConfig(11, 8, 2, 2, 8) == cfg                                # positional order unchanged
    for c in (cfg, LlamaConfig()):
        assert set(c.to_dict()) == {f.name for f in dataclasses.fields(c)}


def test_new_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = GPTConfig(**NEW)
        cfg = GPTConfig.preset("nano", context_length=4, dim=16).replace(n_layers=3)
        assert (cfg.context_length, cfg.dim, cfg.n_layers, cfg.n_heads) == (4, 16, 3, 2)
        GPT(cfg, rng=0)


@pytest.mark.parametrize("old, new", sorted(OLD_NAMES.items()))
def test_each_old_keyword_maps_and_warns(old, new):
    kwargs = {**NEW}
    kwargs[old] = kwargs.pop(new)
    with pytest.warns(DeprecationWarning, match=rf"GPTConfig\.{old} is now called {new}") as record:
        cfg = GPTConfig(**kwargs)
    assert cfg == GPTConfig(**NEW)
    assert record[0].filename == __file__                                  # points at the caller's line
    with pytest.warns(DeprecationWarning, match=new):
        assert GPTConfig.preset("nano", **{old: 4}) == GPTConfig.preset("nano", **{new: 4})
    with pytest.warns(DeprecationWarning, match=new):
        assert cfg.replace(**{old: 4}) == cfg.replace(**{new: 4})


def test_all_old_keywords_at_once():
    with pytest.warns(DeprecationWarning) as record:
        cfg = GPTConfig(**OLD, dropout=0.1)
    assert cfg == GPTConfig(**NEW, dropout=0.1)
    assert sorted(str(w.message).split()[0] for w in record) == sorted(f"GPTConfig.{o}" for o in OLD_NAMES)


@pytest.mark.parametrize("old, new", sorted(OLD_NAMES.items()))
def test_old_attribute_reads_and_writes_the_new_field(old, new):
    cfg = GPTConfig(**NEW)
    with pytest.warns(DeprecationWarning, match=rf"GPTConfig\.{old} is now called {new}") as record:
        assert getattr(cfg, old) == getattr(cfg, new)
    assert record[0].filename == __file__
    with pytest.warns(DeprecationWarning, match=new):
        setattr(cfg, old, 16)
    assert getattr(cfg, new) == 16 and old not in cfg.to_dict()


def test_old_and_new_name_together_or_unknown_names_are_refused():
    with pytest.raises(TypeError, match="both n_embd= and dim=.*pass only dim="):
        GPTConfig(**NEW, n_embd=8)
    with pytest.raises(TypeError, match="both block_size= and context_length="):
        GPTConfig.preset("nano", block_size=4, context_length=4)
    with pytest.raises(TypeError, match="n_embed"):
        GPTConfig(**NEW, n_embed=8)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match=r"GPTConfig\.context_length must be"):
        GPTConfig(**{**OLD, "block_size": 0})                               # checked under the new name


def test_checkpoint_written_with_old_config_keys_loads(tmp_path):
    """A checkpoint saved by code that still used the GPT-2 names (its config dict in ``extra``) loads, and its
    config rebuilds into the same model."""
    with pytest.warns(DeprecationWarning):
        old_cfg = GPTConfig(**OLD)
    model = GPT(old_cfg, rng=3)
    opt = AdamW(model.parameters(), lr=1e-2)
    idx = np.random.default_rng(0).integers(0, 11, size=(2, 8))
    model.loss(idx, np.roll(idx, -1, axis=1))
    model.backward()
    opt.step()
    path = tmp_path / "old.safetensors"
    ck.save_checkpoint(path, model, opt, step=1, extra={"config": OLD})    # the keys an old config dict had

    with pytest.warns(DeprecationWarning, match="is now called"):
        cfg = GPTConfig(**ck.load_checkpoint(path, GPT(old_cfg, rng=0))["extra"]["config"])
    assert cfg == GPTConfig(**NEW)
    fresh = GPT(cfg, rng=0)
    fresh_opt = AdamW(fresh.parameters(), lr=1e-2)
    info = ck.load_checkpoint(path, fresh, fresh_opt)
    assert info["step"] == 1 and info["extra"]["config"] == OLD
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    np.testing.assert_array_equal(model.forward(idx), fresh.forward(idx))
