"""Training a language model: the loop, its schedule, its safety checks, and resuming it exactly.

One step (Loshchilov & Hutter 2019 for AdamW; Pascanu et al. 2013 for clipping)::

    x, y   = get_batch(train_tokens, T, B, data_rng)   # random windows, y = x shifted by one
    loss   = model.loss(x, y)                          # mean cross-entropy, forward pass
    model.backward()                                   # every parameter's .grad
    norm   = clip_grad_norm(params, max_norm)          # rescale if the gradient is too long
    opt.lr = schedule(step)                            # linear warm-up, then cosine decay
    opt.step()                                         # AdamW update

Every ``eval_interval`` steps the mean loss on fixed validation batches is recorded.
All randomness comes from two generators seeded by ``TrainConfig.seed``: one picks
the batches, the other draws dropout masks. Their states, the step, the model and
the optimiser state go into a checkpoint, so a run that is stopped, saved, loaded
and continued produces exactly (bit for bit) the parameters of a run that never stopped.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from tinyllm.backend import get_array_module
from tinyllm.data import get_batch
from tinyllm.errors import TrainingError
from tinyllm.optim import AdamW, WarmupCosine, clip_grad_norm


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (the model's own are in its config)."""

    steps: int = 1000                  # optimiser steps of the whole run
    batch_size: int = 16               # B sequences per step
    lr: float = 1e-3                   # peak learning rate, reached after warm-up
    min_lr: float = 1e-4               # where the cosine decay ends
    warmup_steps: int = 100
    weight_decay: float = 0.1          # AdamW's decoupled decay, on weight matrices only
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0             # max global gradient norm (0 turns clipping off)
    eval_interval: int = 100           # steps between validation losses
    eval_batches: int = 8              # batches averaged for one validation loss
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_interval", "eval_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"TrainConfig.warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}")
        if not 0.0 <= self.min_lr <= self.lr:
            raise ValueError(f"TrainConfig needs 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        self.betas = tuple(float(b) for b in self.betas)


def _new_history() -> dict[str, list]:
    return {"step": [], "loss": [], "lr": [], "grad_norm": [], "val_step": [], "val_loss": []}


class Trainer:
    """Trains ``model`` (a :class:`~tinyllm.models.gpt.GPT` or anything with ``loss(x, y)``,
    ``backward()``, ``parameters()`` and ``config.context_length``) on a 1-D array of token ids.

    ``callbacks`` are called as ``callback(trainer)`` after every validation (e.g. :class:`LivePlot`).
    """

    def __init__(self, model, train_tokens, val_tokens=None, config: TrainConfig | None = None, *,
                 callbacks: Sequence[Callable[["Trainer"], Any]] = (), progress: bool = True):
        self.model = model
        self.config = config if config is not None else TrainConfig()
        if not isinstance(self.config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(self.config).__name__}")
        self.train_tokens = self._check_tokens(train_tokens, "train_tokens")
        self.val_tokens = None if val_tokens is None else self._check_tokens(val_tokens, "val_tokens")
        self.context_length = model.config.context_length
        c = self.config
        # weight decay on matrices only (Linear weights, embeddings); never on biases and LayerNorm gains
        params = model.parameters()
        groups = [{"params": [p for p in params if p.data.ndim >= 2], "weight_decay": c.weight_decay},
                  {"params": [p for p in params if p.data.ndim < 2], "weight_decay": 0.0}]
        self.optimizer = AdamW([g for g in groups if g["params"]], lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)
        self.schedule = WarmupCosine(c.warmup_steps, c.steps, c.lr, c.min_lr)
        self.step = 0                                                        # steps done so far
        self.data_rng = np.random.default_rng([c.seed, 0])                  # picks the batches
        dropout_rng = getattr(model, "dropout_rng", None)
        if dropout_rng is not None:                                          # reseed in place: layers share it
            dropout_rng.bit_generator.state = np.random.default_rng([c.seed, 1]).bit_generator.state
        self.callbacks = list(callbacks)
        self.progress = progress
        self.history = _new_history()

    def _check_tokens(self, tokens, name: str):
        if not hasattr(tokens, "ndim") or tokens.ndim != 1 or not np.issubdtype(np.dtype(tokens.dtype), np.integer):
            raise TypeError(f"{name} must be a 1-D integer array of token ids (N,), "
                            f"got {type(tokens).__name__} {getattr(tokens, 'dtype', '')} {getattr(tokens, 'shape', '')}")
        V = getattr(self.model.config, "vocab_size", None)
        if V is not None and tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= V):
            raise ValueError(f"{name} holds ids in [{int(tokens.min())}, {int(tokens.max())}] "
                             f"but the model's vocabulary is [0, {V})")
        if tokens.shape[0] < self.model.config.context_length + 1:
            raise ValueError(f"{name} has {tokens.shape[0]} tokens; context_length={self.model.config.context_length} "
                             f"needs at least {self.model.config.context_length + 1}")
        return tokens

    # ---- one step ---------------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimiser step; returns the training loss of its batch."""
        c, model, step = self.config, self.model, self.step
        x, y = get_batch(self.train_tokens, self.context_length, c.batch_size, self.data_rng)   # (B, T) each
        model.train()
        model.zero_grad()
        loss = model.loss(x, y)
        if not math.isfinite(loss):
            raise TrainingError(f"step {step}: the training loss is {loss}. {self._likely_cause('loss')}")
        model.backward()
        params = self.optimizer.params
        if c.grad_clip > 0:
            norm = clip_grad_norm(params, c.grad_clip)
        else:
            xp = get_array_module(params[0].grad)
            norm = math.sqrt(float(sum(xp.vdot(p.grad.ravel(), p.grad.ravel()) for p in params)))
        if not math.isfinite(norm):
            raise TrainingError(f"step {step}: the gradient norm is {norm} (loss {loss:.4f} was finite). "
                                f"{self._likely_cause('gradient')}")
        lr = self.schedule(step)
        self.optimizer.lr = lr
        self.optimizer.step()
        self.step += 1
        h = self.history
        h["step"].append(step)
        h["loss"].append(loss)
        h["lr"].append(lr)
        h["grad_norm"].append(norm)
        return loss

    def _likely_cause(self, what: str) -> str:
        losses = self.history["loss"]
        lr = self.schedule(self.step)
        if not losses:
            return ("It is not finite before any update, so the cause is the input, not the optimiser: check the "
                    "data (token ids within the vocabulary, no NaN in the weights you loaded) and the initialisation.")
        if len(losses) >= 2 and losses[-1] > 1.5 * min(losses):
            return (f"The loss had risen from {min(losses):.3f} to {losses[-1]:.3f}: the run diverged. The learning "
                    f"rate is likely too high (lr={lr:.2e}); lower TrainConfig.lr, lengthen warmup_steps or "
                    f"clip gradients harder (grad_clip={self.config.grad_clip}).")
        return (f"The {what} overflowed after {len(losses)} finite steps. Likely causes: a learning rate too high "
                f"(lr={lr:.2e}), no gradient clipping (grad_clip={self.config.grad_clip}), or a bad batch of data.")

    # ---- validation ---------------------------------------------------------------------------
    def evaluate(self, tokens=None, batches: int | None = None) -> float:
        """Mean loss over ``batches`` fixed batches (the same every call: curves are comparable), in eval mode."""
        tokens = self.val_tokens if tokens is None else tokens
        if tokens is None:
            raise ValueError("evaluate needs val_tokens (none were given to the Trainer)")
        rng = np.random.default_rng([self.config.seed, 2])                 # fixed; never touches data_rng
        model = self.model
        model.eval()
        try:
            losses = [model.loss(*get_batch(tokens, self.context_length, self.config.batch_size, rng))
                      for _ in range(batches or self.config.eval_batches)]
        finally:
            model.train()
        return float(np.mean(losses))

    def _validate(self) -> None:
        if self.val_tokens is None:
            return
        val = self.evaluate()
        if not math.isfinite(val):
            raise TrainingError(f"step {self.step}: the validation loss is {val}. {self._likely_cause('loss')}")
        self.history["val_step"].append(self.step)
        self.history["val_loss"].append(val)
        for callback in self.callbacks:
            callback(self)

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self, steps: int | None = None) -> dict[str, list]:
        """Train until ``config.steps`` (or ``steps`` more, stopping early) and return the history.

        The validation loss is recorded at step 0, every ``eval_interval`` steps and at the end.
        """
        end = self.config.steps if steps is None else min(self.config.steps, self.step + steps)
        bar = None
        if self.progress:
            bar = _progress_bar(total=self.config.steps, initial=self.step, desc="training", unit="step")
        try:
            if self.step == 0 and not self.history["val_step"]:
                self._validate()
            while self.step < end:
                loss = self.train_step()
                last = self.step == self.config.steps
                if self.step % self.config.eval_interval == 0 or last:
                    self._validate()
                if bar is not None:
                    bar.update(1)
                    if self.step % 10 == 0 or last:
                        val = self.history["val_loss"][-1] if self.history["val_loss"] else float("nan")
                        bar.set_postfix(loss=f"{loss:.3f}", val=f"{val:.3f}", refresh=False)
        finally:
            if bar is not None:
                bar.close()
        return self.history

    # ---- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything beyond model and optimiser that a resumed run needs (JSON-friendly)."""
        dropout_rng = getattr(self.model, "dropout_rng", None)
        return {
            "step": self.step,
            "data_rng": self.data_rng.bit_generator.state,
            "dropout_rng": None if dropout_rng is None else dropout_rng.bit_generator.state,
            "history": self.history,
            "train_config": dataclasses.asdict(self.config),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned (the model and optimiser are restored separately)."""
        if state["train_config"]["seed"] != self.config.seed:
            raise ValueError(f"the checkpoint was trained with seed {state['train_config']['seed']}, "
                             f"this Trainer has seed {self.config.seed}")
        self.step = int(state["step"])
        self.data_rng.bit_generator.state = state["data_rng"]
        dropout_rng = getattr(self.model, "dropout_rng", None)
        if dropout_rng is not None and state.get("dropout_rng") is not None:
            dropout_rng.bit_generator.state = state["dropout_rng"]
        self.history = {k: list(v) for k, v in state["history"].items()}

    def save(self, path) -> None:
        """Write model, optimiser state, step and RNG states to ``path`` (atomic, via :mod:`tinyllm.io.checkpoint`)."""
        from tinyllm.io.checkpoint import save_checkpoint

        save_checkpoint(path, self.model, self.optimizer, step=self.step, extra={"trainer": _jsonable(self.state())})

    def load(self, path) -> None:
        """Resume from a checkpoint written by :meth:`save`: the next steps match an uninterrupted run exactly."""
        from tinyllm.io.checkpoint import load_checkpoint

        info = load_checkpoint(path, self.model, self.optimizer)
        state = info["extra"]["trainer"]
        self.load_state(state)
        if int(info["step"]) != self.step:
            raise TrainingError(f"checkpoint {str(path)!r}: step {info['step']} disagrees with the trainer state "
                                f"step {self.step}")


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, nbclient), False in a terminal or a script."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class _DisplayLine:
    """A file for tqdm inside a Jupyter kernel: every redraw replaces one display in place.

    tqdm's text bar writes a carriage return and the bar to stderr at each redraw. A notebook saved by nbclient
    keeps every such write as a chunk of its own (hundreds per run, shown as error boxes); this
    keeps one plain-text output, the bar's last state."""

    encoding = "utf-8"                                 # lets tqdm draw its block characters

    def __init__(self):
        from IPython.display import DisplayHandle

        self._handle = DisplayHandle()
        self._text: str | None = None

    def write(self, s: str) -> None:
        from IPython.display import Pretty

        lines = [part.strip() for part in s.replace("\r", "\n").split("\n") if part.strip()]
        if not lines or lines[-1] == self._text:
            return
        if self._text is None:
            self._handle.display(Pretty(lines[-1]))
        else:
            self._handle.update(Pretty(lines[-1]))
        self._text = lines[-1]

    def flush(self) -> None:
        pass


def _progress_bar(**kwargs):
    """A text progress bar redrawn at most twice a second: on stderr in a terminal, as one
    display updated in place in a notebook (so a saved notebook holds one line, not hundreds)."""
    from tqdm import tqdm

    if _in_notebook():
        kwargs.setdefault("file", _DisplayLine())
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(**kwargs)


def _jsonable(obj):
    """Plain Python values (lists, dicts, floats, ints, str) of a nested structure."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def train(model, train_tokens, val_tokens=None, config: TrainConfig | None = None, **kwargs) -> Trainer:
    """Build a :class:`Trainer`, run it to the end and return it (``.history`` holds the curves)."""
    trainer = Trainer(model, train_tokens, val_tokens, config, **kwargs)
    trainer.fit()
    return trainer


# ---- plots ------------------------------------------------------------------------------------

def smooth(values: Sequence[float], beta: float = 0.9) -> np.ndarray:
    """Bias-corrected exponential moving average (as Adam's m-hat) of a noisy curve."""
    out, m = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        m = beta * m + (1.0 - beta) * v
        out[i] = m / (1.0 - beta ** (i + 1))
    return out


def plot_history(history: dict[str, list], ax=None, title: str = "Training and validation loss"):
    """Plot the per-step training loss (raw and smoothed) and the validation loss; returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    if history["loss"]:
        ax.plot(history["step"], history["loss"], color="tab:blue", alpha=0.25, lw=1, label="train (per batch)")
        ax.plot(history["step"], smooth(history["loss"]), color="tab:blue", lw=2, label="train (smoothed)")
    if history["val_loss"]:
        ax.plot(history["val_step"], history["val_loss"], "o-", color="tab:orange", lw=2, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if history["loss"] or history["val_loss"]:
        ax.legend()
    return fig


class LivePlot:
    """A Trainer callback that redraws the loss curves in place in a Jupyter notebook.

    It updates one display (``IPython.display.display(..., display_id=True)``), so the
    progress bar printed in the same cell stays. Outside a notebook it does nothing;
    call :func:`plot_history` at the end instead.
    """

    def __init__(self, title: str = "Training and validation loss"):
        self.title = title
        self.fig = None
        self._ax = None
        self._handle = None

    _in_notebook = staticmethod(_in_notebook)

    def __call__(self, trainer: Trainer) -> None:
        if not self._in_notebook():
            return
        import matplotlib.pyplot as plt
        from IPython.display import display

        if self.fig is None:
            self.fig, self._ax = plt.subplots(figsize=(7, 4))
            plt.close(self.fig)                        # shown through the display handle only, not again at the end
        self._ax.clear()
        plot_history(trainer.history, ax=self._ax, title=self.title)
        if self._handle is None:
            self._handle = display(self.fig, display_id=True)
        else:
            self._handle.update(self.fig)


__all__ = ["TrainConfig", "Trainer", "train", "plot_history", "LivePlot", "smooth"]
