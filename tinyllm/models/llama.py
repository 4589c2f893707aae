"""The Llama architecture for inference, in float32 NumPy (or CuPy).

One decoder block (Touvron et al., 2023, "LLaMA"; Llama 2 adds grouped-query attention)::

    h = x + Attention(RMSNorm(x))          # RoPE on q and k, GQA, causal mask
    y = h + W_down (SiLU(W_gate h) * W_up h)   # SwiGLU MLP (Shazeer, 2020)

and the model is ``Embedding -> N blocks -> RMSNorm -> head``, the head tied to
the embedding (``logits = x @ E^T``) for SmolLM2.

The pieces, with their equations:

- RMSNorm (Zhang & Sennrich, 2019): ``y = x / sqrt(mean(x^2) + eps) * w``.
- Rotary position embeddings (Su et al., 2021, "RoFormer"): each pair of
  coordinates ``(a, b)`` of a query/key head at position ``p`` is rotated by the
  angle ``p * theta_i``, ``theta_i = base^(-2i/D)``::

      (a, b) -> (a cos - b sin,  b cos + a sin)

  so ``q_p . k_s`` depends only on ``p - s``.
- Grouped-query attention (Ainslie et al., 2023): ``H`` query heads share ``KV``
  key/value heads, ``G = H / KV`` queries per group. Query head ``h`` reads
  key/value head ``h // G``. We never copy K/V ``G`` times: the queries of a
  group are stacked into one matrix ``(G*T, D)`` and multiplied with the one
  ``(S, D)`` key matrix of their group.
- SwiGLU MLP: ``down(silu(gate(x)) * up(x))``, ``silu(z) = z * sigmoid(z)``.

**Which coordinates form a rotation pair.** There are two conventions. Meta's
original code rotates *adjacent* pairs ``(x0, x1), (x2, x3), ...``; HF
``transformers`` rotates the two *halves* ``(x_i, x_{i+D/2})``. They are the
same model up to a permutation of the rows of ``W_q`` and ``W_k`` in each head.
llama.cpp's converter stores GGUF files in the adjacent-pair layout: it permutes
each head's rows so that GGUF row ``2i + j`` is HF row ``i + j*D/2``.
If we read GGUF rows and rotate halves, the model silently degrades (no error,
just wrong text). We *un-permute on load* (:func:`tinyllm.models.gguf_map.unpermute_qk`) back to HF's
half-split layout, so that our q, k and KV cache equal transformers' exactly and
the rotation is two slices. (Rotating adjacent pairs of the stored rows would
be equally right; what matters is that the layout and the rotation match.)

Weights follow the library convention ``y = x @ W`` with ``W`` of shape
``(IN, OUT)``. The projections of one block that read the same input are fused:
``W_qkv`` is ``[W_q | W_k | W_v]`` and ``W_gu`` is ``[W_gate | W_up]``, so a
decoding step makes two large matrix products per block instead of five.

The KV cache (:class:`KVCache`) is preallocated for the whole generation, one
slot per position: prefill writes the prompt's keys/values in one go, each
decode step writes one column. Batches of prompts of different lengths are left
padded; the cache remembers which slots are real tokens (``valid``), from which
the positions (for RoPE) and the attention mask follow.

**Hooks** (for interpretability, :mod:`tinyllm.interp`): inside ``with
model.hooks(resid_post=fn, ...):`` the forward pass calls ``fn(value, layer)`` at
the named tap points of every block (:data:`TAP_POINTS`); ``fn`` returns None to
only read the value, or an array of the same shape to replace it. Outside the
``with`` nothing is hooked, and the forward pass pays one ``if`` per tap point.
"""
from __future__ import annotations

import contextlib
import math
import dataclasses
import operator
from dataclasses import asdict, dataclass, fields
from typing import Callable

import numpy as np

from tinyllm import kernels, plug
from tinyllm.backend import get_array_module, is_gpu_array, to_device
from tinyllm.errors import ConfigError
from tinyllm.nn.module import Module, Parameter
from tinyllm.threads import decode_threads, limit_blas_threads

_NEG = -3.0e38  # "minus infinity" that stays finite, so a fully masked row gives no NaN

# The values a hook can read or replace, in the order one block computes them (layer ``l``).
TAP_POINTS = {
    "resid_pre": "(B, T, C) the residual stream entering block l (resid_post of block l-1)",
    "attn_pattern": "(B, H, T, S) attention probabilities of each query head (rows sum to 1)",
    "head_out": "(B, T, H, D) each head's attention-weighted values, before the output projection",
    "attn_out": "(B, T, C) the attention sublayer's output, added to the residual stream",
    "mlp_out": "(B, T, C) the MLP sublayer's output, added to the residual stream",
    "resid_post": "(B, T, C) the residual stream leaving block l",
}


@dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama model (defaults: SmolLM2-135M)."""

    vocab_size: int = 49152
    dim: int = 576            # C
    n_layers: int = 30
    n_heads: int = 9          # H
    n_kv_heads: int = 3       # KV
    head_dim: int = 64        # D
    ffn_dim: int = 1536       # F
    rope_base: float = 100000.0
    norm_eps: float = 1e-5
    context_length: int = 8192
    tie_embeddings: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "context_length"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ConfigError(f"LlamaConfig.{name} must be a positive int, got {v!r}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        for name in ("rope_base", "norm_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not v > 0:
                raise ConfigError(f"LlamaConfig.{name} must be a positive number, got {v!r}")

    def replace(self, **changes) -> "LlamaConfig":
        """A copy with ``changes`` applied (:func:`dataclasses.replace`), validated like a new config:
        ``cfg.replace(n_layers=1)``. An unknown field raises :class:`~tinyllm.errors.ConfigError`."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ConfigError(f"LlamaConfig has no field(s) {unknown}; its fields are {[f.name for f in fields(self)]}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------
# pure functions (forward only)
# ---------------------------------------------------------------------------
# The elementwise pieces live in tinyllm.kernels: one function each, a NumPy reference
# that is the definition, and a fused CuPy kernel used on float32 GPU arrays. The model
# calls them directly, so CPU and GPU run the same code. ``rms_norm`` is the kernels' function.
rms_norm = kernels.rms_norm      # x / sqrt(mean(x^2) + eps) * w               (..., C) -> (..., C)


def rope_tables(head_dim: int, base: float, length: int, dtype=np.float32):
    """cos and sin of the rotation angles ``p * base^(-2i/D)``: two (length, D/2) arrays.

    Angles are computed in float64 and stored as float32."""
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (D/2,)
    angles = np.arange(length, dtype=np.float64)[:, None] * inv_freq[None, :]      # (length, D/2)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


# ---------------------------------------------------------------------------
# one block as plain functions: the plug points of exercises/08
# ---------------------------------------------------------------------------
# The same block as :meth:`Llama._forward`, written the way the lesson teaches it: unfused weights, one
# function per piece. :class:`Llama` runs its fused loop by default; inside ``plug.use(...)`` with any of
# these points replaced it runs every block through :func:`llama_block` instead, so a learner's block
# (or only their RoPE, SwiGLU or attention) runs the whole model.
@plug.point("apply_rope")
def apply_rope(x, positions, base: float = 10000.0):
    """RoPE, half-split layout, at ``positions`` (T,): x (..., T, D) -> (..., T, D); angles in float64."""
    xp = get_array_module(x)
    D = x.shape[-1]
    inv_freq = base ** (-np.arange(0, D, 2, dtype=np.float64) / D)                 # (D/2,) as in rope_tables
    angles = xp.asarray(positions, dtype=np.float64)[:, None] * xp.asarray(inv_freq)  # (T, D/2)
    return kernels.rope(x, xp.cos(angles).astype(x.dtype), xp.sin(angles).astype(x.dtype))


@plug.point("swiglu_mlp")
def swiglu_mlp(x, w_gate, w_up, w_down):
    """SwiGLU MLP (Shazeer 2020): ``(silu(x W_gate) * x W_up) W_down``.  (..., C) -> (..., C)"""
    return kernels.swiglu(x @ w_gate, x @ w_up) @ w_down


@plug.point("gqa_attention")
def gqa_attention(q, k, v):
    """Causal grouped-query attention: query head h reads key/value head h // (H / KV), no copy of K or V.
    q (B, H, T, D), k and v (B, KV, T, D) -> (B, H, T, D)."""
    xp = get_array_module(q)
    B, H, T, D = q.shape
    KV = k.shape[1]
    G = H // KV
    qg = (q * (1.0 / math.sqrt(D))).reshape(B, KV, G * T, D)            # (B, KV, G*T, D): heads kv*G + g
    att = (qg @ k.swapaxes(-1, -2)).reshape(B, KV, G, T, T)             # (B, KV, G, T, T)
    causal = xp.arange(T)[None, :] <= xp.arange(T)[:, None]             # (T, T) key s <= query t
    att = kernels.softmax(xp.where(causal, att, _NEG))
    return (att.reshape(B, KV, G * T, T) @ v).reshape(B, H, T, D)       # (B, H, T, D)


@plug.point("llama_block")
def llama_block(x, w: dict, n_heads: int, n_kv_heads: int, positions, base: float = 10000.0, eps: float = 1e-5):
    """One decoder block from :func:`rms_norm`, :func:`apply_rope`, :func:`gqa_attention` and
    :func:`swiglu_mlp` (each a plug point). ``w``: ``attn_norm``, ``wq``, ``wk``, ``wv``, ``wo``, ``ffn_norm``,
    ``w_gate``, ``w_up``, ``w_down`` (see :meth:`Llama.block_weights`).  x (B, T, C) -> (B, T, C)"""
    B, T, C = x.shape
    H, KV = n_heads, n_kv_heads
    D = w["wq"].shape[1] // H
    h = rms_norm(x, w["attn_norm"], eps)                                       # (B, T, C)
    q = (h @ w["wq"]).reshape(B, T, H, D).transpose(0, 2, 1, 3)                # (B, H, T, D)
    k = (h @ w["wk"]).reshape(B, T, KV, D).transpose(0, 2, 1, 3)               # (B, KV, T, D)
    v = (h @ w["wv"]).reshape(B, T, KV, D).transpose(0, 2, 1, 3)               # (B, KV, T, D)
    q, k = apply_rope(q, positions, base), apply_rope(k, positions, base)
    y = gqa_attention(q, k, v).transpose(0, 2, 1, 3).reshape(B, T, H * D)     # (B, T, H D)
    x = x + y @ w["wo"]                                                        # (B, T, C)
    return x + swiglu_mlp(rms_norm(x, w["ffn_norm"], eps), w["w_gate"], w["w_up"], w["w_down"])


BLOCK_POINTS = frozenset({"llama_block", "apply_rope", "swiglu_mlp", "gqa_attention"})


# ---------------------------------------------------------------------------
# the weights: their names, shapes and fused storage
# ---------------------------------------------------------------------------
# Each weight of a block has one name, the one :func:`llama_block` takes and :meth:`Llama.weights` gives
# (``blk.{i}.`` + name). The model stores the projections that read the same input fused, their columns
# side by side: ``wqkv = [wq | wk | wv]``, ``wgu = [w_gate | w_up]``. Stored name -> the weights it holds:
BLOCK_STORAGE = {"attn_norm": ("attn_norm",), "wqkv": ("wq", "wk", "wv"), "wo": ("wo",),
                 "ffn_norm": ("ffn_norm",), "wgu": ("w_gate", "w_up"), "wdown": ("w_down",)}
BLOCK_MATRICES = tuple(k for k in BLOCK_STORAGE if not k.endswith("norm"))   # the stored matrices
BLOCK_WEIGHTS = tuple(n for parts in BLOCK_STORAGE.values() for n in parts)  # the nine unfused names


def weight_shapes(config: LlamaConfig) -> dict:
    """The shape of every unfused weight, keyed as :meth:`Llama.weights` keys them: matrices (IN, OUT)
    for ``y = x @ W``, norms (C,), the embedding (V, C) and, untied, the head (C, V)."""
    c = config
    H, KV, D, C, F = c.n_heads, c.n_kv_heads, c.head_dim, c.dim, c.ffn_dim
    block = {"attn_norm": (C,), "wq": (C, H * D), "wk": (C, KV * D), "wv": (C, KV * D), "wo": (H * D, C),
             "ffn_norm": (C,), "w_gate": (C, F), "w_up": (C, F), "w_down": (F, C)}
    shapes = {"tok_embd": (c.vocab_size, C), "norm": (C,)}
    if not c.tie_embeddings:
        shapes["head"] = (C, c.vocab_size)
    for i in range(c.n_layers):
        shapes.update({f"blk.{i}.{n}": shape for n, shape in block.items()})
    return shapes


def fused_columns(config: LlamaConfig) -> dict:
    """Where each unfused weight lives in the stored ones: name -> (stored name, its column slice),
    e.g. ``"wv" -> ("wqkv", slice((H + KV) D, (H + 2 KV) D))``. Norms: a slice over all of (C,)."""
    shapes = weight_shapes(config.replace(n_layers=1))
    out = {}
    for stored, parts in BLOCK_STORAGE.items():
        start = 0
        for p in parts:                                              # the columns of each part, in order
            width = shapes[f"blk.0.{p}"][-1]
            out[p] = (stored, slice(start, start + width))
            start += width
    return out


# ---------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------
class KVCache:
    """Preallocated keys and values of every layer: ``k, v`` of shape (L, B, KV, S_max, D).

    ``length`` slots are filled. ``valid`` (B, S_max) marks slots holding real
    tokens (False for left padding); positions for RoPE are the running count
    of valid slots. Nothing is reallocated while generating.

    The write position is normally the Python int ``length``, so each decode
    step attends over ``length + 1`` slots: array shapes grow by one every step.
    :meth:`track_slot_on_device` keeps it in device memory instead (``slot``,
    (1,) int64): decode steps then attend over all ``S_max`` slots (the empty ones
    masked) and every shape and pointer is the same from step to step, which is
    what capturing a step as a CUDA graph needs (:class:`tinyllm.generate.CudaGraphDecoder`).

    ``int8=True`` stores keys and values as int8 codes with one float32 scale per head
    and token (symmetric, ``scale = max|k| / 127`` over the ``D`` entries of each head's
    vector; simpler than KIVI, Liu et al. 2024, which groups keys per channel): 4 times
    fewer bytes per token, plus the scales. :meth:`store` quantises on write and
    dequantises the filled slots on read."""

    def __init__(self, config: LlamaConfig, batch_size: int, max_len: int, xp=np, dtype=np.float32, *,
                 int8: bool = False):
        for name, value in (("batch_size", batch_size), ("max_len", max_len)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if max_len > config.context_length:
            raise ValueError(f"max_len={max_len} exceeds the model's context length {config.context_length}")
        shape = (config.n_layers, batch_size, config.n_kv_heads, max_len, config.head_dim)
        self.int8 = bool(int8)
        self.dtype = dtype
        self.k = xp.zeros(shape, dtype=xp.int8 if int8 else dtype)   # (L, B, KV, S_max, D)
        self.v = xp.zeros(shape, dtype=xp.int8 if int8 else dtype)   # (L, B, KV, S_max, D)
        # one scale per (layer, batch, head, token) when int8
        self.k_scale = xp.zeros(shape[:-1] + (1,), dtype=np.float32) if int8 else None  # (L, B, KV, S_max, 1)
        self.v_scale = xp.zeros(shape[:-1] + (1,), dtype=np.float32) if int8 else None
        self.valid = xp.zeros((batch_size, max_len), dtype=bool)  # (B, S_max)
        self.n_valid = xp.zeros(batch_size, dtype=np.int64)      # (B,) real tokens so far
        self.length = 0
        self.max_len = max_len
        self.has_padding = False
        self.slot = None                               # (1,) int64 on the device, see track_slot_on_device

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        n = self.k.nbytes + self.v.nbytes
        return int(n if not self.int8 else n + self.k_scale.nbytes + self.v_scale.nbytes)

    @property
    def bytes_per_token(self) -> float:
        """Bytes the cache holds per token of one sequence (all layers, keys and values, scales included)."""
        return self.nbytes / (self.batch_size * self.max_len)

    def store(self, layer: int, where, k, v, S: int):
        """Write ``k, v`` (B, KV, T, D) into slots ``where`` of ``layer``; return slots ``[0, S)`` as (B, KV, S, D) each.

        Plain caches return views; an int8 cache quantises on write and returns dequantised copies."""
        if not self.int8:
            k_all, v_all = self.k[layer], self.v[layer]                # (B, KV, S_max, D) views
            k_all[:, :, where] = k
            v_all[:, :, where] = v
            return k_all[:, :, :S], v_all[:, :, :S]
        xp = get_array_module(k)
        out = []
        for codes, scales, x in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            s = xp.abs(x).max(axis=-1, keepdims=True) / np.float32(127)  # (B, KV, T, 1)
            inv = xp.where(s > 0, np.float32(1) / xp.where(s > 0, s, np.float32(1)), np.float32(0))
            codes[layer][:, :, where] = xp.rint(x * inv).astype(xp.int8)
            scales[layer][:, :, where] = s
            out.append(codes[layer][:, :, :S].astype(self.dtype) * scales[layer][:, :, :S])   # (B, KV, S, D)
        return out[0], out[1]

    def track_slot_on_device(self) -> "KVCache":
        """From now on keep the write position in device memory (``slot``), for static-shape decoding."""
        self.slot = get_array_module(self.k).full((1,), self.length, dtype=np.int64)  # (1,)
        return self


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------
class LlamaBlock(Module):
    """Weights of one decoder block (inference only), set by :class:`Llama`: ``attn_norm`` (C,),
    ``wqkv`` (C, (H + 2 KV) D), ``wo`` (H D, C), ``ffn_norm`` (C,), ``wgu`` (C, 2F), ``wdown`` (F, C)."""


class _NoGrad(Parameter):
    """A Parameter for inference-only weights: no gradient buffer (saves 538 MB)."""

    __slots__ = ()

    def __init__(self, data):  # noqa: D401 - same meaning as Parameter
        self.data = data
        self.grad = None

    def zero_grad(self) -> None:
        pass


class Llama(Module):
    """Llama decoder for inference. ``model(ids) -> logits (B, T, V)``.

    Build it from named weights (:meth:`from_weights`; :meth:`weights` gives them back), from a GGUF
    file (:mod:`tinyllm.models.gguf_map`) or with random weights (``Llama(config, rng=...)``, tests)."""

    def __init__(self, config: LlamaConfig, rng: np.random.Generator | int | None = None, *, weights: dict | None = None):
        self.config = config
        if weights is None:
            weights = random_weights(config, rng)
        c = config
        self.tok_embd = _NoGrad(weights["tok_embd"])              # (V, C), also the head
        self.blocks = []
        for i in range(c.n_layers):
            b = LlamaBlock()
            for name in BLOCK_STORAGE:
                setattr(b, name, _NoGrad(_stored(weights, i, name)))
            self.blocks.append(b)
        self.norm = _NoGrad(weights["norm"])                       # (C,)
        # the head: tied -> E^T as a view (no copy); untied (or a quantised copy of E^T) -> its own (C, V)
        self.head = _NoGrad(weights["head"]) if "head" in weights or not c.tie_embeddings else None
        self._rope_len = 0
        self._ensure_rope(min(c.context_length, 4096))
        self.eval()

    # ---- construction -----------------------------------------------------
    @classmethod
    def from_weights(cls, config: LlamaConfig, weights: dict) -> "Llama":
        """The model with these weights: named as :meth:`weights` names them (``blk.{i}.wq``, ...; fused
        here, a copy) or already fused as the model stores them (``blk.{i}.wqkv``, ...; kept as given).
        Shapes are checked against ``config``; a missing, extra or misshapen weight raises
        :class:`~tinyllm.errors.ConfigError`."""
        if not isinstance(weights, dict):
            raise ConfigError(f"weights must be a dict of name -> array, got {type(weights).__name__}")
        shapes = weight_shapes(config)
        c = config
        stored = {"tok_embd", "norm"} | ({"head"} if "head" in weights or not c.tie_embeddings else set())
        for i in range(c.n_layers):
            for name, parts in BLOCK_STORAGE.items():                  # fused as stored, or its parts
                fused = f"blk.{i}.{name}"
                stored |= {fused} if fused in weights else {f"blk.{i}.{p}" for p in parts}
        missing, extra = sorted(stored - set(weights)), sorted(set(weights) - stored)
        if missing or extra:
            raise ConfigError(f"weights for this config (n_layers={c.n_layers}, tie_embeddings={c.tie_embeddings}) "
                              f"lack {missing[:6]} and have unexpected {extra[:6]}; Llama.weights() shows the names")
        for name, w in weights.items():
            base = name.split(".")[-1]
            want = shapes.get(name)
            if want is None and base in BLOCK_STORAGE:             # a fused matrix: its parts side by side
                parts = [shapes[name[: -len(base)] + p] for p in BLOCK_STORAGE[base]]
                want = parts[0][:-1] + (sum(p[-1] for p in parts),)
            if want is None and name == "head":                     # a tied model given its own head
                want = (c.dim, c.vocab_size)
            if tuple(w.shape) != want:
                raise ConfigError(f"weight {name!r} has shape {tuple(w.shape)}, expected {want} for this config")
        return cls(config, weights=weights)

    def _ensure_rope(self, length: int) -> None:
        if length <= self._rope_len:
            return
        xp = get_array_module(self.tok_embd.data)
        cos, sin = rope_tables(self.config.head_dim, self.config.rope_base, length)
        self.rope_cos, self.rope_sin = xp.asarray(cos), xp.asarray(sin)  # (S_max, D/2) each
        self._rope_len = length

    def to(self, device: str) -> "Llama":
        for p in self.parameters():
            p.data = p.data.to(device) if isinstance(p.data, kernels.QuantizedMatrix) else to_device(p.data, device)
        self.rope_cos = to_device(self.rope_cos, device)
        self.rope_sin = to_device(self.rope_sin, device)
        return self

    def quantize_weights(self, qtype: str = "Q4_1", *, head: str | None = "Q8_0") -> "Llama":
        """Keep the block matrices (wqkv, wo, wgu, wdown) as GGML blocks (:class:`tinyllm.kernels.QuantizedMatrix`).

        Round-to-nearest ``qtype`` (Q8_0 or Q4_1), in place. ``head`` (a type or None): also
        a quantised copy of the tied head ``E^T`` (the embedding stays float32 for the
        lookup). The forward code does not change: ``h @ W`` reaches the quantised
        matrix-vector product (the fused kernel on the GPU). Returns the model."""
        for blk in self.blocks:
            for name in BLOCK_MATRICES:
                p = getattr(blk, name)
                if not isinstance(p.data, kernels.QuantizedMatrix):
                    p.data = kernels.QuantizedMatrix.quantize(p.data, qtype)   # (IN, OUT) as blocks
        if head is not None and self.head is None:                           # tied: a quantised copy of E^T
            self.head = _NoGrad(kernels.QuantizedMatrix.quantize(self.tok_embd.data.T, head))  # (C, V) as blocks
        elif head is not None and not isinstance(self.head.data, kernels.QuantizedMatrix):
            self.head.data = kernels.QuantizedMatrix.quantize(self.head.data, head)             # untied (C, V)
        return self

    @property
    def xp(self):
        return get_array_module(self.tok_embd.data)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """A preallocated cache for ``batch_size`` sequences of up to ``max_len`` tokens."""
        self._ensure_rope(max_len)
        return KVCache(self.config, batch_size, max_len, xp=self.xp)

    # ---- hooks --------------------------------------------------------------
    _taps: dict | None = None          # {tap point: (fn, ...)} while a ``hooks`` block is open

    @contextlib.contextmanager
    def hooks(self, **taps: Callable):
        """Call ``fn(value, layer)`` at the named tap points (:data:`TAP_POINTS`) while the block runs.

        ``fn`` returns None to read the value only, or an array of the same shape
        (and array module) to replace it. Blocks nest: the outer hooks run first.
        On exit, also by an exception, the previous hooks are restored. Hooks are
        not recorded into a captured CUDA graph (:class:`tinyllm.generate.CudaGraphDecoder`)."""
        unknown = sorted(set(taps) - set(TAP_POINTS))
        if unknown:
            raise ValueError(f"unknown tap point(s) {unknown}; the tap points are {list(TAP_POINTS)}")
        for name, fn in taps.items():
            if not callable(fn):
                raise TypeError(f"the hook for {name!r} must be callable as fn(value, layer), got {type(fn).__name__}")
        before = self.__dict__.get("_taps")
        merged = dict(before or {})
        for name, fn in taps.items():
            merged[name] = merged.get(name, ()) + (fn,)
        self._taps = merged
        try:
            yield self
        finally:
            self._taps = before

    @staticmethod
    def _tap(taps: dict, name: str, layer: int, value):
        """Run the hooks of one tap point on ``value``; return the (possibly replaced) value."""
        for fn in taps.get(name, ()):
            out = fn(value, layer)
            if out is not None:
                if tuple(out.shape) != tuple(value.shape):
                    raise ValueError(f"the {name!r} hook at layer {layer} returned shape {tuple(out.shape)}; "
                                     f"it must return None or an array of shape {tuple(value.shape)}")
                value = out
        return value

    def block_weights(self, i: int) -> dict:
        """Block ``i``'s weights unfused, as :func:`llama_block` takes them: views of the fused matrices
        (writing into one writes into the model); kept-quantised matrices are dequantised copies."""
        blk = self.blocks[i]
        stored = {}
        for name in BLOCK_STORAGE:
            data = getattr(blk, name).data
            stored[name] = data.dequantize() if isinstance(data, kernels.QuantizedMatrix) else data
        return {p: stored[name] if len(BLOCK_STORAGE[name]) == 1 else stored[name][:, cols]
                for p, (name, cols) in fused_columns(self.config).items()}

    def weights(self) -> dict:
        """Every weight under its own name (the inverse of :meth:`from_weights`): ``tok_embd`` (V, C),
        ``norm`` (C,), ``head`` (C, V) if untied, and ``blk.{i}.`` + ``attn_norm, wq, wk, wv, wo, ffn_norm,
        w_gate, w_up, w_down`` (:func:`weight_shapes`). Float arrays are views of the model's storage, not
        copies: writing into one changes the model. Kept-quantised matrices come dequantised (copies), and
        a tied model's quantised copy of ``E^T`` is left out (``E`` is the head)."""
        w = {"tok_embd": self.tok_embd.data, "norm": self.norm.data}
        if not self.config.tie_embeddings:
            head = self.head.data
            w["head"] = head.dequantize() if isinstance(head, kernels.QuantizedMatrix) else head
        for i in range(self.config.n_layers):
            w.update({f"blk.{i}.{name}": a for name, a in self.block_weights(i).items()})
        return w

    def _plugged_blocks(self, x, cache, pad: bool, plugged: list):
        """Run every block through the :func:`llama_block` plug point (a plain causal pass over positions 0..T-1)."""
        if cache is not None or pad:
            raise plug.PlugError(f"plugged {', '.join(plugged)} run the plain causal forward, model(ids), without "
                                 "a KV cache or padding; generate with the cache outside plug.use(...)")
        other = sorted(set(self._taps or ()) - {"resid_pre", "resid_post"})
        if other:
            raise plug.PlugError(f"with {', '.join(plugged)} plugged, only the resid_pre and resid_post hooks can "
                                 f"run (the block is one function); got {', '.join(other)}")
        c = self.config
        positions = self.xp.arange(x.shape[1])                           # (T,)
        for li in range(c.n_layers):
            if self._taps:
                x = self._tap(self._taps, "resid_pre", li, x)
            x = llama_block(x, self.block_weights(li), c.n_heads, c.n_kv_heads, positions, c.rope_base, c.norm_eps)
            if self._taps:
                x = self._tap(self._taps, "resid_post", li, x)
        return x

    # ---- forward ------------------------------------------------------------
    def forward(self, ids, cache: KVCache | None = None, attention_mask=None, *, last_only: bool = False):
        """Logits for token ids (B, T); see :meth:`_forward`. On the CPU a decode step
        (T = 1: matrix-vector products) runs BLAS on :func:`tinyllm.threads.decode_threads` threads
        (``TINYLLM_DECODE_THREADS``, by default the cores other jobs leave free); longer inputs (prefill,
        perplexity) are matrix products and use all of BLAS's threads."""
        with limit_blas_threads(decode_threads() if self.xp is np and np.shape(ids)[-1] == 1 else 0):
            return self._forward(ids, cache, attention_mask, last_only=last_only)

    def _forward(self, ids, cache: KVCache | None = None, attention_mask=None, *, last_only: bool = False):
        """Logits for token ids (B, T).

        - ``cache=None``: a plain causal pass over the T tokens (the training-style forward).
        - with a ``cache``: the T new tokens are appended after ``cache.length``
          filled slots (prefill: T = prompt length; decode: T = 1).
        - ``attention_mask`` (B, T), 1 for real tokens and 0 for (left) padding.
        - ``last_only``: compute the head only at the last position -> (B, 1, V),
          which is all generation needs (saves T x V x C multiply-adds).
        """
        xp = self.xp
        c = self.config
        ids = xp.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(np.dtype(ids.dtype), np.integer):
            raise ValueError(f"ids must be an integer array of shape (B, T), got {getattr(ids, 'dtype', None)} {tuple(ids.shape)}")
        B, T = ids.shape
        # Whether there is padding is decided on the host: a NumPy mask is checked here, a mask
        # already on the GPU is assumed to pad (reading it back would stall the GPU every call).
        pad = attention_mask is not None and (is_gpu_array(attention_mask) or not np.all(attention_mask))
        if attention_mask is not None:
            attention_mask = xp.asarray(attention_mask).astype(bool)
            if attention_mask.shape != (B, T):
                raise ValueError(f"attention_mask must have shape {(B, T)} like ids, got {tuple(attention_mask.shape)}")
        if cache is None:
            start = 0
            valid = attention_mask                                            # (B, T) or None
            if valid is None:
                positions = xp.broadcast_to(xp.arange(T), (B, T))
            else:
                positions = xp.maximum(xp.cumsum(valid, axis=1) - 1, 0)        # (B, T), all < T
            S = T
            self._ensure_rope(T)
        else:
            if cache.batch_size != B:
                raise ValueError(f"ids have batch {B} but the cache was made for batch {cache.batch_size}")
            if cache.length + T > cache.max_len:
                raise ValueError(f"the cache holds {cache.max_len} positions; {cache.length} used + {T} new is too many")
            self._ensure_rope(cache.max_len)       # a no-op for caches from new_cache (sized there)
            if cache.slot is None:                 # write slots [length, length + T), attend over the filled ones
                start = cache.length
                where = slice(start, start + T)
                S = start + T
            else:                                  # write at the device-side slot, attend over all S_max slots
                if T != 1:
                    raise ValueError(f"a cache that tracks its slot on the device decodes one token at a time, got T={T}")
                start = where = cache.slot                                    # (1,) on the device
                S = cache.max_len
            new_valid = attention_mask if attention_mask is not None else xp.ones((B, T), dtype=bool)
            cache.valid[:, where] = new_valid
            offsets = xp.maximum(xp.cumsum(new_valid, axis=1) - 1, 0) if T > 1 else 0  # (B, T): 0 for one token
            positions = cache.n_valid[:, None] + offsets                      # (B, T)
            cache.n_valid += new_valid.sum(axis=1)
            cache.has_padding = cache.has_padding or pad
            pad = cache.has_padding
            valid = cache.valid[:, :S]                                        # (B, S)

        # mask (B, 1, T, S): causal (query slot start + t sees key slots <= it) and key validity.
        # A single new token attending over the filled slots needs none, unless there is padding
        # or the cache attends over all S_max slots (device-side slot: the empty ones are masked).
        mask = None
        if T > 1 or pad or (cache is not None and cache.slot is not None):
            causal = xp.arange(S)[None, :] <= (start + xp.arange(T))[:, None]   # (T, S)
            mask = causal[None, None] if not pad else causal[None, None] & valid[:, None, None, :]
            masked = ~mask[:, :, None] if xp is np else None           # (B, 1, 1, T, S): the slots set to _NEG

        cos = self.rope_cos[positions][:, :, None, :]                  # (B, T, 1, D/2)
        sin = self.rope_sin[positions][:, :, None, :]
        x = self.tok_embd.data[ids]                                    # (B, T, C)
        H, KV, D = c.n_heads, c.n_kv_heads, c.head_dim
        G = H // KV
        scale = 1.0 / math.sqrt(D)                                     # Python float: keeps float32
        taps, tap = self._taps, self._tap                              # taps: None unless inside ``hooks``
        active = plug.in_use()                                         # empty unless inside plug.use(...)
        plugged = BLOCK_POINTS.intersection(active)
        # On the CPU the kernels' NumPy references run without their per-call checks (the arrays
        # are float by construction; at batch-1 decode sizes a check costs as much as the
        # arithmetic). The GPU keeps the checked functions, which pick the fused kernels, and a
        # plugged rms_norm is always called.
        cpu = xp is np
        rms_norm = kernels.rms_norm_reference if cpu and "rms_norm" not in active else kernels.rms_norm
        rope = kernels.rope_reference if cpu else kernels.rope
        swiglu = kernels.swiglu_reference if cpu else kernels.swiglu
        if B > 1:   # a stack (B, T, C) @ (C, N) runs as B products that each read W: one (B T, C) product instead
            def mm(a, w):
                return (a.reshape(-1, a.shape[-1]) @ w).reshape(*a.shape[:-1], -1)  # (B, T, N)
        else:
            mm = operator.matmul
        if plugged:                                                    # every block through llama_block
            x = self._plugged_blocks(x, cache, pad, sorted(plugged))
        for li, blk in enumerate(self.blocks if not plugged else ()):
            if taps:
                x = tap(taps, "resid_pre", li, x)
            h = rms_norm(x, blk.attn_norm.data, c.norm_eps)            # (B, T, C)
            qkv = mm(h, blk.wqkv.data)                                  # (B, T, (H + 2KV) D)
            qk = rope(qkv[..., :(H + KV) * D].reshape(B, T, H + KV, D), cos, sin)  # (B, T, H+KV, D)
            q = qk[:, :, :H] * scale                                   # (B, T, H, D)
            k = qk[:, :, H:].transpose(0, 2, 1, 3)                     # (B, KV, T, D)
            v = qkv[..., (H + KV) * D:].reshape(B, T, KV, D).transpose(0, 2, 1, 3)  # (B, KV, T, D)
            if cache is not None:
                k, v = cache.store(li, where, k, v, S)                 # (B, KV, S, D)
            # queries of one group stacked: (B, KV, G*T, D); K is never repeated
            qg = q.reshape(B, T, KV, G, D).transpose(0, 2, 3, 1, 4).reshape(B, KV, G * T, D)
            att = qg @ k.swapaxes(-1, -2)                              # (B, KV, G*T, S)
            att = att.reshape(B, KV, G, T, S)
            if mask is not None and cpu:                               # in place: the scores are a new array
                np.copyto(att, _NEG, where=masked)                     # masked (B, 1, 1, T, S)
            elif mask is not None:
                att = xp.where(mask[:, :, None], att, _NEG)            # mask (B, 1, 1, T, S)
            att = kernels.softmax(att, out=att if cpu else None)       # over the S keys
            if taps:                                                   # query head h = kv * G + g
                att = tap(taps, "attn_pattern", li, att.reshape(B, H, T, S)).reshape(B, KV, G, T, S)
            y = att.reshape(B, KV, G * T, S) @ v                       # (B, KV, G*T, D)
            y = y.reshape(B, KV, G, T, D).transpose(0, 3, 1, 2, 4).reshape(B, T, H * D)  # (B, T, H D)
            if taps:
                y = tap(taps, "head_out", li, y.reshape(B, T, H, D)).reshape(B, T, H * D)
            a = mm(y, blk.wo.data)                                      # (B, T, C)
            if taps:
                a = tap(taps, "attn_out", li, a)
            x = x + a
            h = rms_norm(x, blk.ffn_norm.data, c.norm_eps)
            gu = mm(h, blk.wgu.data)                                    # (B, T, 2F)
            m = mm(swiglu(gu[..., :c.ffn_dim], gu[..., c.ffn_dim:]), blk.wdown.data)  # (B, T, C)
            if taps:
                m = tap(taps, "mlp_out", li, m)
            x = x + m
            if taps:
                x = tap(taps, "resid_post", li, x)
        if cache is not None:
            cache.length += T
            if cache.slot is not None:
                cache.slot += T                                        # on the device: part of a captured graph
        if last_only:
            x = x[:, -1:]                                              # (B, 1, C)
        x = rms_norm(x, self.norm.data, c.norm_eps)
        head = self.tok_embd.data.T if self.head is None else self.head.data  # (C, V)
        return mm(x, head)                                             # (B, T, V)


# ---------------------------------------------------------------------------
# weights: given by name or fused, random (tests); loading from files: tinyllm.models.gguf_map
# ---------------------------------------------------------------------------
def _stored(weights: dict, i: int, name: str):
    """Stored matrix ``name`` of block ``i`` from a weights dict: given fused, or fused here from its parts."""
    key = f"blk.{i}.{name}"
    if key in weights:
        return weights[key]
    parts = [weights[f"blk.{i}.{p}"] for p in BLOCK_STORAGE[name]]
    if len(parts) == 1:
        return parts[0]
    return get_array_module(parts[0]).concatenate(parts, axis=1)                         # (IN, sum of OUT)


def random_weights(config: LlamaConfig, rng=None, std: float = 0.05) -> dict:
    """Small random float32 weights in this module's layout (for tests and teaching)."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    c = config
    H, KV, D = c.n_heads, c.n_kv_heads, c.head_dim

    def n(*shape):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    w = {"tok_embd": n(c.vocab_size, c.dim), "norm": (1.0 + n(c.dim)).astype(np.float32)}
    for i in range(c.n_layers):
        w[f"blk.{i}.attn_norm"] = (1.0 + n(c.dim)).astype(np.float32)
        w[f"blk.{i}.wqkv"] = n(c.dim, (H + 2 * KV) * D)
        w[f"blk.{i}.wo"] = n(H * D, c.dim)
        w[f"blk.{i}.ffn_norm"] = (1.0 + n(c.dim)).astype(np.float32)
        w[f"blk.{i}.wgu"] = n(c.dim, 2 * c.ffn_dim)
        w[f"blk.{i}.wdown"] = n(c.ffn_dim, c.dim)
    if not c.tie_embeddings:
        w["head"] = n(c.dim, c.vocab_size)
    return w
