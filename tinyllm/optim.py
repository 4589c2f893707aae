"""Optimisers, a learning-rate schedule and gradient clipping, with PyTorch's update formulas.

Every optimiser updates a list of :class:`~tinyllm.nn.module.Parameter` in place
from their ``.grad``. With g = grad, p = parameter, lr = learning rate, t = step:

- **SGD** (with momentum mu, Nesterov, L2 weight decay wd)::

      g <- g + wd p ;  b <- mu b + g ;  g <- g + mu b (Nesterov) or b ;  p <- p - lr g

- **Adam** (Kingma & Ba 2015), L2 weight decay added to the gradient like ``torch.optim.Adam``::

      g <- g + wd p ;  m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
      p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

- **AdamW** (Loshchilov & Hutter 2019): the decay is decoupled from the gradient,
  p <- p (1 - lr wd), then the Adam step without the L2 term.

``params`` is a list of Parameters, or of PyTorch-style groups
``{"params": [...], "weight_decay": 0.0}`` (e.g. no decay for biases and norms).
Hyperparameters are Python floats and the state has the parameters' dtype, so a
float32 model stays float32. ``state_dict()`` / ``load_state_dict()`` round-trip
exactly, so training resumes bit-identically.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Iterable

import ml_dtypes
import numpy as np

from tinyllm import plug
from tinyllm.backend import get_array_module
from tinyllm.nn.module import Parameter
from tinyllm.threads import as_rows, map_rows

_RANGES = {"beta1": (0.0, 1.0), "beta2": (0.0, 1.0)}  # [lo, hi); other hyperparameters: >= 0


def _check_nonneg(name: str, value: float) -> float:
    value = float(value)
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class Optimizer:
    """Holds the parameters, the learning rate ``lr``, the step count and per-parameter state buffers."""

    _buffers: tuple[str, ...] = ()  # names of per-parameter state arrays
    _hyper: tuple[str, ...] = ()  # names of float hyperparameters kept in the state dict

    def __init__(self, params: Iterable[Parameter] | Iterable[dict], lr: float):
        self.params: list[Parameter] = []
        self._decay_override: list[float | None] = []  # per parameter: a group's weight_decay, or None
        for i, item in enumerate(list(params)):
            if isinstance(item, dict):  # a parameter group, as in PyTorch
                unknown = sorted(set(item) - {"params", "weight_decay"})
                if "params" not in item or unknown:
                    raise ValueError(f"parameter group {i} must have the key 'params' and optionally 'weight_decay', "
                                     f"got keys {sorted(item)}")
                wd = item.get("weight_decay")
                group = list(item["params"])
                wd = None if wd is None else _check_nonneg(f"weight_decay of parameter group {i}", wd)
            else:
                group, wd = [item], None
            for p in group:
                if not isinstance(p, Parameter):
                    raise TypeError(f"params[{i}] must be a tinyllm Parameter (or a group dict), got {type(p).__name__}")
                self.params.append(p)
                self._decay_override.append(wd)
        if not self.params:
            raise ValueError("params is an empty list: the optimiser has nothing to update")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("params holds the same Parameter more than once")
        self.lr = lr
        self.step_count = 0
        self.state: dict[str, list[Any]] = {
            name: [get_array_module(p.data).zeros_like(p.data) for p in self.params] for name in self._buffers
        }

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = _check_nonneg("lr (learning rate)", value)

    def _weight_decays(self) -> list[float]:
        """The weight decay of each parameter: its group's value, else the optimiser's ``weight_decay``."""
        return [self.weight_decay if wd is None else wd for wd in self._decay_override]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad[...] = 0

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- state -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Flat dict: ``lr``, ``step`` and hyperparameters as Python scalars, ``<buffer>.<i>`` as array copies."""
        state: dict[str, Any] = {"lr": self.lr, "step": self.step_count}
        state.update({name: getattr(self, name) for name in self._hyper})
        for name, arrays in self.state.items():
            for i, a in enumerate(arrays):
                state[f"{name}.{i}"] = a.copy()
        return state

    def check_state_dict(self, state: Any) -> dict[str, Any]:
        """Check a state dict against this optimiser without changing anything; returns it cleaned.

        Keys must be exactly :meth:`state_dict`'s (``KeyError`` otherwise); arrays must have the
        buffers' shapes and a floating dtype, ``step`` must be an int in [0, 2**63), ``lr`` and the
        hyperparameters real numbers in their ranges (``ValueError``/``TypeError`` otherwise).
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        expected = {"lr", "step", *self._hyper, *(f"{n}.{i}" for n in self._buffers for i in range(len(self.params)))}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected, key=str)
        if missing or unexpected:
            raise KeyError(f"{type(self).__name__} state dict does not match: missing {missing}, unexpected {unexpected}")
        clean: dict[str, Any] = {}
        for name, arrays in self.state.items():
            for i, a in enumerate(arrays):
                key, value = f"{name}.{i}", state[f"{name}.{i}"]
                if not (hasattr(value, "shape") and hasattr(value, "dtype")):
                    raise TypeError(f"optimiser state {key}: expected an array, got {type(value).__name__}")
                if tuple(value.shape) != tuple(a.shape):
                    raise ValueError(f"optimiser state {key}: expected shape {tuple(a.shape)}, got {tuple(value.shape)}")
                if value.dtype.kind != "f" and value.dtype != ml_dtypes.bfloat16:
                    raise ValueError(f"optimiser state {key}: expected a floating-point array, got dtype {value.dtype}")
                clean[key] = value
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < 1 << 63:
            raise ValueError(f"optimiser state step must be an int in [0, 2**63), got {step!r}"[:200])
        clean["step"] = int(step)
        for name in ("lr", *self._hyper):
            value = state[name]
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise TypeError(f"optimiser state {name} must be a real number, got {type(value).__name__}")
            try:
                value = float(value)
            except OverflowError:
                raise ValueError(f"optimiser state {name} is an integer too large for a float") from None
            lo_hi = _RANGES.get(name)
            if lo_hi is None:
                _check_nonneg(f"optimiser state {name}", value)
            elif not lo_hi[0] <= value < lo_hi[1]:
                raise ValueError(f"optimiser state {name} must be in [{lo_hi[0]}, {lo_hi[1]}), got {value}")
            clean[name] = value
        return clean

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (arrays may be NumPy when the parameters live on the GPU).

        Everything is checked (:meth:`check_state_dict`) before anything is changed.
        """
        state = self.check_state_dict(state)
        self.lr = state["lr"]
        self.step_count = state["step"]
        for name in self._hyper:
            setattr(self, name, state[name])
        for name, arrays in self.state.items():
            for i, a in enumerate(arrays):
                a[...] = get_array_module(a).asarray(state[f"{name}.{i}"], dtype=a.dtype)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay, as ``torch.optim.SGD``."""

    _buffers = ("momentum_buffer",)
    _hyper = ("momentum", "weight_decay")

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        self.momentum = _check_nonneg("momentum", momentum)
        self.weight_decay = _check_nonneg("weight_decay", weight_decay)
        if nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.nesterov = bool(nesterov)
        self._buffers = ("momentum_buffer",) if self.momentum else ()  # plain SGD keeps no state
        super().__init__(params, lr)

    def step(self) -> None:
        self.step_count += 1
        lr, mu = self.lr, self.momentum
        buffers = self.state.get("momentum_buffer", [None] * len(self.params))
        for p, buf, wd in zip(self.params, buffers, self._weight_decays()):
            g = p.grad + wd * p.data if wd else p.grad
            if mu:
                buf *= mu  # the buffer starts at 0, so after step 1 it equals g, as in PyTorch
                buf += g
                g = g + mu * buf if self.nesterov else buf
            p.data -= lr * g


class Adam(Optimizer):
    """Adam with bias correction; ``weight_decay`` is L2 added to the gradient, as ``torch.optim.Adam``."""

    _buffers = ("exp_avg", "exp_avg_sq")
    _hyper = ("beta1", "beta2", "eps", "weight_decay")
    decoupled = False

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        beta1, beta2 = (float(b) for b in betas)
        for name, b in (("betas[0]", beta1), ("betas[1]", beta2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {b}")
        self.beta1, self.beta2 = beta1, beta2
        self.eps = _check_nonneg("eps", eps)
        self.weight_decay = _check_nonneg("weight_decay", weight_decay)
        super().__init__(params, lr)

    @property
    def betas(self) -> tuple[float, float]:
        return self.beta1, self.beta2

    def step(self) -> None:
        self.step_count += 1
        t, lr, b1, b2 = self.step_count, self.lr, self.beta1, self.beta2
        plugged = "adam_step" in plug.in_use()
        for i, (p, wd) in enumerate(zip(self.params, self._weight_decays())):
            m, v = self.state["exp_avg"][i], self.state["exp_avg_sq"][i]
            if not plugged and all(a.flags.c_contiguous for a in (p.data, p.grad, m, v)):  # in place, by rows
                rows = functools.partial(_adam_rows, t=t, lr=lr, beta1=b1, beta2=b2, eps=self.eps, weight_decay=wd,
                                         decoupled=self.decoupled)
                map_rows(rows, as_rows(p.data), as_rows(p.grad), as_rows(m), as_rows(v))
                continue
            g = p.grad
            if wd and self.decoupled:
                p.data *= 1.0 - lr * wd
            elif wd:
                g = g + wd * p.data
            new_p, new_m, new_v = adam_step(p.data, g, m, v, t, lr=lr, beta1=b1, beta2=b2, eps=self.eps)
            for name, old, new in (("param", p.data, new_p), ("m", m, new_m), ("v", v, new_v)):
                if new is not old:          # a replacement (plug point adam_step) returned new arrays
                    if tuple(getattr(new, "shape", ())) != tuple(old.shape):
                        raise plug.PlugError(f"adam_step returned {name} of shape {tuple(getattr(new, 'shape', ()))}, "
                                             f"expected {tuple(old.shape)}: return (new param, new m, new v)")
                    old[...] = new


@plug.point("adam_step")
def adam_step(param, grad, m, v, t: int, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
              eps: float = 1e-8):
    """One Adam step of one array at step ``t`` (1-based); returns (param, m, v).

    m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,  param <- param - lr m_hat / (sqrt(v_hat) + eps) with
    m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t) (Kingma & Ba 2015), in PyTorch's arrangement
    param <- param - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). This one updates param, m and v
    IN PLACE and returns them; :class:`Adam` also accepts new arrays (lesson 02's ``adam_step`` through the
    plug point of the same name) and copies them into its state.
    """
    xp = get_array_module(param)
    m *= beta1
    m += (1.0 - beta1) * grad
    v *= beta2
    v += (1.0 - beta2) * (grad * grad)
    denom = xp.sqrt(v)
    denom /= math.sqrt(1.0 - beta2 ** t)
    denom += eps
    param -= lr / (1.0 - beta1 ** t) * (m / denom)
    return param, m, v


def _adam_rows(param, grad, m, v, *, t, lr, beta1, beta2, eps, weight_decay, decoupled):
    """Rows of one :class:`Adam` / :class:`AdamW` update, in place: the weight decay, then :func:`adam_step`.
    Run in row blocks on the BLAS threads (:func:`tinyllm.threads.map_rows`); same bits as the whole array."""
    if weight_decay and decoupled:
        param *= 1.0 - lr * weight_decay
    elif weight_decay:
        grad = grad + weight_decay * param
    adam_step.__wrapped__(param, grad, m, v, t, lr=lr, beta1=beta1, beta2=beta2, eps=eps)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as ``torch.optim.AdamW``."""

    decoupled = True

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class WarmupCosine:
    """Learning rate at a step: linear warm-up to ``max_lr``, then cosine decay to ``min_lr``.

    lr(s) = max_lr (s + 1) / warmup_steps                                for s < warmup_steps
    lr(s) = min_lr + (max_lr - min_lr) (1 + cos(pi r)) / 2,  r = (s - warmup) / (total - warmup)
    lr(s) = min_lr                                                       for s >= total_steps
    (Loshchilov & Hutter 2017, "SGDR"; the schedule of GPT-2/3 style training.)
    """

    def __init__(self, warmup_steps: int, total_steps: int, max_lr: float, min_lr: float = 0.0):
        if warmup_steps < 0 or total_steps < 1 or warmup_steps > total_steps:
            raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, "
                             f"got warmup_steps={warmup_steps}, total_steps={total_steps}")
        self.max_lr, self.min_lr = _check_nonneg("max_lr", max_lr), _check_nonneg("min_lr", min_lr)
        if self.min_lr > self.max_lr:
            raise ValueError(f"min_lr ({min_lr}) must not exceed max_lr ({max_lr})")
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.max_lr * (step + 1) / self.warmup_steps
        if step >= self.total_steps:
            return self.min_lr
        r = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.min_lr + 0.5 * (self.max_lr - self.min_lr) * (1.0 + math.cos(math.pi * r))


def clip_grad_norm(params: Iterable[Parameter], max_norm: float) -> float:
    """Scale all gradients in place so their global L2 norm is at most ``max_norm``; return the norm before.

    As ``torch.nn.utils.clip_grad_norm_``: coefficient = max_norm / (norm + 1e-6), applied only when < 1.
    A non-finite norm is returned as is (the caller decides what to do: the trainer raises).
    """
    params = list(params)
    max_norm = _check_nonneg("max_norm", max_norm)
    if not params:
        return 0.0
    xp = get_array_module(params[0].grad)
    sq = sum(xp.vdot(p.grad.ravel(), p.grad.ravel()) for p in params)  # one device scalar, one sync below
    total = math.sqrt(float(sq))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for p in params:
            p.grad *= coef
    return total
