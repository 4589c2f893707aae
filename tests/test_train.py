"""The training loop: it learns, it is deterministic, it resumes bit-identically, it fails clearly."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from tinyllm.data import load_corpus, train_val_split
from tinyllm.errors import TrainingError
from tinyllm.models.gpt import GPT, GPTConfig
from tinyllm.tokenizers.char import CharTokenizer
from tinyllm.train import LivePlot, TrainConfig, Trainer, plot_history, smooth, train


@pytest.fixture(scope="module")
def data():
    text = load_corpus()[:40_000]
    tok = CharTokenizer.from_text(text)
    ids = np.array(tok.encode(text), dtype=np.int64)
    train_ids, val_ids = train_val_split(ids, 0.1)
    return tok.vocab_size, train_ids, val_ids


def _cfg(vocab_size: int, **kw) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, context_length=16, n_layers=2, n_heads=2, dim=16, **kw)


def _params(model) -> dict[str, np.ndarray]:
    return {name: p.data.copy() for name, p in model.named_parameters()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_training_lowers_the_validation_loss(data):
    V, train_ids, val_ids = data
    model = GPT(_cfg(V), rng=0)
    cfg = TrainConfig(steps=60, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=20, eval_batches=4)
    trainer = train(model, train_ids, val_ids, cfg, progress=False)
    h = trainer.history
    assert h["val_step"] == [0, 20, 40, 60]
    assert len(h["loss"]) == 60 and h["step"] == list(range(60))
    assert h["val_loss"][0] == pytest.approx(np.log(V), abs=0.1)
    assert h["val_loss"][-1] < h["val_loss"][0] - 0.5
    assert h["lr"][4] == pytest.approx(3e-3) and h["lr"][-1] < 1e-3          # warm-up, then cosine decay
    assert max(h["grad_norm"]) > 0
    for p in model.parameters():
        assert p.data.dtype == np.float32


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_same_seed_same_run_and_other_seed_other_run(data, dropout):
    V, train_ids, val_ids = data
    cfg = TrainConfig(steps=6, batch_size=4, warmup_steps=2, eval_interval=3, eval_batches=2, seed=1)
    runs = []
    for seed in (1, 1, 2):
        model = GPT(_cfg(V, dropout=dropout), rng=0)
        train(model, train_ids, val_ids, TrainConfig(**{**cfg.__dict__, "seed": seed}), progress=False)
        runs.append(_params(model))
    _assert_same(runs[0], runs[1])
    assert not np.array_equal(runs[0]["wte.weight"], runs[2]["wte.weight"])


def _resume_roundtrip(data, dropout, save, load):
    V, train_ids, val_ids = data
    cfg = TrainConfig(steps=8, batch_size=4, warmup_steps=2, eval_interval=2, eval_batches=2, seed=3)
    straight = Trainer(GPT(_cfg(V, dropout=dropout), rng=0), train_ids, val_ids, cfg, progress=False)
    straight.fit()

    first = Trainer(GPT(_cfg(V, dropout=dropout), rng=0), train_ids, val_ids, cfg, progress=False)
    first.fit(steps=4)
    saved = save(first)
    del first
    resumed = Trainer(GPT(_cfg(V, dropout=dropout), rng=99), train_ids, val_ids, cfg, progress=False)  # other init
    load(resumed, saved)
    assert resumed.step == 4
    resumed.fit()
    _assert_same(_params(straight.model), _params(resumed.model))
    assert resumed.history == straight.history


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_resume_from_state_is_bit_identical(data, dropout):
    def save(trainer):
        return (copy.deepcopy(trainer.state()), _params(trainer.model), trainer.optimizer.state_dict())

    def load(trainer, saved):
        state, params, opt = saved
        trainer.model.load_state_dict(params)
        trainer.optimizer.load_state_dict(opt)
        trainer.load_state(state)

    _resume_roundtrip(data, dropout, save, load)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_resume_from_checkpoint_file_is_bit_identical(data, dropout, tmp_path):
    path = tmp_path / "ckpt.safetensors"

    def save(trainer):
        trainer.save(path)
        return path

    def load(trainer, saved):
        trainer.load(saved)

    _resume_roundtrip(data, dropout, save, load)


def test_nan_loss_names_the_step_and_the_learning_rate(data):
    V, train_ids, val_ids = data
    cfg = TrainConfig(steps=50, batch_size=4, lr=1e3, min_lr=0.0, warmup_steps=0, grad_clip=0.0, eval_interval=10)
    trainer = Trainer(GPT(_cfg(V), rng=0), train_ids, val_ids, cfg, progress=False)
    with np.errstate(all="ignore"), pytest.raises(TrainingError, match=r"step \d+: the training loss is nan") as err:
        trainer.fit()
    assert "learning rate" in str(err.value)


def test_nan_from_the_start_points_at_the_data_or_weights(data):
    V, train_ids, val_ids = data
    model = GPT(_cfg(V), rng=0)
    model.h[0].mlp.c_fc.weight.data[0, 0] = np.nan
    trainer = Trainer(model, train_ids, None, TrainConfig(steps=5, warmup_steps=0), progress=False)
    with pytest.raises(TrainingError, match="step 0: .*before any update.*data"):
        trainer.fit()


def test_bad_token_arrays_are_rejected(data):
    V, train_ids, _ = data
    model = GPT(_cfg(V), rng=0)
    with pytest.raises(TypeError, match="train_tokens"):
        Trainer(model, train_ids.astype(np.float32))
    with pytest.raises(ValueError, match="vocabulary"):
        Trainer(model, train_ids + V)
    with pytest.raises(ValueError, match="context_length=16"):
        Trainer(model, train_ids[:10])
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(steps=10, warmup_steps=20)
    with pytest.raises(ValueError, match="evaluate needs val_tokens"):
        Trainer(model, train_ids, progress=False).evaluate()


def test_plots(data):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    history = {"step": [0, 1, 2], "loss": [3.0, 2.0, 1.5], "lr": [1, 1, 1], "grad_norm": [1, 1, 1],
               "val_step": [0, 3], "val_loss": [3.1, 1.8]}
    fig = plot_history(history)
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_xlabel() == "step" and "loss" in ax.get_ylabel()
    assert len(ax.lines) == 3
    np.testing.assert_allclose(smooth([2.0, 2.0, 2.0]), 2.0)                # bias-corrected: no warm-up dip
    LivePlot()(None)                                                         # outside a notebook: a no-op


def test_weight_decay_only_on_matrices(data):
    V, train_ids, val_ids = data
    model = GPT(_cfg(V), rng=0)
    trainer = Trainer(model, train_ids, val_ids, TrainConfig(steps=3, warmup_steps=1, weight_decay=0.1), progress=False)
    decays = dict(zip((id(p) for p in trainer.optimizer.params), trainer.optimizer._weight_decays()))
    assert len(decays) == len(model.parameters())
    for name, p in model.named_parameters():
        assert decays[id(p)] == (0.1 if p.data.ndim == 2 else 0.0), name


def test_notebook_progress_bar_keeps_one_output(monkeypatch):
    # In a Jupyter kernel every redraw must replace one display, not add a stderr chunk per redraw.
    IPython_display = pytest.importorskip("IPython.display")

    from tinyllm import train as train_module

    calls = []

    class FakeHandle:
        def display(self, obj):
            calls.append(("display", obj.data))

        def update(self, obj):
            calls.append(("update", obj.data))

    monkeypatch.setattr(IPython_display, "DisplayHandle", FakeHandle)
    monkeypatch.setattr(train_module, "_in_notebook", lambda: True)
    bar = train_module._progress_bar(total=3, desc="training", unit="step", mininterval=0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert [kind for kind, _ in calls][0] == "display"
    assert all(kind == "update" for kind, _ in calls[1:]) and len(calls) >= 2
    assert calls[-1][1].startswith("training: 100%") and "3/3" in calls[-1][1]
    assert all("\r" not in text and "\n" not in text for _, text in calls)
