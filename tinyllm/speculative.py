"""Speculative decoding with greedy verification (Leviathan et al., 2023; Chen et al., 2023).

A batch-1 decode step reads every weight to choose one token, so it is bound by memory
bandwidth. A *drafter* guesses the next k tokens cheaply; one forward pass of the model over
``[last token, d_1 .. d_k]`` then gives the model's own choice after each of them. The
longest prefix of the draft that matches those choices is accepted, plus the model's token
after it (a free "bonus" token), and the cache slots of the rejected drafts are forgotten
(:func:`tinyllm.generate.rewind_cache`). Every token yielded is the model's argmax given the
tokens before it, so the text is the one plain greedy decoding gives. (Bit for bit up to
float rounding: a pass over k + 1 positions sums in another order than k + 1 one-token steps,
so two logits that tie within ~1e-5 could be ranked the other way; see the tests.)

Drafters share one method, ``propose(context, k) -> list of at most k token ids``:

- :class:`PromptLookup` (Saxena, 2023, "prompt lookup decoding"): find the latest earlier
  occurrence of the context's last n tokens and propose what followed it. Free to compute;
  right when the reply copies from the prompt (editing, summarising, code).
- :class:`EarlyExitDraft`: the model's own first layers with its final norm and head
  (the weights are shared, not copied), as in self-speculative decoding (Zhang et al., 2023).

A verification pass is not free: on a CPU, NumPy's matrix product of a few rows against a
weight matrix costs about twice a matrix-vector product (measured in
``benchmarks/speculative.py``), so drafts that are rejected make decoding slower.
:func:`speculative_generate` therefore stops drafting for a while (doubling back-off) when
the drafts keep failing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinyllm.backend import to_numpy
from tinyllm.generate import (_as_prompts, check_continued_cache, decode_step, grow_cache, prefill_prompts,
                              rewind_cache)
from tinyllm.nn.functional import softmax
from tinyllm.threads import decode_threads, limit_blas_threads

__all__ = ["EarlyExitDraft", "PromptLookup", "SpecStats", "speculative_generate"]


class PromptLookup:
    """Draft by copying: the tokens that followed the latest earlier match of the last n tokens.

    Tries ``n = max_ngram`` down to ``min_ngram``; the first n with a match wins."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 2):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, context, k: int) -> list[int]:
        ctx = np.asarray(context, dtype=np.int64)                              # (T,)
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if len(ctx) <= n:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(ctx[:-1], n)   # (T-n, n): each has a successor
            hits = np.flatnonzero((windows == ctx[-n:]).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + n                                      # the latest match
                return ctx[start:start + k].tolist()
        return []


class EarlyExitDraft:
    """Draft with the model's first ``n_layers`` blocks, its final norm and its head (shared weights).

    Keeps its own KV cache; each call first re-reads the part of ``context`` that its cache
    does not hold (usually one token). Drafting stops early at a token whose probability
    under the draft is below ``min_confidence``."""

    def __init__(self, model, n_layers: int, *, min_confidence: float = 0.0):
        from tinyllm.models.llama import BLOCK_STORAGE, Llama

        if not 1 <= n_layers <= model.config.n_layers:
            raise ValueError(f"n_layers must be in [1, {model.config.n_layers}], got {n_layers}")
        weights = {"tok_embd": model.tok_embd.data, "norm": model.norm.data}
        for i, blk in enumerate(model.blocks[:n_layers]):                      # the stored arrays, shared
            weights.update({f"blk.{i}.{name}": getattr(blk, name).data for name in BLOCK_STORAGE})
        if model.head is not None:
            weights["head"] = model.head.data
        self.model = Llama(model.config.replace(n_layers=n_layers), weights=weights)
        self.min_confidence = min_confidence
        self.ids: list[int] = []          # the tokens in self.cache
        self.cache = None

    def propose(self, context, k: int) -> list[int]:
        ctx = [int(t) for t in context]
        if k <= 0:
            return []
        same = np.asarray(self.ids[:len(ctx)]) == np.asarray(ctx[:len(self.ids)])
        n = int(same.argmin()) if not same.all() else len(same)               # tokens still right in the cache
        n = min(n, len(ctx) - 1)                                               # read at least one token
        needed = len(ctx) + k
        if self.cache is None:
            self.cache = self.model.new_cache(1, min(self.model.config.context_length, max(2 * needed, 256)))
        elif needed > self.cache.max_len:
            self.cache = grow_cache(self.model, self.cache, min(self.model.config.context_length, 2 * needed))
        rewind_cache(self.cache, n)
        self.ids = ctx
        logits = self.model.forward(np.asarray([ctx[n:]]), cache=self.cache, last_only=True)[0, -1]   # (V,)
        out: list[int] = []
        for j in range(k):
            z = to_numpy(logits).astype(np.float64)
            t = int(z.argmax())
            if self.min_confidence > 0 and softmax(z)[t] < self.min_confidence:
                break
            out.append(t)
            if j + 1 < k:
                logits = self.model.forward(np.asarray([[t]]), cache=self.cache, last_only=True)[0, -1]
                self.ids.append(t)
        return out


@dataclass
class SpecStats:
    """Counts of one speculative run: verification passes, drafted and accepted tokens, plain steps."""

    verify_passes: int = 0
    drafted: int = 0
    accepted: int = 0
    plain_steps: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else float("nan")


def speculative_generate(model, prompt_ids, max_new_tokens: int, drafter, *, k: int = 8, stop_ids=(),
                         stats: SpecStats | None = None, min_gain: float = 2.0, max_backoff: int = 32, cache=None):
    """Yield the greedy continuation of ``prompt_ids`` (batch 1), drafting with ``drafter``.

    The same tokens as ``stream_generate(model, prompt_ids, max_new_tokens, stop_ids=stop_ids)``
    (greedy). Each round drafts up to ``k`` tokens and verifies them in one pass. When the
    accepted tokens per pass (a running average) drop below ``min_gain``, drafting pauses
    for 1, 2, 4 ... ``max_backoff`` plain steps. (The default 2 is the break-even measured on
    a 2-core CPU, where a pass over 2 to 9 tokens costs about 2.2-2.9 one-token steps.)
    ``stats`` (optional) is filled in.

    ``cache`` (optional): a batch-1 KV cache that already holds the first ``cache.length``
    tokens of ``prompt_ids``, as in :func:`~tinyllm.generate.stream_generate` (a chat's
    conversation so far): only the rest is prefilled. It needs room for
    ``len(prompt_ids) + max_new_tokens - 1`` positions. When the stream ends it holds the
    prompt and the yielded tokens it was fed (and possibly accepted drafts after a stop
    token: rewind it to the conversation's length, :func:`~tinyllm.generate.rewind_cache`)."""
    prompt = _as_prompts(prompt_ids)
    if len(prompt) != 1:
        raise ValueError("speculative_generate takes one prompt")
    if max_new_tokens < 0 or k < 1:
        raise ValueError(f"need max_new_tokens >= 0 and k >= 1, got {max_new_tokens} and {k}")
    if max_new_tokens == 0:
        return
    prompt = prompt[0]
    if cache is not None:
        check_continued_cache(cache, len(prompt), max_new_tokens)
    stats = stats if stats is not None else SpecStats()
    stop = {int(s) for s in stop_ids}
    # the verify pass writes at most up to slot len(prompt) + max_new_tokens - 1 (see the draft limit below)
    logits, cache = prefill_prompts(model, [prompt], max_new_tokens, cache=cache)   # (1, V)
    context = list(prompt)
    pending = [int(to_numpy(logits[0]).argmax())]       # chosen, not yet yielded; the last one not yet fed
    produced = 0
    gain, pause, backoff = 2.0 * min_gain, 0, 1            # running accepted-per-pass, plain steps left, next pause
    while True:
        for t in pending:
            if t in stop:
                return
            yield t
            produced += 1
            context.append(t)
            if produced == max_new_tokens:
                return
        room = max_new_tokens - produced - 1               # drafts beyond this could never be yielded
        draft = drafter.propose(context, min(k, room)) if pause == 0 and room > 0 else []
        pause = max(pause - 1, 0)
        fed = cache.length
        ids = np.asarray([[context[-1], *draft]], dtype=np.int64)                  # (1, 1 + d)
        if draft:
            with limit_blas_threads(decode_threads()):
                out = model.forward(ids, cache=cache)[0]                           # (1 + d, V)
            choice = to_numpy(out).argmax(axis=-1)                               # (1 + d,) model's tokens
            m = 0
            while m < len(draft) and draft[m] == int(choice[m]):
                m += 1
            rewind_cache(cache, fed + 1 + m)               # keep the last token and the accepted drafts
            pending = [*draft[:m], int(choice[m])]
            stats.verify_passes += 1
            stats.drafted += len(draft)
            stats.accepted += m
            gain = 0.7 * gain + 0.3 * m
            if gain < min_gain:
                pause, backoff = backoff, min(2 * backoff, max_backoff)
                gain = min_gain + 0.5                      # after the pause, one failed probe pauses again
            elif m == len(draft):
                backoff = 1
        else:
            out = decode_step(model, cache, [context[-1]])                          # (1, V) a plain step
            pending = [int(to_numpy(out[0]).argmax())]
            stats.plain_steps += 1
