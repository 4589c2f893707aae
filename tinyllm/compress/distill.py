"""Knowledge distillation: a small student learns from a teacher's logits.

Hinton, Vinyals, Dean (2015), "Distilling the Knowledge in a Neural Network"
(arXiv:1503.02531). With temperature ``T`` the softened distributions are
``p = softmax(z_teacher / T)`` and ``q = softmax(z_student / T)``; the loss mixes the
KL divergence from teacher to student with the ordinary hard-label cross-entropy::

    L = alpha * T^2 * KL(p || q) + (1 - alpha) * CE(softmax(z_student), y)

averaged over the ``N`` token positions. The factor ``T^2`` keeps the soft term's
gradient the same size as ``T`` changes (section 2 of the paper), because

    dKL/dz_student = (q - p) / T      so      d(T^2 KL)/dz_student = T (q - p).

The gradient of the hard term is the familiar ``softmax(z_student) - onehot(y)``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from tinyllm import plug
from tinyllm.backend import get_array_module
from tinyllm.nn.functional import log_softmax


@plug.point("distillation_loss")
def distillation_loss(
    student_logits: Any,
    teacher_logits: Any,
    targets: Any | None = None,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
    ignore_index: int = -100,
) -> tuple[float, Any]:
    """Loss and its gradient with respect to ``student_logits``.

    ``student_logits``/``teacher_logits``: ``(..., V)``; ``targets``: integer ``(...)``
    (positions equal to ``ignore_index`` are left out of both terms), or None for a
    pure soft loss (``alpha`` must then be 1). Returns ``(loss: float, dlogits)`` with
    ``dlogits`` of the student's shape and dtype.
    """
    xp = get_array_module(student_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher_logits must have the student's shape {tuple(student_logits.shape)}, "
                         f"got {tuple(teacher_logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if targets is None and alpha != 1.0:
        raise ValueError("targets are needed unless alpha == 1 (pure distillation)")
    V = student_logits.shape[-1]
    zs = student_logits.reshape(-1, V)                                       # (N, V)
    zt = teacher_logits.reshape(-1, V).astype(zs.dtype)                      # (N, V)
    T = float(temperature)
    if targets is not None:
        if tuple(targets.shape) != tuple(student_logits.shape[:-1]):
            raise ValueError(f"targets must have shape {tuple(student_logits.shape[:-1])}, got {tuple(targets.shape)}")
        y = targets.reshape(-1)                                              # (N,)
        valid = y != ignore_index
    else:
        y = None
        valid = xp.ones(zs.shape[0], dtype=bool)
    n = max(int(valid.sum()), 1)
    w = valid.astype(zs.dtype)[:, None] / zs.dtype.type(n)                   # (N, 1) mean weights

    log_q = log_softmax(zs / zs.dtype.type(T))                               # (N, V) student, softened
    log_p = log_softmax(zt / zs.dtype.type(T))                               # (N, V) teacher, softened
    p = xp.exp(log_p)
    kl = float(((p * (log_p - log_q)) * w).sum())
    grad = zs.dtype.type(alpha * T) * (xp.exp(log_q) - p) * w                # (N, V)
    loss = alpha * T * T * kl
    if alpha < 1.0:
        log_s = log_softmax(zs)                                              # (N, V)
        y_safe = xp.where(valid, y, 0)
        picked = xp.take_along_axis(log_s, y_safe[:, None], axis=1)[:, 0]   # (N,)
        ce = float(-(picked * w[:, 0]).sum())
        hard = xp.exp(log_s)
        hard[xp.arange(zs.shape[0]), y_safe] -= 1.0
        grad = grad + zs.dtype.type(1.0 - alpha) * hard * w
        loss += (1.0 - alpha) * ce
    return loss, grad.reshape(student_logits.shape).astype(student_logits.dtype)


def heldout_loss(model: Any, tokens: Any, *, batch_size: int = 8, batches: int = 4,
                 context_length: int | None = None, seed: int = 1234, get_batch: Callable | None = None) -> float:
    """Mean next-token cross-entropy (nats) of ``model`` on ``batches`` random windows of ``tokens`` (N,).

    The windows come from their own generator seeded by ``seed``, so every call, and every model,
    is scored on the same text: curves of different runs are comparable point by point.
    """
    if get_batch is None:
        from tinyllm.data import get_batch  # noqa: PLC0415
    context_length = context_length or model.config.context_length
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(batches):
        x, y = get_batch(tokens, context_length, batch_size, rng)               # (B, T), (B, T)
        z = model.forward(x)                                                 # (B, T, V)
        total += distillation_loss(z, z, y, alpha=0.0)[0]
    return total / batches


def train_student(
    student: Any,
    tokens: Any,
    *,
    teacher: Any | None = None,
    steps: int = 100,
    batch_size: int = 8,
    context_length: int | None = None,
    lr: float = 3e-3,
    temperature: float = 2.0,
    alpha: float = 0.5,
    seed: int = 0,
    eval_tokens: Any | None = None,
    eval_every: int = 0,
    eval_batches: int = 4,
    progress: bool = True,
    get_batch: Callable | None = None,
) -> dict[str, list[float]]:
    """Train a tinyllm GPT ``student`` on ``tokens`` (N,), from ``teacher``'s logits when given.

    With ``teacher=None`` this is ordinary next-token training (the baseline), with
    the *same* batches (same ``seed``), optimiser and schedule, so the two runs
    differ only in the loss (Hinton et al. 2015, section 3, compare a distilled and a
    plain model trained on the same small data set). Both models need
    ``forward(idx (B, T)) -> (B, T, V)``; the student also ``backward(dlogits)`` and
    ``parameters()``. The teacher is put in eval mode and never updated; its logits are
    computed on the student's batch at every step. AdamW at a constant ``lr``, gradient
    clipping at 1.0. Returns ``{"step", "train_loss", "eval_step", "eval_loss"}`` where
    ``train_loss`` is the hard-label cross-entropy of each batch (comparable between runs) and
    ``eval_loss`` the cross-entropy on ``eval_tokens`` (:func:`heldout_loss`, ``eval_batches``
    fixed batches) at step 0, every ``eval_every`` steps and at the end.
    """
    from tinyllm.optim import AdamW, clip_grad_norm  # h1's optimiser

    rng = np.random.default_rng(seed)
    context_length = context_length or student.config.context_length
    if get_batch is None:
        from tinyllm.data import get_batch  # noqa: PLC0415
    opt = AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    hist: dict[str, list[float]] = {"step": [], "train_loss": [], "eval_step": [], "eval_loss": []}
    if teacher is not None:
        teacher.eval()

    def record_eval(step: int) -> None:
        if eval_tokens is None or not eval_every:
            return
        student.eval()
        hist["eval_step"].append(step)
        hist["eval_loss"].append(heldout_loss(student, eval_tokens, batch_size=batch_size, batches=eval_batches,
                                              context_length=context_length, get_batch=get_batch))
        student.train()

    student.train()
    record_eval(0)
    bar = range(steps)
    if progress:                           # imported only when used: tqdm.auto warns in a notebook without ipywidgets
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc="distilled" if teacher is not None else "baseline", unit="step",
                   mininterval=0.5)                                          # few redraws: small saved notebooks
    for step in bar:
        x, y = get_batch(tokens, context_length, batch_size, rng)               # (B, T), (B, T)
        logits = student.forward(x)                                          # (B, T, V)
        ce, dlogits = distillation_loss(logits, logits, y, alpha=0.0)        # hard-label CE and its gradient
        if teacher is not None:
            t_logits = teacher.forward(x)                                    # (B, T, V)
            _, dlogits = distillation_loss(logits, t_logits, y, temperature=temperature, alpha=alpha)
        student.zero_grad()
        student.backward(dlogits)
        clip_grad_norm(student.parameters(), 1.0)
        opt.step()
        hist["step"].append(step)
        hist["train_loss"].append(ce)
        if (step + 1) % max(eval_every, 1) == 0 or step + 1 == steps:
            record_eval(step + 1)
    student.eval()
    return hist
