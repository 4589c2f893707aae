"""A GPT: decoder-only transformer with explicit backward (GPT-2 layout, Radford et al., 2019).

    x_0 = E[idx] + P[0:T]                                  token + learned position embeddings
    for each block l = 1..L (pre-LayerNorm, Xiong et al., 2020):
        x = x + Attention(LN_1(x))                         causal multi-head self-attention
        x = x + W_2 GELU(W_1 LN_2(x))                      MLP, hidden width F = 4C
    logits = LN_f(x) E^T                                   head tied to the token embedding

The head reuses the token embedding matrix E (V, C) (Press & Wolf, 2017), so E
receives two gradient contributions, one from the lookup and one from the head;
they add up in ``wte.weight.grad``.

Initialisation follows GPT-2: every weight N(0, 0.02^2), biases zero, and the two
projections that write into the residual stream (``attn.c_proj`` and ``mlp.c_proj``)
N(0, (0.02 / sqrt(2L))^2) (:func:`tinyllm.init.gpt2_residual`).
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinyllm import init, plug
from tinyllm.backend import get_array_module
from tinyllm.nn.activations import GELU
from tinyllm.nn.attention import CausalSelfAttention
from tinyllm.nn.dropout import Dropout
from tinyllm.nn.embedding import Embedding
from tinyllm.nn.linear import Linear, matmul
from tinyllm.nn.loss import CrossEntropyLoss
from tinyllm.nn.module import Module, Parameter
from tinyllm.nn.norm import LayerNorm


@dataclass
class GPTConfig:
    """Hyper-parameters of a :class:`GPT`, named as in :class:`~tinyllm.models.llama.LlamaConfig`.
    ``GPTConfig.preset(name, **overrides)`` gives the named ones."""

    vocab_size: int      # V
    context_length: int  # longest context T the position embedding covers
    n_layers: int        # L blocks
    n_heads: int         # H heads per block
    dim: int             # C model width (D = C / H per head)
    dropout: float = 0.0
    bias: bool = True    # biases in the Linear layers and LayerNorms

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "n_layers", "n_heads", "dim"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"GPTConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        """A named configuration, e.g. ``GPTConfig.preset("char-small", vocab_size=tok.vocab_size)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}: expected one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **_new_names(overrides)})

    def replace(self, **changes: Any) -> "GPTConfig":
        return dataclasses.replace(self, **_new_names(changes))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component, computed from the shapes alone (no model is built)."""
        V, T, L, C = self.vocab_size, self.context_length, self.n_layers, self.dim
        b = 1 if self.bias else 0
        ln = C * (1 + b)
        counts = {
            "token embedding (tied head)": V * C,
            "position embedding": T * C,
            "attention": L * (C * 3 * C + b * 3 * C + C * C + b * C),
            "MLP": L * (C * 4 * C + b * 4 * C + 4 * C * C + b * C),
            "LayerNorm": (2 * L + 1) * ln,
        }
        counts["total"] = sum(counts.values())
        return counts


# The presets used in the notebooks, tests and benchmark. vocab_size is usually
# overridden with the tokenizer's; "gpt2" is GPT-2 small, for counting only.
PRESETS: dict[str, dict[str, Any]] = {
    "nano": dict(vocab_size=11, context_length=8, n_layers=2, n_heads=2, dim=8),            # gradient checks
    "char-small": dict(vocab_size=96, context_length=64, n_layers=4, n_heads=4, dim=64),    # notebook 05 training
    "bench": dict(vocab_size=96, context_length=128, n_layers=4, n_heads=4, dim=128),       # train_throughput.py
    "gpt2": dict(vocab_size=50257, context_length=1024, n_layers=12, n_heads=12, dim=768),  # GPT-2 small (124M)
}


# GPTConfig used GPT-2's names until it took LlamaConfig's. The one table of the old names: GPTConfig(...),
# preset(...) and replace(...) still take them as keywords, and cfg.<old name> still reads and writes the field,
# each with a DeprecationWarning that names the new name.
OLD_NAMES: dict[str, str] = {"n_embd": "dim", "n_head": "n_heads", "n_layer": "n_layers", "block_size": "context_length"}


def _warn_old_name(old: str, stacklevel: int = 4) -> None:
    new = OLD_NAMES[old]
    warnings.warn(f"GPTConfig.{old} is now called {new}: write {new}", DeprecationWarning, stacklevel=stacklevel)


def _new_names(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with each old name of :data:`OLD_NAMES` replaced by its new one."""
    out = dict(kwargs)
    for old, new in OLD_NAMES.items():
        if old in out:
            if new in out:
                raise TypeError(f"GPTConfig got both {old}= and {new}=: {old} is the old name of {new}; pass only {new}=")
            _warn_old_name(old)
            out[new] = out.pop(old)
    return out


def _old_name_property(old: str) -> property:
    new = OLD_NAMES[old]

    def get(self):
        _warn_old_name(old, stacklevel=3)
        return getattr(self, new)

    def set(self, value):
        _warn_old_name(old, stacklevel=3)
        setattr(self, new, value)

    return property(get, set, doc=f"Deprecated: the old name of ``{new}``.")


_dataclass_init = GPTConfig.__init__


@functools.wraps(_dataclass_init)
def _init_with_old_names(self, *args: Any, **kwargs: Any) -> None:
    _dataclass_init(self, *args, **_new_names(kwargs))


GPTConfig.__init__ = _init_with_old_names      # type: ignore[method-assign]
for _old in OLD_NAMES:
    setattr(GPTConfig, _old, _old_name_property(_old))
del _old


class MLP(Module):
    """Position-wise feed-forward network: Linear C -> 4C, GELU, Linear 4C -> C."""

    def __init__(self, dim: int, *, dropout: float = 0.0, bias: bool = True, rng=None, dropout_rng=None,
                 dtype: Any = np.float32):
        self.c_fc = Linear(dim, 4 * dim, bias=bias, rng=rng, dtype=dtype)           # W: (C, F)
        self.gelu = GELU()
        self.c_proj = Linear(4 * dim, dim, bias=bias, rng=rng, dtype=dtype)         # W: (F, C)
        self.dropout = Dropout(dropout, rng=dropout_rng) if dropout > 0 else None

    def forward(self, x: Any) -> Any:
        h = self.gelu.forward(self.c_fc.forward(x))                          # (B, T, F)
        out = self.c_proj.forward(h)                                         # (B, T, C)
        if self.dropout is not None and self.training:
            out = self.dropout.forward(out)
        return out

    def backward(self, dout: Any) -> Any:
        if self.dropout is not None and self.training:
            dout = self.dropout.backward(dout)
        return self.c_fc.backward(self.gelu.backward(self.c_proj.backward(dout)))   # (B, T, C)


BLOCK_POINTS = frozenset({"block_forward", "block_backward"})


def _block_of(p: dict, n_head: int, eps: float) -> "Block":
    """A :class:`Block` (no dropout) holding the weights ``p`` (its parameter names), gradients zeroed."""
    C = p["ln_1.weight"].shape[0]
    config = GPTConfig(vocab_size=1, context_length=1, n_layers=1, n_heads=n_head, dim=C)
    blk = Block(config, rng=0, dtype=p["ln_1.weight"].dtype)
    for name, param in blk.named_parameters():
        param.data = p[name]
        param.grad = get_array_module(param.data).zeros_like(param.data)
    blk.ln_1.eps = blk.ln_2.eps = float(eps)
    return blk


@plug.point("block_forward")
def block_forward(x, p: dict, n_head: int, eps: float = 1e-5):
    """One pre-LayerNorm block as a function of its weights (:class:`Block`'s math, no dropout):
    ``h = x + Attn(LN_1(x))``, ``y = h + W_2 GELU(W_1 LN_2(h))``.  ``p``: :meth:`Block.weights`.
    x (B, T, C) -> (B, T, C)"""
    return _block_of(p, n_head, eps)._forward(x)


@plug.point("block_backward")
def block_backward(dy, x, p: dict, n_head: int, eps: float = 1e-5):
    """Gradients of :func:`block_forward` at ``x`` for the upstream gradient ``dy`` (B, T, C):
    ``(dx, grads)``, ``grads`` a dict with ``p``'s keys."""
    blk = _block_of(p, n_head, eps)
    blk._forward(x)
    dx = blk._backward(dy)
    return dx, {name: param.grad for name, param in blk.named_parameters()}


def _bias_sizes(C: int) -> dict:
    return {"ln_1.bias": C, "attn.c_attn.bias": 3 * C, "attn.c_proj.bias": C, "ln_2.bias": C,
            "mlp.c_fc.bias": 4 * C, "mlp.c_proj.bias": C}


class Block(Module):
    """One pre-LayerNorm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)).

    Inside ``plug.use(block_forward=..., block_backward=...)`` (either or both) it runs
    :func:`block_forward` and :func:`block_backward` on its weights instead."""

    def __init__(self, config: GPTConfig, *, rng=None, dropout_rng=None, dtype: Any = np.float32):
        C = config.dim
        self.ln_1 = LayerNorm(C, bias=config.bias, dtype=dtype)
        self.attn = CausalSelfAttention(C, config.n_heads, dropout=config.dropout, bias=config.bias, rng=rng,
                                        dropout_rng=dropout_rng, dtype=dtype)
        self.ln_2 = LayerNorm(C, bias=config.bias, dtype=dtype)
        self.mlp = MLP(C, dropout=config.dropout, bias=config.bias, rng=rng, dropout_rng=dropout_rng, dtype=dtype)

    def weights(self) -> dict:
        """The weights by parameter name (``ln_1.weight``, ``attn.c_attn.weight``, ...), as
        :func:`block_forward` takes them; zeros stand in for the biases of a ``bias=False`` block."""
        p = {name: param.data for name, param in self.named_parameters()}
        xp = get_array_module(self.ln_1.weight.data)
        for name, n in _bias_sizes(self.ln_1.dim).items():
            p.setdefault(name, xp.zeros(n, dtype=self.ln_1.weight.data.dtype))
        return p

    def forward(self, x: Any) -> Any:
        self._plugged_x = None
        if BLOCK_POINTS.intersection(plug.in_use()):
            if self.training and self.mlp.dropout is not None:
                raise plug.PlugError("plugged block_forward / block_backward have no dropout: "
                                     "build the model with dropout=0.0 or call model.eval()")
            self._plugged_x = x
            return block_forward(x, self.weights(), self.attn.n_heads, self.ln_1.eps)
        return self._forward(x)

    def backward(self, dx: Any) -> Any:
        if getattr(self, "_plugged_x", None) is None:
            return self._backward(dx)
        dx, grads = block_backward(dx, self._plugged_x, self.weights(), self.attn.n_heads, self.ln_1.eps)
        for name, param in self.named_parameters():
            param.grad += grads[name]
        return dx

    def _forward(self, x: Any) -> Any:
        x = x + self.attn.forward(self.ln_1.forward(x))                      # (B, T, C)
        return x + self.mlp.forward(self.ln_2.forward(x))                    # (B, T, C)

    def _backward(self, dx: Any) -> Any:
        # each residual branch: the gradient flows straight through AND through the branch
        dx = dx + self.ln_2.backward(self.mlp.backward(dx))                  # (B, T, C)
        dx += self.ln_1.backward(self.attn.backward(dx))                     # (B, T, C)
        return dx


class GPT(Module):
    """Decoder-only transformer. ``forward(idx (B, T)) -> logits (B, T, V)``, ``backward(dlogits)``.

    ``rng`` (a seed or Generator) draws the initial weights; dropout draws from
    :attr:`dropout_rng`, a generator of its own, whose state a trainer saves to
    resume a run exactly.
    """

    def __init__(self, config: GPTConfig, *, rng: np.random.Generator | int | None = None, dtype: Any = np.float32):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.config = config
        self.dtype = np.dtype(dtype)
        self.dropout_rng = np.random.default_rng(rng.integers(2**63))      # one generator for every Dropout
        V, C = config.vocab_size, config.dim
        self.wte = Embedding(V, C, rng=rng)                                  # (V, C), also the output head
        self.wpe = Embedding(config.context_length, C, rng=rng)              # (T_max, C)
        self.drop = Dropout(config.dropout, rng=self.dropout_rng) if config.dropout > 0 else None
        self.h = [Block(config, rng=rng, dropout_rng=self.dropout_rng, dtype=dtype) for _ in range(config.n_layers)]
        self.ln_f = LayerNorm(C, bias=config.bias, dtype=dtype)
        self.loss_fn = CrossEntropyLoss()
        self._init_weights(rng)
        self._cache: tuple | None = None

    def _init_weights(self, rng: np.random.Generator) -> None:
        """GPT-2 initialisation (see the module docstring), in ``self.dtype``."""
        L = self.config.n_layers
        for name, p in self.named_parameters():
            shape = p.shape
            if name.endswith("c_proj.weight"):
                p.data = init.gpt2_residual(shape, L, rng=rng, dtype=self.dtype)
            elif name.startswith("ln") or ".ln_" in name:
                p.data = (init.ones if name.endswith("weight") else init.zeros)(shape, dtype=self.dtype)
            elif name.endswith("bias"):
                p.data = init.zeros(shape, dtype=self.dtype)
            else:                                                            # Linear weights and embeddings
                p.data = init.normal(shape, 0.0, 0.02, rng=rng, dtype=self.dtype)
            p.grad = np.zeros_like(p.data)

    # ---- forward / backward ----------------------------------------------
    def _check_idx(self, idx: Any) -> None:
        if not hasattr(idx, "dtype") or not np.issubdtype(np.dtype(idx.dtype), np.integer):
            raise TypeError(f"idx must be an integer array of token ids (B, T), got {getattr(idx, 'dtype', type(idx).__name__)}")
        if idx.ndim != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        T = idx.shape[1]
        if not 1 <= T <= self.config.context_length:
            raise ValueError(f"idx has T={T} positions; this model takes 1 to context_length={self.config.context_length}")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"idx holds token ids in [{lo}, {hi}], outside the vocabulary [0, {self.config.vocab_size})")

    def forward(self, idx: Any) -> Any:
        """Logits (B, T, V) of the next token at every position of ``idx`` (B, T)."""
        self._check_idx(idx)
        B, T = idx.shape
        x = self.wte.forward(idx) + self.wpe.weight.data[:T]                # (B, T, C)
        if self.drop is not None and self.training:
            x = self.drop.forward(x)
        for block in self.h:
            x = block.forward(x)                                             # (B, T, C)
        x = self.ln_f.forward(x)                                             # (B, T, C)
        C, V = x.shape[-1], self.wte.weight.data.shape[0]
        logits = matmul(x.reshape(-1, C), self.wte.weight.data.T).reshape(B, T, V)  # (B, T, V) tied head
        self._cache = (x, T)
        return logits

    def backward(self, dlogits: Any = None) -> None:
        """Accumulate every parameter's gradient from ``dlogits`` (B, T, V).

        Without an argument, back-propagates the last :meth:`loss`.
        """
        if self._cache is None:
            raise RuntimeError("GPT.backward called before forward")
        if dlogits is None:
            dlogits = self.loss_fn.backward()                               # (B, T, V)
        x, T = self._cache
        C, V = self.config.dim, self.config.vocab_size
        E = self.wte.weight
        dlogits2 = dlogits.reshape(-1, V)                                   # (B*T, V)
        matmul(dlogits2.T, x.reshape(-1, C), out=E.grad, accumulate=True)   # (V, C) head's share of dE
        dx = matmul(dlogits2, E.data).reshape(x.shape)                      # (B, T, C)
        dx = self.ln_f.backward(dx)
        for block in reversed(self.h):
            dx = block.backward(dx)                                          # (B, T, C)
        if self.drop is not None and self.training:
            dx = self.drop.backward(dx)
        self.wpe.weight.grad[:T] += dx.sum(axis=0)                          # (T, C)
        self.wte.backward(dx)                                                # lookup's share of dE

    def loss(self, idx: Any, targets: Any) -> float:
        """Mean cross-entropy of predicting ``targets`` (B, T) from ``idx`` (B, T); ``backward()`` follows."""
        return self.loss_fn.forward(self.forward(idx), targets)

    # ---- bookkeeping ---------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component of this model (each tied tensor counted once)."""
        counts = {"token embedding (tied head)": 0, "position embedding": 0, "attention": 0, "MLP": 0, "LayerNorm": 0}
        for name, p in self.named_parameters():
            if name.startswith("wte."):
                key = "token embedding (tied head)"
            elif name.startswith("wpe."):
                key = "position embedding"
            elif ".attn." in name:
                key = "attention"
            elif ".mlp." in name:
                key = "MLP"
            else:
                key = "LayerNorm"
            counts[key] += p.size
        counts["total"] = sum(counts.values())
        return counts

    def astype(self, dtype: Any) -> "GPT":
        """Convert every parameter (and zero its gradient) to ``dtype``, e.g. float64 for gradient checks."""
        self.dtype = np.dtype(dtype)
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = get_array_module(p.data).zeros_like(p.data)
        return self
