"""Causal multi-head self-attention with an explicit backward pass.

Each position t of a sequence asks a *query* q_t, every position offers a
*key* k_s and a *value* v_s. Attention mixes the values, weighted by how well
the keys match the query (Vaswani et al., 2017, "Attention Is All You Need", eq. 1):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(D) + M) V

with the causal mask M[t, s] = 0 for s <= t and -inf for s > t, so a token never
sees the future. Multi-head attention runs H of these in parallel on D = C / H
wide slices and concatenates the results before an output projection:

    qkv = x W_qkv + b_qkv          # one fused Linear C -> 3C
    y_h = Attention(q_h, k_h, v_h)  # for every head h at once: (B, H, T, D)
    out = concat_h(y_h) W_o + b_o

Backward of P = softmax(S), Y = P V (per batch and head, rows t):

    dV = P^T dY,   dP = dY V^T,   dS = P * (dP - rowsum(dP * P)),
    dQ = dS K / sqrt(D),   dK = dS^T Q / sqrt(D).

Everything is batched over (B, H): no Python loop touches a head or a token.

:func:`attention_forward` and :func:`attention_backward` are the same layer as plain functions of its
weights (the exercises of lesson 05 and plug points: inside ``plug.use(attention_forward=...,
attention_backward=...)`` every :class:`CausalSelfAttention` runs them instead).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from tinyllm import plug
from tinyllm.backend import get_array_module
from tinyllm.nn import functional as F
from tinyllm.nn.dropout import Dropout
from tinyllm.nn.linear import Linear
from tinyllm.nn.module import Module, _check_float_array
from tinyllm.threads import map_rows

_MASKS: dict[tuple[Any, int, Any], Any] = {}


def causal_mask(T: int, xp: Any = np, dtype: Any = np.float32):
    """Additive causal mask (T, T): 0 on and below the diagonal, -inf above it (cached)."""
    key = (xp.__name__, T, np.dtype(dtype).str)
    mask = _MASKS.get(key)
    if mask is None:
        upper = xp.triu(xp.ones((T, T), dtype=bool), k=1)                  # (T, T) True where s > t
        mask = xp.where(upper, -xp.inf, 0.0).astype(dtype)                 # (T, T)
        _MASKS[key] = mask
    return mask


def causal_attention(q: Any, k: Any, v: Any, *, dropout: Dropout | None = None):
    """softmax(q k^T / sqrt(D) + mask) v for every batch and head at once.

    q, k, v: (B, H, T, D). Returns ``(y (B, H, T, D), att (B, H, T, T))`` where
    ``att`` holds the attention weights (each row sums to 1) before dropout.
    Without dropout, the batch runs in blocks on the BLAS threads (:func:`tinyllm.threads.map_rows`).
    """
    xp = get_array_module(q)
    T, D = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D)                                             # Python float: keeps float32
    att = xp.empty(q.shape[:-1] + (k.shape[-2],), dtype=xp.result_type(q, k))  # (B, H, T, T)
    rows = functools.partial(_attention_rows, scale=scale, mask=causal_mask(T, xp, att.dtype))
    if dropout is not None:                                                # dropout draws in order: whole batch
        rows(q, k, None, att, None)
        y = dropout.forward(att) @ v                                       # (B, H, T, D)
    else:
        y = xp.empty(q.shape[:-1] + (v.shape[-1],), dtype=xp.result_type(att, v))  # (B, H, T, D)
        _map_batch(rows, q, k, v, att, y)
    return y, att


def causal_attention_backward(dy: Any, q: Any, k: Any, v: Any, att: Any, *,
                              dropout: Dropout | None = None, out: Any = None):
    """Gradients of :func:`causal_attention` with respect to q, k and v.

    dy: (B, H, T, D); att: the weights returned by the forward pass (B, H, T, T).
    ``out`` may be a (3, B, H, T, D) array to write ``dq, dk, dv`` into.
    Returns ``(dq, dk, dv)``, each (B, H, T, D).
    """
    xp = get_array_module(dy)
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D)
    if out is None:
        out = xp.empty((3,) + tuple(q.shape), dtype=dy.dtype)               # (3, B, H, T, D)
    if dropout is None:
        _map_batch(functools.partial(_attention_backward_rows, scale=scale), dy, q, k, v, att, *out)
        return out[0], out[1], out[2]
    p = dropout.backward(att)                                              # what multiplied v (same mask)
    xp.matmul(p.swapaxes(-1, -2), dy, out=out[2])                          # dv = P^T dY
    dp = dropout.backward(dy @ v.swapaxes(-1, -2))                         # (B, H, T, T) through the mask
    _attention_backward_rows(dy, q, k, None, att, out[0], out[1], None, scale=scale, dp=dp)
    return out[0], out[1], out[2]


def _map_batch(rows, *arrays) -> None:
    """``rows(*arrays)`` in blocks of the batch (first) axis on the BLAS threads, each block's products on
    one thread; arrays without a batch axis (T, D) in one call."""
    if arrays[0].ndim >= 3:
        map_rows(rows, *arrays, one_blas_thread=True)
    else:
        rows(*arrays)


def _attention_rows(q, k, v, att, y, *, scale, mask):
    """Blocks (n, ..., T, D) of the forward pass: att = softmax(q k^T scale + mask), y = att v (into att, y;
    no y when v is None)."""
    xp = get_array_module(q)
    xp.matmul(q * scale, k.swapaxes(-1, -2), out=att)                      # (n, ..., T, T) scores
    att += mask                                                            # future -> -inf
    F.softmax(att, out=att)                                                # rows sum to 1
    if v is not None:
        xp.matmul(att, v, out=y)                                           # (n, ..., T, D)


def _attention_backward_rows(dy, q, k, v, att, dq, dk, dv, *, scale, dp=None):
    """Blocks of the backward pass, into dq, dk, dv (``dp`` given: dv and dP = dY V^T are done already)::

        dV = P^T dY,   dP = dY V^T,   dS = P * (dP - rowsum(dP * P)),   dQ = dS K scale,   dK = dS^T Q scale
    """
    xp = get_array_module(dy)
    if dp is None:
        xp.matmul(att.swapaxes(-1, -2), dy, out=dv)                        # dv = P^T dY
        dp = dy @ v.swapaxes(-1, -2)                                       # (n, ..., T, T)
    dp -= (dp * att).sum(axis=-1, keepdims=True)                           # softmax backward,
    dp *= att                                                              # dS = P * (dP - rowsum(dP * P))
    dp *= scale                                                            # fold 1/sqrt(D) in once
    xp.matmul(dp, k, out=dq)                                               # dq = dS K / sqrt(D)
    xp.matmul(dp.swapaxes(-1, -2), q, out=dk)                              # dk = dS^T Q / sqrt(D)


ATTENTION_POINTS = frozenset({"attention_forward", "attention_backward"})


def _attention_of(w_qkv, b_qkv, w_o, b_o, n_head: int) -> "CausalSelfAttention":
    """A :class:`CausalSelfAttention` (no dropout) holding these weights, gradients zeroed."""
    C = w_qkv.shape[0]
    att = CausalSelfAttention(C, n_head, rng=0, dtype=w_qkv.dtype)
    for param, value in ((att.c_attn.weight, w_qkv), (att.c_attn.bias, b_qkv), (att.c_proj.weight, w_o),
                         (att.c_proj.bias, b_o)):
        param.data = value
        param.grad = get_array_module(value).zeros_like(value)
    return att


@plug.point("attention_forward")
def attention_forward(x, w_qkv, b_qkv, w_o, b_o, n_head: int):
    """Multi-head causal self-attention as a function of its weights (the module's math, no dropout):
    ``[q | k | v] = x W_qkv + b_qkv``, ``out = concat_h softmax(q_h k_h^T / sqrt(D) + M) v_h  W_o + b_o``.
    x (B, T, C), w_qkv (C, 3C), b_qkv (3C,), w_o (C, C), b_o (C,) -> (B, T, C)"""
    return _attention_of(w_qkv, b_qkv, w_o, b_o, n_head)._forward(x)


@plug.point("attention_backward")
def attention_backward(dout, x, w_qkv, b_qkv, w_o, b_o, n_head: int):
    """Gradients of :func:`attention_forward` at ``x`` for the upstream gradient ``dout`` (B, T, C):
    ``(dx, dw_qkv, db_qkv, dw_o, db_o)``, shaped like ``x`` and the weights."""
    att = _attention_of(w_qkv, b_qkv, w_o, b_o, n_head)
    att._forward(x)
    dx = att._backward(dout)
    return dx, att.c_attn.weight.grad, att.c_attn.bias.grad, att.c_proj.weight.grad, att.c_proj.bias.grad


class CausalSelfAttention(Module):
    """Multi-head causal self-attention: fused QKV projection, attention, output projection.

    After ``forward`` the attention weights of the last call are in
    :attr:`attention_weights` (B, H, T, T), ready for a heat map.
    """

    def __init__(self, dim: int, n_heads: int, *, dropout: float = 0.0, bias: bool = True,
                 rng: np.random.Generator | int | None = None, dropout_rng: np.random.Generator | None = None,
                 dtype: Any = np.float32):
        if dim % n_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by n_heads ({n_heads})")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.dim, self.n_heads, self.head_dim = dim, n_heads, dim // n_heads
        self.c_attn = Linear(dim, 3 * dim, bias=bias, rng=rng, dtype=dtype)   # W: (C, 3C)
        self.c_proj = Linear(dim, dim, bias=bias, rng=rng, dtype=dtype)       # W: (C, C)
        # dropout draws from its own generator so that changing it never changes the initial weights
        dropout_rng = dropout_rng if dropout_rng is not None else np.random.default_rng(rng.integers(2**63))
        self.attn_dropout = Dropout(dropout, rng=dropout_rng) if dropout > 0 else None
        self.resid_dropout = Dropout(dropout, rng=dropout_rng) if dropout > 0 else None
        self._cache: tuple | None = None

    @property
    def attention_weights(self):
        """Attention weights (B, H, T, T) of the last forward pass (row t: how much t attends to each s)."""
        return None if self._cache is None else self._cache[-1]

    def _weights(self) -> tuple:
        """(w_qkv, b_qkv, w_o, b_o) as :func:`attention_forward` takes them (zero biases when there are none)."""
        xp = get_array_module(self.c_attn.weight.data)
        C = self.dim
        zero = lambda n: xp.zeros(n, dtype=self.c_attn.weight.data.dtype)  # noqa: E731
        return (self.c_attn.weight.data, zero(3 * C) if self.c_attn.bias is None else self.c_attn.bias.data,
                self.c_proj.weight.data, zero(C) if self.c_proj.bias is None else self.c_proj.bias.data)

    def forward(self, x: Any) -> Any:
        """The layer's output (B, T, C); inside ``plug.use`` with an attention point plugged, through
        :func:`attention_forward` (and later :func:`attention_backward`)."""
        self._plugged_x = None
        if ATTENTION_POINTS.intersection(plug.in_use()):
            if self.training and self.attn_dropout is not None:
                raise plug.PlugError("plugged attention_forward / attention_backward have no dropout: "
                                     "build the model with dropout=0.0 or call model.eval()")
            _check_float_array(x, "x", ndim=3, last_dim=self.dim)
            self._plugged_x, self._cache = x, None
            return attention_forward(x, *self._weights(), self.n_heads)
        return self._forward(x)

    def backward(self, dout: Any) -> Any:
        if getattr(self, "_plugged_x", None) is None:
            return self._backward(dout)
        dx, *grads = attention_backward(dout, self._plugged_x, *self._weights(), self.n_heads)
        for param, g in zip((self.c_attn.weight, self.c_attn.bias, self.c_proj.weight, self.c_proj.bias), grads):
            if param is not None:
                param.grad += g
        return dx

    def _forward(self, x: Any) -> Any:
        _check_float_array(x, "x", ndim=3, last_dim=self.dim)
        B, T, C = x.shape
        H, D = self.n_heads, self.head_dim
        qkv = self.c_attn.forward(x)                                       # (B, T, 3C)
        qkv = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)          # (3, B, H, T, D) view
        q, k, v = qkv[0], qkv[1], qkv[2]                                   # (B, H, T, D) each
        drop = self.attn_dropout if self.training else None
        y, att = causal_attention(q, k, v, dropout=drop)                   # (B, H, T, D), (B, H, T, T)
        self._cache = (q, k, v, drop, att)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)                       # (B, T, C) heads side by side
        out = self.c_proj.forward(y)                                       # (B, T, C)
        if self.resid_dropout is not None and self.training:
            out = self.resid_dropout.forward(out)
        return out

    def _backward(self, dout: Any) -> Any:
        if self._cache is None:
            raise RuntimeError("CausalSelfAttention.backward called before forward")
        q, k, v, drop, att = self._cache
        B, H, T, D = q.shape
        xp = get_array_module(dout)
        if self.resid_dropout is not None and self.training:
            dout = self.resid_dropout.backward(dout)
        dy = self.c_proj.backward(dout)                                    # (B, T, C)
        dy = dy.reshape(B, T, H, D).transpose(0, 2, 1, 3)                  # (B, H, T, D) view
        dqkv = xp.empty((B, T, 3, H, D), dtype=dy.dtype)                   # (B, T, 3, H, D)
        causal_attention_backward(dy, q, k, v, att, dropout=drop,
                                  out=dqkv.transpose(2, 0, 3, 1, 4))       # written in place as (3, B, H, T, D)
        return self.c_attn.backward(dqkv.reshape(B, T, 3 * H * D))         # (B, T, C)
