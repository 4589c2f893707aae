"""Chat with a model: the conversation, its KV cache, and the text streamed as it is chosen.

- :class:`ChatSession` keeps the messages and a KV cache across turns, so each turn reads only
  the new tokens; it decodes with :func:`tinyllm.generate.stream_generate` (sampling or greedy)
  or, greedy only, with :func:`tinyllm.speculative.speculative_generate`.
- :class:`TextStreamer` turns token ids into printable text pieces.
- :func:`end_of_turn_ids` finds the tokens that end a reply (``<|im_end|>``, ``<|endoftext|>``).

The ``tinyllm chat`` and ``tinyllm generate`` commands are in :mod:`tinyllm.chat_cli`.
Imports point downward: models <- generation (``tinyllm.generate``, ``tinyllm.speculative``)
<- this module <- the command line.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from tinyllm.errors import TinyLLMError
from tinyllm.generate import grow_cache, rewind_cache, stream_generate
from tinyllm.speculative import speculative_generate
from tinyllm.tokenizers.chat import apply_chat_template

__all__ = ["ChatSession", "ContextFullError", "TextStreamer", "TurnStats", "end_of_turn_ids", "special_token_id"]


class TextStreamer:
    """Turn a stream of token ids into printable text pieces.

    A byte-level BPE token can hold part of a UTF-8 character; the decoded text
    is held back until it no longer ends in an incomplete character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[self.emitted:], len(text)
        return piece

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        piece, self.emitted = text[self.emitted:], len(text)
        return piece


class ContextFullError(TinyLLMError, ValueError):
    """The conversation no longer fits in the model's context window."""


@dataclass
class TurnStats:
    """What one chat turn cost: the tokens actually read and the times (perf_counter seconds)."""

    prefill_tokens: int   # tokens prefilled this turn: the template's tokens and the message, not the history
    ttft_s: float         # time to first token: the prefill and the first token's choice
    new_tokens: int       # tokens of the reply (the stop token excluded)
    decode_s: float       # from the first token to the end of the reply


class ChatSession:
    """Multi-turn chat that keeps its KV cache: each turn reads only the new tokens.

        chat = ChatSession(model, tokenizer, system="You are a helpful assistant.")
        reply = chat.send("What is the capital of France?")
        reply = chat.send("And of Italy?")        # the first exchange is in context
        chat.reset()                              # forget the conversation (the system message stays)

    ``ids`` is the conversation as the model read it: the rendered chat template with the
    replies as the tokens the model chose (re-encoding a reply's text can give other ids).
    The cache holds a prefix of ``ids``; a turn renders the template, takes the text added
    since the last reply (``<|im_end|>``, the user message, the assistant header), and
    prefills just those tokens plus the one reply token not fed yet. The logits are those
    of a fresh pass over ``ids`` (up to float rounding). The cache starts at ``cache_size`` positions and doubles
    when a turn needs more, up to the model's context length; a reply is cut short where
    the context ends, and a message that does not fit raises :class:`ContextFullError`
    (call :meth:`reset`).

    ``on_text`` (optional) receives each piece of the reply as it is generated. The
    end-of-turn token (``<|im_end|>``) stops a reply. An exception raised during a reply
    (Ctrl-C's ``KeyboardInterrupt``, or one from ``on_text``) ends that reply: the part
    already generated is kept as the assistant's message, the cache stays consistent and the
    exception propagates. ``last_turn`` holds the :class:`TurnStats` of the latest turn.

    ``drafter`` (optional, greedy only): decode each reply with speculative decoding
    (:func:`tinyllm.speculative.speculative_generate`, up to ``draft_k`` drafted tokens a pass),
    e.g. ``drafter=PromptLookup()``: the same reply as without it, faster when the reply
    copies from the conversation. It needs ``temperature=0`` and ``repetition_penalty=1``."""

    def __init__(self, model, tokenizer, system: str | None = None, *, max_new_tokens: int = 128,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 repetition_penalty: float = 1.0, seed: int | None = None, stop_ids=None, cache_size: int = 512,
                 drafter=None, draft_k: int = 16):
        if drafter is not None and (temperature != 0 or repetition_penalty != 1.0):
            raise ValueError(f"speculative decoding (drafter=...) verifies drafts greedily: it needs temperature=0 "
                             f"and repetition_penalty=1, got {temperature} and {repetition_penalty}; "
                             f"or pass drafter=None")
        if drafter is not None and (isinstance(draft_k, bool) or not isinstance(draft_k, int) or draft_k < 1):
            raise ValueError(f"draft_k must be an int >= 1, got {draft_k!r}")
        self.model, self.tokenizer = model, tokenizer
        self.drafter, self.draft_k = drafter, draft_k
        self.system = system
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
        self.max_new_tokens = max_new_tokens
        self.cache_size = cache_size
        self.rng = np.random.default_rng(seed)
        self.stop_ids = end_of_turn_ids(tokenizer) if stop_ids is None else [int(i) for i in stop_ids]
        self.cache = None
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (a system message given at construction stays) and empty the cache."""
        self.messages: list[dict] = [] if self.system is None else [{"role": "system", "content": self.system}]
        self.ids: list[int] = []          # the conversation's tokens, in the cache or about to be
        self._text = ""                   # the text ``ids`` stand for
        if self.cache is not None:
            rewind_cache(self.cache, 0)   # keep the memory for the next conversation
        self.last_turn: TurnStats | None = None
        self.last_num_tokens = 0

    def prompt_ids(self) -> list[int]:
        """The conversation so far, rendered and encoded afresh (with the assistant header)."""
        return self.tokenizer.encode(apply_chat_template(self.messages, add_generation_prompt=True), allowed_special="all")

    def _room(self, needed: int) -> None:
        """Make the cache hold ``needed`` positions: allocate it, or double it (up to the context length)."""
        if self.cache is None:
            self.cache = self.model.new_cache(1, min(self.model.config.context_length, max(needed, self.cache_size)))
        elif needed > self.cache.max_len:
            size = min(self.model.config.context_length, max(needed, 2 * self.cache.max_len))
            self.cache = grow_cache(self.model, self.cache, size)

    def send(self, text: str, on_text=None) -> str:
        """Add the user message ``text``, generate the reply (streamed to ``on_text``) and return it."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        messages = self.messages + [{"role": "user", "content": text}]
        full = apply_chat_template(messages, add_generation_prompt=True)
        if not full.startswith(self._text):                 # not with ChatML; if ever, read it all again (below)
            self.ids, self._text = [], ""
        new_ids = self.tokenizer.encode(full[len(self._text):], allowed_special="all")
        context = self.model.config.context_length
        prompt = self.ids + [int(t) for t in new_ids]
        max_new = min(self.max_new_tokens, context - len(prompt) + 1)   # the last reply token is never fed
        if max_new < 1:
            raise ContextFullError(f"the conversation ({len(self.ids)} tokens) and this message "
                                   f"({len(new_ids)} tokens) "
                                   f"do not fit in the model's context of {context} tokens; start a new conversation "
                                   f"(ChatSession.reset(), /reset in the chat)")
        self._room(len(prompt) + max_new - 1)
        if self.cache.length > len(self.ids):             # only after the re-read above
            rewind_cache(self.cache, 0)
        prefill_tokens = len(prompt) - self.cache.length
        self.messages, self.ids, self._text = messages, prompt, full
        streamer = TextStreamer(self.tokenizer)
        seed = int(self.rng.integers(2**31))
        if self.drafter is not None:
            stream = speculative_generate(self.model, prompt, max_new, self.drafter, k=self.draft_k,
                                          stop_ids=self.stop_ids, cache=self.cache)
        else:
            stream = stream_generate(self.model, prompt, max_new, stop_ids=self.stop_ids, seed=seed,
                                     cache=self.cache, **self.sampling)
        start = time.perf_counter()
        first = None
        try:
            for tid in stream:
                if first is None:
                    first = time.perf_counter()
                piece = streamer.push(tid)
                if piece and on_text:
                    on_text(piece)
        finally:                       # also on Ctrl-C: keep what was said, leave the cache consistent
            stream.close()
            end = time.perf_counter()
            reply = self.tokenizer.decode(streamer.ids)
            self.ids = self.ids + streamer.ids
            self._text += reply
            self.messages = self.messages + [{"role": "assistant", "content": reply}]
            rewind_cache(self.cache, min(self.cache.length, len(self.ids)))   # repairs a pass cut half way
            self.last_num_tokens = len(streamer.ids)
            self.last_turn = TurnStats(prefill_tokens, (first or end) - start, len(streamer.ids),
                                       end - (first or end))
        tail = streamer.flush()
        if tail and on_text:
            on_text(tail)
        return reply


def special_token_id(tokenizer, text: str) -> int | None:
    """The id of the special token ``text`` (e.g. ``"<|im_end|>"``), or None if the tokenizer has none."""
    try:
        ids = tokenizer.encode(text, allowed_special="all")
    except Exception:  # noqa: BLE001 - a tokenizer without that special token
        return None
    return int(ids[0]) if len(ids) == 1 else None


def end_of_turn_ids(tokenizer) -> list[int]:
    """The ids that end a reply: ``<|im_end|>`` (ChatML's end of turn) and ``<|endoftext|>``, those the tokenizer has."""
    return [i for i in (special_token_id(tokenizer, "<|im_end|>"), special_token_id(tokenizer, "<|endoftext|>"))
            if i is not None]
