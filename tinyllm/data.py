"""Training text, offline: the default corpus, any text file, a train/validation split and random batches.

The default corpus is the English reference documentation that every CPython installation ships for
``help()``: ``pydoc_data.topics.topics``, a dict of 79 topics (about 465 KB of text). Nothing is
downloaded. The exact text depends on the Python version (it is that version's documentation), but
for one version :func:`load_corpus` always returns the same string, because the cleaning is fixed:

1. topics in sorted key order (``dict`` order is an implementation detail of the generated module),
2. line endings ``\\r\\n``/``\\r`` become ``\\n``, tabs are expanded to 8 columns,
3. trailing whitespace is removed from every line,
4. runs of three or more newlines become one blank line (``\\n\\n``),
5. each topic is stripped, and topics are joined by one blank line; the text ends with one ``\\n``.

Indentation at the start of lines is kept: the code examples in the documentation need it.

Language models learn from a long stream of token ids. :func:`get_batch` cuts ``B`` random windows of
``T + 1`` ids out of that stream; the inputs are the first ``T`` ids of each window and the targets
the last ``T`` (each target is the next token after its input position).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from tinyllm.backend import get_array_module
from tinyllm.errors import TinyLLMError

__all__ = ["CorpusError", "load_corpus", "clean_text", "pydoc_corpus", "train_val_split", "get_batch"]


class CorpusError(TinyLLMError, ValueError):
    """A text file cannot be used as a corpus (empty, or not UTF-8)."""


_BLANK_RUNS = re.compile(r"\n{3,}")
_TRAILING = re.compile(r"[ \t\f\v]+$", re.MULTILINE)


def clean_text(text: str) -> str:
    """Normalise whitespace as described in the module docstring (steps 2-4) and strip the ends."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(8)
    text = _TRAILING.sub("", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


def pydoc_corpus() -> str:
    """The cleaned ``pydoc_data.topics`` text (see the module docstring)."""
    from pydoc_data.topics import topics

    parts = [clean_text(topics[key]) for key in sorted(topics)]
    return "\n\n".join(p for p in parts if p) + "\n"


def load_corpus(source: str | os.PathLike = "pydoc") -> str:
    """Return training text.

    ``source="pydoc"`` (the default) gives the cleaned standard-library documentation; anything else is
    a path to a UTF-8 text file, returned as it is (only ``\\r\\n`` line endings become ``\\n``).

    Raises ``FileNotFoundError`` for a missing file, ``IsADirectoryError`` for a directory and
    :class:`CorpusError` (a ``ValueError``) for an empty file or one that is not valid UTF-8, naming
    the file and, for bad UTF-8, the byte offset.
    """
    if isinstance(source, str) and source == "pydoc":
        return pydoc_corpus()
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be 'pydoc' or a path to a text file, got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"corpus file {str(path)!r} does not exist (use source='pydoc' for the built-in corpus)")
    if path.is_dir():
        raise IsADirectoryError(f"corpus source {str(path)!r} is a directory, not a text file")
    raw = path.read_bytes()
    if not raw:
        raise CorpusError(f"corpus file {str(path)!r} is empty")
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is not text
    except UnicodeDecodeError as err:
        raise CorpusError(
            f"corpus file {str(path)!r} is not UTF-8 text: invalid byte 0x{raw[err.start]:02x} at offset {err.start} "
            f"({err.reason}); re-save it as UTF-8"
        ) from None
    text = text.replace("\r\n", "\n")
    if not text.strip():
        raise CorpusError(f"corpus file {str(path)!r} holds only whitespace")
    return text


def train_val_split(data, val_fraction: float = 0.1):
    """Split a string, list or 1-D array into ``(train, val)``: the first ``1 - val_fraction`` and the rest.

    The split is contiguous, not shuffled: neighbouring text is correlated, so a random split would
    leak validation text into training.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")
    if getattr(data, "ndim", 1) != 1:
        raise ValueError(f"data must be 1-D (N,), got shape {tuple(data.shape)}")
    n = len(data)
    n_val = int(round(n * val_fraction))
    if n_val < 1 or n_val >= n:
        raise ValueError(f"data of length {n} is too short to split with val_fraction={val_fraction}")
    cut = n - n_val
    return data[:cut], data[cut:]


def get_batch(tokens, context_length: int, batch_size: int, rng: np.random.Generator):
    """Sample ``batch_size`` random windows from ``tokens`` (N,).

    Returns ``x`` (B, T) and ``y`` (B, T) with ``y[b, t] == x[b, t + 1]`` inside a window: ``y`` is
    ``x`` shifted one position left, i.e. the next-token targets. One vectorised gather, no loop.
    ``tokens`` may be a NumPy or CuPy integer array; the batch lives on the same device. The start
    offsets are drawn from ``rng`` (a ``numpy.random.Generator``), so a seed fixes the batch.
    """
    xp = get_array_module(tokens)
    if not hasattr(tokens, "ndim") or tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D integer array (N,), got {type(tokens).__name__} "
                         f"with shape {getattr(tokens, 'shape', None)}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"tokens must have an integer dtype, got {tokens.dtype}")
    for name, value in (("context_length", context_length), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    n = tokens.shape[0]
    if n < context_length + 1:
        raise ValueError(f"tokens has {n} ids but context_length={context_length} needs at least {context_length + 1}")
    starts = rng.integers(0, n - context_length, size=batch_size)  # (B,)
    idx = xp.asarray(starts)[:, None] + xp.arange(context_length)[None, :]  # (B, T)
    x = tokens[idx]  # (B, T)
    y = tokens[idx + 1]  # (B, T)
    return x, y
