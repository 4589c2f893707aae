"""Where each weight of a Llama lives in a GGUF file and in a transformers state dict: one table.

Every block has nine weights and the model three more (one only when the head is untied). Each
row of :data:`BLOCK_TENSORS` / :data:`GLOBAL_TENSORS` names one weight four ways:

- ``model``: its name in :meth:`Llama.weights` (what :func:`tinyllm.models.llama.llama_block` takes);
- ``gguf``: the tensor in a llama.cpp GGUF file;
- ``hf``: the key in a HF ``transformers`` ``LlamaForCausalLM`` state dict;
- ``rotary``: for W_q and W_k, the config field that counts their heads, because llama.cpp's
  converter permutes the rows of each head (:func:`permute_qk`); None for the others;
- ``transposed``: the files store a linear layer (OUT, IN), the model ``y = x @ W`` reads (IN, OUT).

Loading a GGUF file (float32 or kept quantised), converting a state dict and exporting go
through this table. The model module knows none of these names: this module imports it.

Why W_q and W_k are permuted: llama.cpp stores the adjacent-pair rotary layout, our model rotates
halves (see :mod:`tinyllm.models.llama`); reading the rows as stored gives a model that runs without
error and writes wrong text.
"""
from __future__ import annotations

import contextvars
import inspect
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from tinyllm import kernels
from tinyllm.errors import ConfigError, GGUFError
from tinyllm.models.llama import BLOCK_STORAGE, Llama, LlamaConfig, weight_shapes


@dataclass(frozen=True)
class TensorName:
    """One weight under its three names (``{i}``: the block's index) and how the files store it."""

    model: str
    gguf: str
    hf: str
    rotary: str | None = None       # "n_heads" / "n_kv_heads": llama.cpp permuted the rows of each head
    transposed: bool = True         # stored (OUT, IN) in the files, (IN, OUT) in the model


BLOCK_TENSORS = (
    TensorName("blk.{i}.attn_norm", "blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight",
               transposed=False),
    TensorName("blk.{i}.wq", "blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight", "n_heads"),
    TensorName("blk.{i}.wk", "blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight", "n_kv_heads"),
    TensorName("blk.{i}.wv", "blk.{i}.attn_v.weight", "model.layers.{i}.self_attn.v_proj.weight"),
    TensorName("blk.{i}.wo", "blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    TensorName("blk.{i}.ffn_norm", "blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight",
               transposed=False),
    TensorName("blk.{i}.w_gate", "blk.{i}.ffn_gate.weight", "model.layers.{i}.mlp.gate_proj.weight"),
    TensorName("blk.{i}.w_up", "blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.up_proj.weight"),
    TensorName("blk.{i}.w_down", "blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight"),
)
GLOBAL_TENSORS = (
    TensorName("tok_embd", "token_embd.weight", "model.embed_tokens.weight", transposed=False),   # (V, C) everywhere
    TensorName("norm", "output_norm.weight", "model.norm.weight", transposed=False),
    TensorName("head", "output.weight", "lm_head.weight"),                                       # untied models only
)
_BLOCK = {t.model.removeprefix("blk.{i}."): t for t in BLOCK_TENSORS}   # unfused block name -> row


def tensor_names(config: LlamaConfig) -> list[TensorName]:
    """The table's rows for every weight of a model with this config, ``{i}`` filled in."""
    rows = [t for t in GLOBAL_TENSORS if t.model != "head" or not config.tie_embeddings]
    for i in range(config.n_layers):
        rows += [TensorName(t.model.format(i=i), t.gguf.format(i=i), t.hf.format(i=i), t.rotary, t.transposed)
                 for t in BLOCK_TENSORS]
    return rows


# ---------------------------------------------------------------------------
# llama.cpp's q/k row permutation, and its inverse
# ---------------------------------------------------------------------------
def unpermute_qk(w, n_heads: int, out=None):
    """Undo llama.cpp's row permutation of W_q / W_k: (OUT, IN) GGUF rows -> HF rows.

    The converter wrote HF row ``(h, j, i)`` (head h, half j, index i) to row ``(h, i, j)``;
    reshaping to (heads, D/2, 2, IN) and swapping the middle axes brings it back. Rows may be
    floats or the bytes of GGML blocks. ``out``: a C-contiguous (OUT, IN) array written in place
    (one strided copy) and returned."""
    rows, cols = w.shape
    d = rows // n_heads
    hf = w.reshape(n_heads, d // 2, 2, cols).swapaxes(1, 2)                   # (heads, 2, D/2, IN)
    if out is None:
        return hf.reshape(rows, cols)
    out.reshape(n_heads, 2, d // 2, cols)[...] = hf
    return out


def permute_qk(w, n_heads: int):
    """The inverse of :func:`unpermute_qk` (what llama.cpp's converter does): HF rows -> GGUF rows."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.reshape(n_heads, 2, d // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def from_model(row: TensorName, w, config: LlamaConfig, *, gguf: bool):
    """The model's layout -> a file's: matrices transposed to (OUT, IN), and for GGUF (``gguf=True``) q/k rows
    permuted; transformers keeps them in the model's order. (The GGUF loaders below do the inverse while they
    assemble the fused matrices.)"""
    w = w.T if row.transposed else w
    return permute_qk(w, getattr(config, row.rotary)) if gguf and row.rotary else w


# ---------------------------------------------------------------------------
# conversion and export (all weights by name, one array each)
# ---------------------------------------------------------------------------
def weights_from_hf(config: LlamaConfig, state_dict: dict) -> dict:
    """A transformers ``LlamaForCausalLM`` state dict (NumPy arrays or tensors) -> :meth:`Llama.weights`'s
    dict, for :meth:`Llama.from_weights`. A missing key raises :class:`~tinyllm.errors.ConfigError`."""
    out = {}
    for row in tensor_names(config):
        if row.hf not in state_dict:
            raise ConfigError(f"the state dict has no {row.hf!r}; it is not a Llama with this config")
        w = state_dict[row.hf]
        w = np.asarray(w.detach().cpu().numpy() if hasattr(w, "detach") else w, dtype=np.float32)
        out[row.model] = np.ascontiguousarray(w.T if row.transposed else w)          # same q/k row order
    return out


def hf_state_dict(config: LlamaConfig, weights: dict) -> dict:
    """:meth:`Llama.weights` -> transformers' state dict keys and layout (NumPy arrays)."""
    return {row.hf: np.ascontiguousarray(from_model(row, weights[row.model], config, gguf=False))
            for row in tensor_names(config)}


def gguf_tensors(config: LlamaConfig, weights: dict) -> dict:
    """:meth:`Llama.weights` -> the tensors a GGUF file holds (llama.cpp's names, (OUT, IN), q/k permuted)."""
    return {row.gguf: np.ascontiguousarray(from_model(row, weights[row.model], config, gguf=True))
            for row in tensor_names(config)}


# ---------------------------------------------------------------------------
# loading a GGUF file into the model's fused storage
# ---------------------------------------------------------------------------
def config_from_gguf_metadata(metadata: dict) -> LlamaConfig:
    """Read the hyper-parameters from GGUF metadata (``llama.block_count``, ...)."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise GGUFError(f"general.architecture is {arch!r}; this model class reads 'llama' files")

    def get(key, default=None):
        full = f"{arch}.{key}"
        if full in metadata:
            return metadata[full]
        if default is None:
            raise GGUFError(f"GGUF metadata key {full!r} is missing")
        return default

    n_heads = int(get("attention.head_count"))
    dim = int(get("embedding_length"))
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = int(get("vocab_size", len(tokens) if tokens is not None else None))
    return LlamaConfig(
        vocab_size=vocab,
        dim=dim,
        n_layers=int(get("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(get("attention.head_count_kv", n_heads)),
        head_dim=int(get("attention.key_length", get("rope.dimension_count", dim // n_heads))),
        ffn_dim=int(get("feed_forward_length")),
        rope_base=float(get("rope.freq_base", 10000.0)),
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        context_length=int(get("context_length", 2048)),
        tie_embeddings=True,
    )


def transpose_contiguous(w, tile: int = 128):
    """``w.T`` as a C-contiguous array, copied in tiles of ``tile`` rows (cache friendly).

    GGUF and PyTorch store a linear layer as (OUT, IN). A batch-1 decode step
    is a vector-matrix product; with OpenBLAS, ``x @ W`` streams an (IN, OUT)
    C-contiguous matrix about twice as fast as the transposed view of an
    (OUT, IN) one, so we pay for one transposed copy at load time."""
    out = np.empty((w.shape[1], w.shape[0]), dtype=w.dtype)           # (IN, OUT)
    for i in range(0, w.shape[0], tile):
        out[:, i:i + tile] = w[i:i + tile].T
    return out


def _check(name, a, shape):
    if tuple(a.shape) != tuple(shape):
        raise GGUFError(f"tensor {name!r} has shape {tuple(a.shape)}, expected {tuple(shape)} for this config")
    return a


def weights_from_gguf(config: LlamaConfig, get_tensor: Callable[[str], np.ndarray], *, threads: int = 2) -> dict:
    """GGUF tensors (``get_tensor(name)`` -> float32 (OUT, IN)) -> the model's fused weights, for ``Llama(config,
    weights=...)``.

    Each stored matrix (``wqkv``, ``wgu``, ...: :data:`~tinyllm.models.llama.BLOCK_STORAGE`) is assembled
    part by part in one preallocated (OUT, IN) buffer, the rows of each part found through the table (q and
    k un-permuted on the way), then transposed once into a C-contiguous (IN, OUT) matrix
    (:func:`transpose_contiguous`). The tied embedding is kept as a C-contiguous (C, V) matrix, the
    layout the head reads; ``tok_embd`` is its (V, C) transposed view (the lookup gathers a few
    columns). Tensors are dequantised on ``threads`` threads (NumPy releases the GIL in its loops);
    a ``get_tensor`` that takes ``out=`` dequantises straight into the buffer.
    """
    c = config
    shapes = weight_shapes(c.replace(n_layers=1))
    try:
        takes_out = "out" in inspect.signature(get_tensor).parameters
    except (TypeError, ValueError):
        takes_out = False

    def into(name, dst):
        """Dequantise tensor ``name`` straight into the preallocated rows ``dst`` (OUT, IN)."""
        if takes_out and dst.flags.c_contiguous:
            try:
                get_tensor(name, out=dst)
                return
            except (TypeError, ValueError):
                pass  # a shape mismatch: fall through to the checked path
        dst[...] = _check(name, get_tensor(name), dst.shape)

    def stored(i, name):
        """Stored matrix ``name`` of block ``i``: its parts' file rows stacked (OUT, IN), then transposed."""
        parts = BLOCK_STORAGE[name]
        n_in, outs = shapes[f"blk.0.{parts[0]}"][0], [shapes[f"blk.0.{p}"][1] for p in parts]
        rows = [_BLOCK[p] for p in parts]
        if len(rows) == 1 and not rows[0].rotary:                                     # nothing to assemble
            gguf = rows[0].gguf.format(i=i)
            return transpose_contiguous(_check(gguf, get_tensor(gguf), (outs[0], n_in)))
        buf = np.empty((sum(outs), n_in), dtype=np.float32)                           # (OUT, IN)
        start = 0
        for row, n_out in zip(rows, outs):
            gguf, dst = row.gguf.format(i=i), buf[start:start + n_out]
            if row.rotary:
                unpermute_qk(_check(gguf, get_tensor(gguf), dst.shape), getattr(c, row.rotary), out=dst)
            else:
                into(gguf, dst)
            start += n_out
        return transpose_contiguous(buf)                                               # (IN, OUT)

    def block(i):
        out = {}
        for name in BLOCK_STORAGE:
            if name.endswith("norm"):
                gguf = _BLOCK[name].gguf.format(i=i)
                out[f"blk.{i}.{name}"] = np.asarray(get_tensor(gguf), dtype=np.float32).reshape(c.dim)
            else:
                out[f"blk.{i}.{name}"] = stored(i, name)
        return out

    def globals_():
        embd, norm = (next(t for t in GLOBAL_TENSORS if t.model == m).gguf for m in ("tok_embd", "norm"))
        e = _check(embd, get_tensor(embd), (c.vocab_size, c.dim))
        out = {"tok_embd": e if not c.tie_embeddings else transpose_contiguous(e).T,   # (V, C) view of (C, V)
               "norm": np.asarray(get_tensor(norm), dtype=np.float32).reshape(c.dim)}
        if not c.tie_embeddings:
            head = next(t for t in GLOBAL_TENSORS if t.model == "head").gguf
            out["head"] = transpose_contiguous(_check(head, get_tensor(head), (c.vocab_size, c.dim)))  # (C, V)
        return out

    jobs = [globals_] + [lambda i=i: block(i) for i in range(c.n_layers)]
    weights: dict[str, Any] = {}
    if threads > 1:
        # each job runs in a copy of the caller's context, so that plug.use(...) (a ContextVar) reaches the workers
        contexts = [contextvars.copy_context() for _ in jobs]
        with ThreadPoolExecutor(threads) as pool:
            for part in pool.map(lambda cj: cj[0].run(cj[1]), zip(contexts, jobs)):
                weights.update(part)
    else:
        for f in jobs:
            weights.update(f())
    for k, v in weights.items():
        if v.dtype != np.float32:
            weights[k] = v.astype(np.float32)
    return weights


def quantized_weights_from_gguf(config: LlamaConfig, reader) -> dict:
    """Like :func:`weights_from_gguf`, but the block matrices keep the file's GGML blocks.

    ``reader`` is a :class:`tinyllm.io.gguf.GGUFReader`. A tensor stored (OUT, IN) is
    ``IN/32`` blocks per row, and its rows are what :class:`tinyllm.kernels.QuantizedMatrix`
    holds, so a fused matrix is its parts' rows stacked: ``[q; k; v]`` (q and k rows
    un-permuted: :func:`unpermute_qk` works on rows of bytes as on rows of floats) and
    ``[gate; up]``. The tied head gets the embedding's own blocks; the embedding is
    dequantised to float32 for the lookup; the norms are float32 in the file.
    """
    c = config
    shapes = weight_shapes(c.replace(n_layers=1))

    def blocks(name, shape):
        info = reader.tensors.get(name)
        if info is None:
            raise GGUFError(f"tensor {name!r} is missing from the file")
        if tuple(info.shape) != tuple(shape):
            raise GGUFError(f"tensor {name!r} has shape {tuple(info.shape)}, expected {tuple(shape)} for this config")
        qtype = info.ggml_type
        if qtype not in kernels.QUANT_TYPES:
            raise GGUFError(f"tensor {name!r} is {qtype.name}; kept-quantised weights must be one of "
                            f"{', '.join(t.name for t in kernels.QUANT_TYPES)} (load it dequantised with llama_from_gguf instead)")
        return np.asarray(reader.raw(name)).reshape(shape[0], -1), qtype          # (OUT, IN/32 * bytes)

    weights: dict[str, Any] = {}
    for i in range(c.n_layers):
        for name, parts in BLOCK_STORAGE.items():
            rows = [_BLOCK[p] for p in parts]
            if name.endswith("norm"):
                gguf = rows[0].gguf.format(i=i)
                weights[f"blk.{i}.{name}"] = np.asarray(reader.dequantize(gguf), dtype=np.float32).reshape(c.dim)
                continue
            stacked = []
            for p, row in zip(parts, rows):
                b, t = blocks(row.gguf.format(i=i), shapes[f"blk.0.{p}"][::-1])
                stacked.append((unpermute_qk(b, getattr(c, row.rotary)) if row.rotary else b, t))
            types = {t for _, t in stacked}
            if len(types) != 1:
                raise GGUFError(f"tensors fused into one matrix must share a type, got {sorted(types)}")
            data = np.concatenate([b for b, _ in stacked], axis=0) if len(stacked) > 1 else np.copy(stacked[0][0])
            weights[f"blk.{i}.{name}"] = kernels.QuantizedMatrix(data, types.pop())    # (IN, OUT) as blocks
    embd, norm = (next(t for t in GLOBAL_TENSORS if t.model == m).gguf for m in ("tok_embd", "norm"))
    weights["tok_embd"] = reader.dequantize(embd)                                       # (V, C) float32
    weights["norm"] = np.asarray(reader.dequantize(norm), dtype=np.float32).reshape(c.dim)
    if c.tie_embeddings and reader.tensors[embd].ggml_type in kernels.QUANT_TYPES:
        e, te = blocks(embd, (c.vocab_size, c.dim))
        weights["head"] = kernels.QuantizedMatrix(np.copy(e), te)                       # (C, V)
    return weights


def llama_from_gguf(metadata: dict, get_tensor: Callable[[str], np.ndarray], *, threads: int = 2) -> Llama:
    """The model from GGUF metadata and ``get_tensor(name) -> float32 (rows, cols)`` (NumPy order)."""
    config = config_from_gguf_metadata(metadata)
    return Llama(config, weights=weights_from_gguf(config, get_tensor, threads=threads))


def quantized_llama_from_gguf(reader) -> Llama:
    """The model from a GGUF reader, keeping the file's Q8_0 / Q4_1 blocks (:func:`quantized_weights_from_gguf`)."""
    config = config_from_gguf_metadata(reader.metadata)
    return Llama(config, weights=quantized_weights_from_gguf(config, reader))
