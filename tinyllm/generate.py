"""Turning next-token logits into text: sampling and the generation loop.

``sample_next`` is the single place where a distribution over the vocabulary
becomes a token id. Order of operations (as in HF ``transformers``):
repetition penalty -> temperature -> top-k -> top-p -> sample.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from tinyllm import plug
from tinyllm.backend import get_array_module, is_gpu_array, to_numpy
from tinyllm.nn import functional as F


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits of each row, set the rest to -inf.  (B, V) -> (B, V)"""
    if k is None or k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[:, -k][:, None]  # (B, 1)
    return np.where(logits < kth, -np.inf, logits)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filter (Holtzman et al., 2020): keep the smallest set of tokens whose
    probability mass reaches ``p``. The token that crosses the threshold is kept.  (B, V) -> (B, V)"""
    if p is None or p >= 1.0:
        return logits
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    order = np.argsort(-logits, axis=-1, kind="stable")                # (B, V) best first
    sorted_logits = np.take_along_axis(logits, order, axis=-1)
    probs = F.softmax(sorted_logits)
    mass_before = np.cumsum(probs, axis=-1) - probs                      # mass of strictly better tokens
    drop_sorted = mass_before >= p                                       # keeps the crossing token
    drop = np.empty_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, -np.inf, logits)


def apply_repetition_penalty(logits: np.ndarray, previous: list[list[int]] | np.ndarray, penalty: float) -> np.ndarray:
    """CTRL's penalty (Keskar et al., 2019): divide positive logits of seen tokens by
    ``penalty``, multiply negative ones by it.  (B, V) -> (B, V)"""
    if penalty == 1.0:
        return logits
    if penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
    logits = logits.copy()
    for b, seen in enumerate(previous):
        ids = np.unique(np.asarray(seen, dtype=np.int64))
        if ids.size:
            v = logits[b, ids]
            logits[b, ids] = np.where(v > 0, v / penalty, v * penalty)
    return logits


@plug.point("sample_next")
def sample_next(logits: Any, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                repetition_penalty: float = 1.0, previous=None, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Choose the next token of each row of ``logits`` (B, V); returns (B,) int64 on the host.

    ``temperature=0`` means greedy (argmax). Sampling uses ``rng``, so a seed
    makes it reproducible: one draw ``u = rng.random((B, 1))`` per call, and each row takes
    the first token whose cumulative probability exceeds its ``u`` (inverse-CDF sampling).
    A plug point: every loop below (:func:`generate`, :func:`stream_generate`,
    :func:`generate_batch`, :class:`ChatSession`) chooses its tokens through it.
    """
    z = to_numpy(logits).astype(np.float64)                             # (B, V)
    if z.ndim != 2:
        raise ValueError(f"logits must have shape (B, V), got {z.shape}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if previous is not None:
        z = apply_repetition_penalty(z, previous, repetition_penalty)
    if temperature == 0:
        return z.argmax(axis=-1)
    z = top_p_filter(top_k_filter(z / temperature, top_k), top_p)
    probs = F.softmax(z)                                               # (B, V)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    u = rng.random((z.shape[0], 1))                                     # inverse-CDF sampling, one draw a row
    return np.minimum((np.cumsum(probs, axis=-1) < u).sum(axis=-1), z.shape[-1] - 1)


@plug.point("generate")
def generate(model, idx: Any, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, block_size: int | None = None):
    """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T) using ``model(idx) -> logits (B, T, V)``.

    The plain loop without a KV cache: each step re-reads the whole (cropped)
    context. Returns (B, T + max_new_tokens) on the same device as ``idx``.
    """
    xp = get_array_module(idx)
    rng = np.random.default_rng(seed)
    for _ in range(max_new_tokens):
        context = idx if block_size is None else idx[:, -block_size:]
        logits = model(context)[:, -1, :]                               # (B, V)
        nxt = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, rng=rng)
        idx = xp.concatenate([idx, xp.asarray(nxt, dtype=idx.dtype)[:, None]], axis=1)
    return idx


# ---------------------------------------------------------------------------
# Generation with a KV cache: prefill, then one decode step per token
# ---------------------------------------------------------------------------
def _as_prompts(prompts) -> list[list[int]]:
    if isinstance(prompts, np.ndarray) and prompts.ndim == 1 or (
            isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], (int, np.integer))):
        prompts = [prompts]
    out = [[int(t) for t in p] for p in prompts]
    if not out or any(len(p) == 0 for p in out):
        raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
    return out


def left_pad(prompts: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists to one length: ids (B, T) int64 and attention_mask (B, T) bool.

    Left padding puts every prompt's last token in the same column, so all rows
    decode into the same cache slot at each step."""
    prompts = _as_prompts(prompts)
    T = max(len(p) for p in prompts)
    ids = np.full((len(prompts), T), pad_id, dtype=np.int64)          # (B, T)
    mask = np.zeros((len(prompts), T), dtype=bool)                     # (B, T)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):] = p
        mask[b, T - len(p):] = True
    return ids, mask


def prefill(model, ids, attention_mask=None, max_len: int | None = None, *, max_new_tokens: int = 0):
    """Phase 1: run the whole prompt (B, T) through the model in one pass, filling a new cache.

    Returns ``(logits (B, V) of the last position, cache)``. The cache is
    preallocated for ``max_len`` (default: T + max_new_tokens) positions."""
    ids = np.asarray(ids) if not hasattr(ids, "__cuda_array_interface__") else ids
    B, T = ids.shape
    cache = model.new_cache(B, max_len or T + max_new_tokens)
    logits = model.forward(ids, cache=cache, attention_mask=attention_mask, last_only=True)  # (B, 1, V)
    return logits[:, -1], cache


def rewind_cache(cache, length: int):
    """Forget every slot from ``length`` on: the cache then holds its first ``length`` positions.

    Used to drop rejected draft tokens (speculative decoding) and to repair a cache after a
    forward pass was interrupted (Ctrl-C) half way. Keys and values past ``length`` stay in
    memory but are never attended to again: the next pass writes over them. The positions of
    the kept tokens are recounted from ``valid``, so left padding survives. Returns the cache."""
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or not 0 <= length <= cache.max_len:
        raise ValueError(f"length must be an int in [0, {cache.max_len}], got {length!r}")
    length = int(length)
    cache.valid[:, length:] = False
    cache.n_valid[...] = cache.valid[:, :length].sum(axis=1)             # (B,)
    cache.length = length
    if cache.slot is not None:
        cache.slot[...] = length
    return cache


def grow_cache(model, cache, max_len: int):
    """A cache for ``max_len`` positions holding the same filled slots as ``cache`` (a copy;
    ``cache`` itself is left as it was). ``max_len`` may not exceed the model's context length."""
    if max_len < cache.length:
        raise ValueError(f"max_len={max_len} is smaller than the {cache.length} positions already in the cache")
    new = model.new_cache(cache.batch_size, max_len)
    n = cache.length
    new.k[:, :, :, :n] = cache.k[:, :, :, :n]                          # (L, B, KV, n, D)
    new.v[:, :, :, :n] = cache.v[:, :, :, :n]
    new.valid[:, :n] = cache.valid[:, :n]                              # (B, n)
    new.n_valid[...] = cache.n_valid
    new.length, new.has_padding = n, cache.has_padding
    return new


def decode_step(model, cache, next_ids):
    """Phase 2: feed one new token per row (B,) and get the next logits (B, V)."""
    xp = model.xp
    ids = xp.asarray(next_ids).reshape(-1, 1)                          # (B, 1)
    return model.forward(ids, cache=cache, last_only=True)[:, -1]      # (B, V)


class CudaGraphDecoder:
    """Decode steps replayed as one CUDA graph: ``decoder.step(ids)`` == ``decode_step(model, cache, ids)``.

    GPU (CuPy) only. A decode step of SmolLM2 launches hundreds of small kernels; at
    batch 1 the GPU finishes each one sooner than Python launches the next, so the
    step costs launch overhead, not arithmetic. A CUDA graph (CUDA C++ Programming
    Guide, "CUDA Graphs") records the launches of one step once; each later step is
    a single ``graph.launch()``. A replay repeats the recorded launches exactly, so
    everything a step touches must keep its shape and address:

    - the input tokens go into a static buffer ``ids`` (B, 1), the logits come out of
      a static buffer (``step`` returns a copy);
    - the cache keeps its write position on the device
      (:meth:`~tinyllm.models.llama.KVCache.track_slot_on_device`): each step attends
      over all ``max_len`` slots, the empty ones masked, and advances the slot itself;
    - temporaries come from a private memory pool kept with the graph, so nothing
      else is given their memory between replays;
    - no operation in the step reads GPU memory from the host (``Llama._forward``
      decides padding on the host and sizes RoPE tables when the cache is made).

    The first step runs normally (it compiles the kernels and fills the pool), the
    second is captured and launched, later ones only launch. Do not move the model
    or use the cache elsewhere while a decoder holds it.

        logits, cache = prefill(model, ids, max_new_tokens=n)
        decoder = CudaGraphDecoder(model, cache)
        logits = decoder.step(next_ids)          # (B,) token ids -> (B, V) logits
    """

    @staticmethod
    def check(model, cache=None) -> None:
        """TypeError unless the model (and the cache) live on the GPU."""
        if model.xp is np or (cache is not None and not is_gpu_array(cache.k)):
            raise TypeError("CudaGraphDecoder needs a model and a KV cache on the GPU (CuPy arrays); "
                            "on NumPy there are no kernel launches to save: use decode_step")

    def __init__(self, model, cache):
        self.check(model, cache)
        import cupy  # noqa: PLC0415 - GPU only, never imported on the CPU path

        self._cp = cupy
        self.model, self.cache = model, cache
        cache.track_slot_on_device()
        self.ids = cupy.zeros((cache.batch_size, 1), dtype=np.int64)   # (B, 1) static input
        self.logits = None                                               # (B, V) static output
        self.graph = None
        self.steps = 0
        self.pool = cupy.cuda.MemoryPool()                               # the graph's temporaries
        self.stream = cupy.cuda.Stream(non_blocking=True)                # capture needs a non-default stream

    def _forward(self):
        return self.model.forward(self.ids, cache=self.cache, last_only=True)[:, -1]   # (B, V)

    def _capture(self):
        length = self.cache.length
        self.stream.begin_capture()
        try:
            logits = self._forward()                 # recorded, not run
        except BaseException:
            try:
                self.stream.end_capture()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            raise
        graph = self.stream.end_capture()
        self.cache.length = length                   # the Python bookkeeping ran, the step did not
        return graph, logits

    def step(self, next_ids):
        """Feed one token per row (B,) and get the next logits (B, V) (a copy, safe to keep)."""
        cp, cache = self._cp, self.cache
        if cache.length + 1 > cache.max_len:
            raise ValueError(f"the cache holds {cache.max_len} positions and all are used")
        caller = cp.cuda.get_current_stream()
        self.stream.wait_event(caller.record())     # whatever the caller queued comes first
        with self.stream:
            self.ids[...] = cp.asarray(next_ids, dtype=np.int64).reshape(self.ids.shape)
            with cp.cuda.using_allocator(self.pool.malloc):
                if self.steps == 0:
                    self.logits = self._forward()                         # warm-up, runs normally
                else:
                    if self.graph is None:
                        self.graph, self.logits = self._capture()
                    self.graph.launch(self.stream)
                    cache.length += 1
            out = self.logits.copy()                                      # (B, V), from the default pool
        caller.wait_event(self.stream.record())     # the caller's next work sees the result
        self.steps += 1
        return out


def check_continued_cache(cache, n_prompt: int, max_new_tokens: int) -> None:
    """A batch-1 ``cache`` that a prompt of ``n_prompt`` tokens continues (its first ``cache.length`` are already
    read) must leave at least one token to read and hold every position the generation writes."""
    if cache.batch_size != 1 or not 0 <= cache.length < n_prompt:
        raise ValueError(f"cache must be a batch-1 cache holding fewer than the {n_prompt} prompt tokens "
                         f"(at least one new token to read); it has batch {cache.batch_size} and "
                         f"{cache.length} tokens")
    if n_prompt + max_new_tokens - 1 > cache.max_len:
        raise ValueError(f"the cache holds {cache.max_len} positions; {n_prompt} prompt + {max_new_tokens} new "
                         f"tokens need {n_prompt + max_new_tokens - 1}: make room with grow_cache")


def prefill_prompts(model, prompts: list[list[int]], max_new_tokens: int, *, cache=None, pad_id: int = 0):
    """Phase 1 of every generation loop: read the prompts, return ``(logits (B, V), cache)``.

    Without ``cache``: prompts of different lengths are left padded (:func:`left_pad`) and
    prefilled into a new cache with room for ``max_new_tokens`` more. With a batch-1
    ``cache`` holding the first ``cache.length`` tokens of the one prompt (a chat so far,
    checked by :func:`check_continued_cache`), only the rest is read, into that cache."""
    if cache is None:
        ids, mask = left_pad(prompts, pad_id)                                # (B, T) each
        return prefill(model, ids, None if mask.all() else mask, max_new_tokens=max_new_tokens)
    new = np.asarray([prompts[0][cache.length:]], dtype=np.int64)            # (1, T_new)
    return model.forward(new, cache=cache, last_only=True)[:, -1], cache    # (1, V)


STOPPED = -1  # what :func:`generation_steps` yields for a row that has met a stop token


def generation_steps(model, prompts, max_new_tokens: int = 64, *, temperature: float = 0.0, top_k: int | None = None,
                     top_p: float | None = None, repetition_penalty: float = 1.0, stop_ids=(),
                     seed: int | None = None, pad_id: int = 0, cache=None, cuda_graph: bool = False):
    """The generation loop: prefill the prompts, then yield the (B,) token ids chosen at each step.

    Every decoder of this module is a thin wrapper around it (:func:`stream_generate` is
    batch 1, :func:`generate_batch` collects the rows, :class:`~tinyllm.chat.ChatSession`
    streams through :func:`stream_generate`). One step: choose a token per row
    (:func:`sample_next`, with a repetition penalty over the row's prompt and tokens so far),
    yield them, and, when the next step is asked for, feed them all in one
    :func:`decode_step` (B, 1).

    Stop handling is per row: a row whose token is in ``stop_ids`` is done; from then on it
    holds ``STOPPED`` (-1) in what is yielded (its stop token included) and decodes
    ``pad_id`` (its logits are ignored). The loop ends without yielding when every row is
    done, or after ``max_new_tokens`` steps. Tokens are fed only when needed, so the last
    step's tokens are never fed: a generator closed early (``close()``, an exception in
    the consumer) leaves the cache holding exactly the tokens the model has read.

    ``cache`` (batch 1 only): continue a cache that holds the first ``cache.length`` tokens
    of the prompt (:func:`prefill_prompts`); it needs room for
    ``len(prompt) + max_new_tokens - 1`` positions (:func:`grow_cache`). ``cuda_graph=True``
    (GPU only) replays the decode step as a CUDA graph (:class:`CudaGraphDecoder`) in a cache
    of its own."""
    prompts = _as_prompts(prompts)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if cuda_graph:
        CudaGraphDecoder.check(model)
    if cache is not None:
        if cuda_graph:
            raise ValueError("cuda_graph=True makes its own cache; it cannot continue a given one")
        if len(prompts) != 1:
            raise ValueError(f"a given cache continues one prompt, got {len(prompts)}")
        check_continued_cache(cache, len(prompts[0]), max_new_tokens)
    stop = np.asarray(sorted({int(s) for s in stop_ids}), dtype=np.int64)   # (n_stop,)
    rng = np.random.default_rng(seed)
    if max_new_tokens == 0:
        return
    logits, cache = prefill_prompts(model, prompts, max_new_tokens, cache=cache, pad_id=pad_id)
    step = CudaGraphDecoder(model, cache).step if cuda_graph else functools.partial(decode_step, model, cache)
    seen = [list(p) for p in prompts]                                        # for the repetition penalty
    done = np.zeros(len(prompts), dtype=bool)                                # (B,)
    for i in range(max_new_tokens):
        nxt = np.asarray(sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                     repetition_penalty=repetition_penalty, previous=seen, rng=rng),
                         dtype=np.int64)                                     # (B,)
        done |= np.isin(nxt, stop)
        if done.all():
            return
        for b in np.flatnonzero(~done):
            seen[b].append(int(nxt[b]))
        yield np.where(done, STOPPED, nxt)                                   # (B,)
        if i + 1 == max_new_tokens:
            return
        logits = step(np.where(done, pad_id, nxt))                           # (B, V)


def stream_generate(model, prompt_ids, max_new_tokens: int = 64, *, temperature: float = 0.0, top_k: int | None = None,
                    top_p: float | None = None, repetition_penalty: float = 1.0, stop_ids=(), seed: int | None = None,
                    cuda_graph: bool = False, cache=None):
    """Yield new token ids one at a time (batch 1), as soon as each is chosen: :func:`generation_steps` for one prompt.

    A stop token ends the stream (and is not yielded). ``temperature=0`` is greedy.
    ``cuda_graph=True`` (GPU only) replays the decode step as a CUDA graph (:class:`CudaGraphDecoder`).

    ``cache`` (optional): a batch-1 KV cache that already holds the first ``cache.length``
    tokens of ``prompt_ids`` (a conversation so far). Only the rest is prefilled, and the
    cache keeps every token fed to the model: when the stream ends it holds the prompt and
    the yielded tokens, except the last one yielded if the stream ended at
    ``max_new_tokens``. It needs room for ``len(prompt_ids) + max_new_tokens - 1``
    positions (:func:`grow_cache`). Without it, each call makes its own cache."""
    if len(_as_prompts(prompt_ids)) != 1:
        raise ValueError("stream_generate takes one prompt; use generate_batch for several")
    for ids in generation_steps(model, prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                repetition_penalty=repetition_penalty, stop_ids=stop_ids, seed=seed,
                                cuda_graph=cuda_graph, cache=cache):
        yield int(ids[0])


def generate_batch(model, prompts, max_new_tokens: int = 64, *, temperature: float = 0.0, top_k: int | None = None,
                   top_p: float | None = None, repetition_penalty: float = 1.0, stop_ids=(), seed: int | None = None,
                   pad_id: int = 0) -> list[list[int]]:
    """Generate for several prompts of different lengths at once (left padding + mask): :func:`generation_steps`,
    collected.

    Returns the new tokens of each prompt, cut before its first stop token. Rows
    that have stopped keep decoding a pad token (their output is ignored) until
    all rows have stopped or ``max_new_tokens`` is reached."""
    prompts = _as_prompts(prompts)
    out: list[list[int]] = [[] for _ in prompts]
    for ids in generation_steps(model, prompts, max(max_new_tokens, 0), temperature=temperature, top_k=top_k,
                                top_p=top_p, repetition_penalty=repetition_penalty, stop_ids=stop_ids, seed=seed,
                                pad_id=pad_id):
        for b in np.flatnonzero(ids != STOPPED):
            out[b].append(int(ids[b]))
    return out
