"""Calibration data and activation recording for post-training quantisation.

GPTQ, AWQ and SmoothQuant look at the inputs each weight sees on a few hundred
sequences. This module provides those sequences and the recording:

- :func:`text_calibration`: random windows of a text (here the pydoc documentation);
- :func:`self_generated_calibration`: text sampled from the model itself, which needs
  no data set and follows the model's own distribution (Liu et al. 2023, "LLM-QAT", sec. 2.1:
  a random first token, then sampling);
- :func:`chat_calibration`: SmolLM2's own replies to a fixed list of diverse instructions
  (stories, explanations, letters, dialogue, recipes, code, ...), rendered through its chat
  template: natural text of many kinds, still without a data set;
- :func:`mixed_calibration`: rows of several sets;
- :func:`record_inputs`: one forward pass with an :class:`~tinyllm.compress.patch.InputRecorder`
  in place of each weight;
- :func:`run_block`: one block of a :class:`~tinyllm.models.llama.Llama` on a given
  residual stream, so that sequential methods can calibrate block ``i`` on the output of
  the already-quantised blocks ``0..i-1`` without re-running them.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tinyllm.compress.patch import InputRecorder, linear_weights, replace_weights, restore_weights
from tinyllm.errors import QuantizationError


def text_calibration(encode, text: str, n: int, length: int = 128, *, seed: int = 0) -> np.ndarray:
    """``n`` windows of ``length`` tokens from random places of ``text``: ``(n, length)`` int64."""
    if n <= 0 or length <= 0:
        raise QuantizationError(f"n and length must be positive, got n={n}, length={length}")
    chars = 30 * length                                                     # enough characters for `length` tokens
    if len(text) < chars + 1:
        raise QuantizationError(f"the text has {len(text)} characters; {chars + 1} are needed for windows of {length} tokens")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(text) - chars, n)
    rows = [list(encode(text[s:s + chars]))[:length] for s in starts]
    if any(len(r) < length for r in rows):
        raise QuantizationError("a window of the text encodes to fewer tokens than `length`")
    return np.array(rows, dtype=np.int64)


def self_generated_calibration(model: Any, n: int, length: int = 128, *, seed: int = 0, temperature: float = 1.0,
                               top_k: int | None = 50, vocab_limit: int | None = None) -> np.ndarray:
    """``n`` sequences of ``length`` tokens sampled from ``model`` itself, each from a random first token: ``(n, length)``.

    ``vocab_limit`` restricts the first tokens to ids below it (ordinary tokens, no special ones).
    """
    from tinyllm.generate import generate_batch

    if n <= 0 or length < 2:
        raise QuantizationError(f"n must be positive and length at least 2, got n={n}, length={length}")
    rng = np.random.default_rng(seed)
    hi = vocab_limit or model.config.vocab_size
    first = rng.integers(17, hi, n)                                         # skip SmolLM2's special tokens (ids < 17)
    new = generate_batch(model, [[int(t)] for t in first], max_new_tokens=length - 1, temperature=temperature,
                         top_k=top_k, seed=seed)
    if any(len(r) < length - 1 for r in new):
        raise RuntimeError("generation stopped early")                     # generate_batch has no stop ids here
    return np.array([[int(f)] + r for f, r in zip(first, new)], dtype=np.int64)


CHAT_INSTRUCTIONS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how rainbows form, for a curious ten-year-old.",
    "Write a letter to a friend describing your trip to the mountains.",
    "Write a dialogue between a shopkeeper and a customer who lost her umbrella.",
    "Give me a recipe for a simple vegetable soup, with steps.",
    "Write a Python function that checks whether a word is a palindrome, and explain it.",
    "Describe the causes of the French Revolution in a few paragraphs.",
    "Write a poem about autumn leaves.",
    "What are some tips for sleeping better?",
    "Write a news report about a town festival that was interrupted by a storm.",
    "Explain what photosynthesis is and why it matters.",
    "Tell me a fairy tale about a fox and a clever crow.",
    "Write an email to your manager asking for a day off next week.",
    "Summarise the plot of a detective novel you invent.",
    "How do I change a flat tyre on a bicycle?",
    "Write a diary entry of a child on the first day at a new school.",
)
"""Instructions for :func:`chat_calibration`: many kinds of text, none of them the evaluation texts."""


def chat_calibration(model: Any, tokenizer: Any, n: int, length: int = 128, *, seed: int = 0,
                     temperature: float = 0.8, top_k: int | None = 50,
                     instructions: Sequence[str] = CHAT_INSTRUCTIONS) -> np.ndarray:
    """``n`` replies of ``length`` tokens that ``model`` writes to ``instructions``: ``(n, length)`` int64.

    Row ``i`` answers ``instructions[i % len(instructions)]``, asked through the chat template
    (:func:`tinyllm.tokenizers.chat.apply_chat_template`); the row holds the reply's tokens only.
    Generation does not stop at the end of the turn, so every row has ``length`` tokens.
    Unlike :func:`self_generated_calibration` (random first tokens), the text is the kinds
    of prose, dialogue and code the instructions ask for.
    """
    from tinyllm.generate import generate_batch
    from tinyllm.tokenizers.chat import apply_chat_template

    if n <= 0 or length <= 0:
        raise QuantizationError(f"n and length must be positive, got n={n}, length={length}")
    if isinstance(instructions, str) or not instructions or not all(isinstance(s, str) and s for s in instructions):
        raise QuantizationError("instructions must be a non-empty sequence of non-empty strings")
    prompts = [tokenizer.encode(apply_chat_template([{"role": "user", "content": instructions[i % len(instructions)]}],
                                                    add_generation_prompt=True), allowed_special="all")
               for i in range(n)]
    new = generate_batch(model, prompts, max_new_tokens=length, temperature=temperature, top_k=top_k, seed=seed)
    if any(len(r) < length for r in new):
        raise RuntimeError("generation stopped early")                     # generate_batch has no stop ids here
    return np.array([r[:length] for r in new], dtype=np.int64)


def mixed_calibration(*sets: np.ndarray, n: int | None = None, seed: int = 0) -> np.ndarray:
    """Rows of several ``(n_i, length)`` calibration sets, shuffled; ``n`` rows in all (default: all of them)."""
    if not sets or len({s.shape[1] for s in sets}) != 1:
        raise QuantizationError("give at least one set, all with the same sequence length")
    rows = np.concatenate(sets, axis=0)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(rows))[: n or len(rows)]
    return rows[idx]


def record_inputs(model: Any, calib: np.ndarray, targets: Sequence[tuple[Any, str]] | None = None, *,
                  batch: int = 8, keep_inputs: bool = False) -> list[InputRecorder]:
    """Run ``model`` on the calibration rows ``(N, T)`` with a recorder on each target weight; returns the recorders."""
    targets = linear_weights(model) if targets is None else list(targets)
    recs = replace_weights(targets, lambda w: InputRecorder(w, keep_inputs=keep_inputs))
    try:
        for i in range(0, len(calib), batch):
            model(calib[i:i + batch], last_only=True)
        return [getattr(b, k).data for b, k in targets]
    finally:
        restore_weights(targets, recs)


def run_block(model: Any, index: int, x: Any, *, batch: int = 8) -> None:
    """Run block ``index`` of ``model`` on the residual stream ``x`` ``(N, T, C)`` (outputs discarded).

    Used with recorders in the block's weights. The model's own forward does the work:
    it is called with the block list cut to this one block and an "embedding" whose rows
    are the ``N*T`` residual vectors, looked up by ids ``0..N*T-1``. Everything is
    restored afterwards, also on error.
    """
    N, T, C = x.shape
    blocks, embd = model.blocks, model.tok_embd.data
    model.blocks = [blocks[index]]
    try:
        for i in range(0, N, batch):
            part = x[i:i + batch]                                           # (b, T, C)
            model.tok_embd.data = part.reshape(-1, C)                       # (b*T, C)
            model(np.arange(part.shape[0] * T).reshape(part.shape[0], T), last_only=True)
    finally:
        model.blocks, model.tok_embd.data = blocks, embd


def block_output(model: Any, index: int, x: Any, *, batch: int = 8) -> Any:
    """The residual stream after block ``index`` given the one before it: ``(N, T, C)`` float32.

    ``x + attention @ W_o + mlp @ W_down``, with the inputs of ``W_o`` and ``W_down``
    recorded during :func:`run_block` (so whatever the block holds, quantised or not, is used).
    """
    blk = model.blocks[index]
    targets = [(blk, "wo"), (blk, "wdown")]
    recs = replace_weights(targets, lambda w: InputRecorder(w, keep_inputs=True))
    try:
        run_block(model, index, x, batch=batch)
        ro, rd = [getattr(blk, k).data for k in ("wo", "wdown")]
    finally:
        restore_weights(targets, recs)
    y = x.reshape(-1, x.shape[-1]) + ro.stacked() @ blk.wo.data + rd.stacked() @ blk.wdown.data
    return y.reshape(x.shape).astype(np.float32)
