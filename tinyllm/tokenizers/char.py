"""Character-level tokenizer: one token per Unicode character (code point) seen in the training text.

The simplest possible tokenizer, as in Karpathy's char-rnn and nanoGPT's Shakespeare example: the
vocabulary is the sorted set of characters of a text, so ``V`` is small (about 100 for English) but
sequences are long (one token per character). A character that was not in the training text has no
id: :meth:`CharTokenizer.encode` raises a :class:`~tinyllm.errors.TokenizerError` naming it, unless
the tokenizer was built with ``unk="..."``, a placeholder character that unknown ones map to.
"""
from __future__ import annotations

import numpy as np

from tinyllm.errors import TokenizerError
from tinyllm.io.files import read_json, write_json

__all__ = ["CharTokenizer"]

_FORMAT = "tinyllm-char"


class CharTokenizer:
    """Map each character to an id: ``chars[i]`` has id ``i``.

    ``CharTokenizer.from_text(text, unk=None)`` builds the vocabulary; ``encode(str) -> list[int]``,
    ``decode(ids) -> str``, ``save(path)`` / ``CharTokenizer.load(path)``.
    """

    def __init__(self, chars, unk: str | None = None):
        chars = list(chars)
        if not chars or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise TokenizerError("chars must be a non-empty sequence of single characters")
        if len(set(chars)) != len(chars):
            raise TokenizerError("chars must not repeat a character")
        if unk is not None:
            if not isinstance(unk, str) or len(unk) != 1:
                raise TokenizerError(f"unk must be one character or None, got {unk!r}")
            if unk not in chars:
                chars.append(unk)
        self.chars = chars
        self.unk = unk
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.unk_id = self.stoi[unk] if unk is not None else None

    @classmethod
    def from_text(cls, text: str, unk: str | None = None) -> "CharTokenizer":
        """The vocabulary is the sorted set of characters in ``text`` (plus ``unk`` if given)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise TokenizerError("cannot build a vocabulary from empty text")
        return cls(sorted(set(text)), unk=unk)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def __len__(self) -> int:
        return len(self.chars)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, unk={self.unk!r})"

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            if self.unk_id is None:
                missing = sorted(set(text) - stoi.keys())
                shown = ", ".join(repr(c) for c in missing[:10])
                raise TokenizerError(
                    f"{len(missing)} character(s) not in the vocabulary: {shown}"
                    f"{' ...' if len(missing) > 10 else ''}; build the tokenizer with unk='?' to map them to one id"
                ) from None
            unk = self.unk_id
            return [stoi.get(c, unk) for c in text]

    def decode(self, ids) -> str:
        ids = np.asarray(ids).ravel()  # (N,)
        if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= len(self.chars)):
            raise TokenizerError(f"ids must be integers in [0, {len(self.chars)}), got {ids.dtype} "
                                 f"in [{ids.min()}, {ids.max()}]")
        chars = self.chars
        return "".join([chars[i] for i in ids.tolist()])

    def save(self, path) -> None:
        """Write a small JSON file, atomically (temporary file in the same folder, then ``os.replace``)."""
        write_json(path, {"format": _FORMAT, "version": 1, "chars": "".join(self.chars), "unk": self.unk})

    @classmethod
    def load(cls, path) -> "CharTokenizer":
        obj = read_tokenizer_json(path, _FORMAT)
        chars, unk = obj.get("chars"), obj.get("unk")
        if not isinstance(chars, str):
            raise TokenizerError(f"{str(path)!r}: key 'chars' must be a string, got {type(chars).__name__}")
        if unk is not None and not (isinstance(unk, str) and len(unk) == 1 and unk in chars):
            raise TokenizerError(f"{str(path)!r}: key 'unk' {unk!r} is not one of the chars"[:300])
        try:
            return cls(list(chars), unk=unk)
        except TokenizerError as err:
            raise TokenizerError(f"{str(path)!r}: {err}") from None


def read_tokenizer_json(path, fmt: str) -> dict:
    """A tokenizer file's JSON object (:func:`tinyllm.io.files.read_json`'s limits), with its format and version checked."""
    obj = read_json(path, TokenizerError)
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise TokenizerError(f"{str(path)!r}: key 'format' must be {fmt!r}, got {got!r}"[:300])
    if type(obj.get("version")) is not int or obj["version"] != 1:
        raise TokenizerError(f"{str(path)!r}: unsupported version {obj.get('version')!r} (this reader knows 1)"[:300])
    return obj
