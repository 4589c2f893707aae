"""Byte-level byte-pair encoding (BPE), written from scratch.

BPE (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units") starts from
a vocabulary of single symbols and repeatedly adds the most frequent adjacent pair as a new symbol.
GPT-2 (Radford et al. 2019, section 2.2) runs it on *bytes*: the 256 byte values are the starting
vocabulary, so every string has an encoding and there is no unknown token. Three details follow GPT-2:

* **Pre-tokenization.** A regex first cuts text into pieces (words with their leading space, number
  runs, punctuation runs, whitespace runs) and merges never cross a piece boundary, so ``" dog."``
  can never become a token. The pattern is configurable: ``"gpt2"`` is GPT-2's, and ``"smollm"``
  first isolates every digit (``\\p{N}``) and then applies GPT-2's, as SmolLM2's tokenizer does.
  A list of patterns is applied in sequence: each splits the pieces of the one before, keeping both
  the matches and the text between them.
* **Encoding** applies the learned merges to each piece, always the lowest-rank (earliest learned)
  pair present next, until no learned pair is left. Pieces repeat a lot, so results are cached.
* **Printable spelling.** For display and files, each byte is written as one printable character
  (GPT-2's ``bytes_to_unicode``: printable Latin-1 bytes stand for themselves, the other 68 are
  shifted to U+0100 and up, so the space byte is ``Ġ`` and newline is ``Ċ``).

Special tokens (``<|endoftext|>``) are cut out of the text before pre-tokenization and map to their
own ids; ``allowed_special`` says which ones are recognised.

Training keeps, instead of recounting every pair for every merge, a table ``pair -> count`` and an
index ``pair -> words that contain it`` over the *distinct* pre-tokenized words (each with its
count). A merge only rewrites the words in the index entry of the merged pair and adjusts the counts
of the pairs those words lose and gain; a heap with lazy deletion finds the next most frequent pair.
"""
from __future__ import annotations

import heapq
import itertools
from collections import Counter, defaultdict
from pathlib import Path

import regex

from tinyllm import plug
from tinyllm.errors import TokenizerError
from tinyllm.io.files import write_json
from tinyllm.tokenizers.char import read_tokenizer_json

__all__ = ["BPETokenizer", "GPT2_PATTERN", "PRE_TOKENIZERS", "bpe_merge", "bytes_to_unicode", "pre_tokenize"]

# GPT-2's pre-tokenizer regex (also HF tokenizers' ByteLevel pre-tokenizer): contractions, optional
# space + letters, optional space + numbers, optional space + other symbols, whitespace not followed
# by a non-space (so the last space of a run goes with the next word), any remaining whitespace.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

PRE_TOKENIZERS = {
    "gpt2": (GPT2_PATTERN,),
    # SmolLM2's tokenizer.json: Digits(individual_digits=True), then ByteLevel(use_regex=True).
    "smollm": (r"\p{N}", GPT2_PATTERN),
}

_FORMAT = "tinyllm-bpe"
_INFO_TYPES = {"bos_token_id": int, "eos_token_id": int, "unk_token_id": int, "pad_token_id": int,
               "add_bos_token": bool, "chat_template": str}
_CACHE_LIMIT = 200_000


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable spelling of bytes: byte value -> one character.

    The 188 printable bytes ``!``..``~``, ``¡``..``¬``, ``®``..``ÿ`` stand for themselves; the other 68
    (control characters, space, ...) map in order to U+0100, U+0101, ...
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    spelling = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in spelling:
            spelling[b] = chr(256 + shift)
            shift += 1
    return dict(sorted(spelling.items()))


_SPELL = bytes_to_unicode()
_UNSPELL = {ord(c): b for b, c in _SPELL.items()}  # for str.translate: printable char -> byte value
_UNSPELL.update({b: 0xFFFF for b in range(256) if chr(b) != _SPELL[b]})  # not in the alphabet: fails latin-1


def _spell(data: bytes) -> str:
    return "".join([_SPELL[b] for b in data])


def _unspell(token: str) -> bytes | None:
    """Bytes of a printable-spelled token, or None when it uses a character outside the alphabet."""
    raw = token.translate(_UNSPELL)
    try:
        return raw.encode("latin-1")
    except UnicodeEncodeError:
        return None


def _unspell_all(tokens: list[str]) -> list[bytes | None]:
    """:func:`_unspell` for many tokens at once: one ``translate`` over the joined text, then slices
    (in the byte spelling each character is one byte, so a token's length is its byte count)."""
    try:
        raw = "".join(tokens).translate(_UNSPELL).encode("latin-1")
    except UnicodeEncodeError:
        return [_unspell(t) for t in tokens]  # some token is not byte-level spelled
    ends = list(itertools.accumulate(map(len, tokens)))
    return [raw[e - n:e] for e, n in zip(ends, map(len, tokens))]


MAX_PATTERNS, MAX_PATTERN_CHARS = 16, 10_000


def _compile(pattern) -> tuple[tuple[str, ...], list]:
    """The regexes of a pre-tokenizer. Each must match forward and have no capturing group
    (``(?:...)`` instead), so that its matches and the text between them split any text into
    consecutive pieces."""
    if isinstance(pattern, str):
        patterns = PRE_TOKENIZERS.get(pattern, (pattern,))
    elif isinstance(pattern, (list, tuple)):
        patterns = tuple(pattern)
    else:
        patterns = ()
    if not 0 < len(patterns) <= MAX_PATTERNS or not all(isinstance(p, str) and 0 < len(p) <= MAX_PATTERN_CHARS
                                                         for p in patterns):
        raise ValueError(f"pattern must be a preset name {sorted(PRE_TOKENIZERS)}, a regex or a list of at most "
                         f"{MAX_PATTERNS} regexes of at most {MAX_PATTERN_CHARS} characters, got {pattern!r}"[:400])
    compiled = []
    for p in patterns:
        try:
            rx = regex.compile(p)
        except (regex.error, OverflowError, RecursionError, MemoryError) as err:
            raise ValueError(f"pattern {p!r} is not a valid regex: {err}"[:400]) from None
        if rx.groups or rx.flags & regex.REVERSE:
            raise ValueError(f"pattern {p!r} must match forward with no capturing group (write (?:...))"[:400])
        compiled.append(rx)
    return tuple(patterns), compiled


def _split_isolated(rx, text: str) -> list[str]:
    """Cut ``text`` at the matches of ``rx``: matches and the text between them are pieces."""
    pieces = rx.findall(text)
    if sum(map(len, pieces)) == len(text):  # the pattern covers everything (GPT-2's does)
        return pieces
    out, pos = [], 0
    for m in rx.finditer(text):
        start, end = m.span()
        if start > pos:
            out.append(text[pos:start])
        if end > start:
            out.append(text[start:end])
        pos = end
    if pos < len(text):
        out.append(text[pos:])
    return out


def pre_tokenize(text: str, pattern="gpt2") -> list[str]:
    """The pieces BPE works on, e.g. ``pre_tokenize("Hi  there!")`` -> ``['Hi', ' ', ' there', '!']``."""
    _, compiled = _compile(pattern)
    return _pre_tokenize(text, compiled)


def _pre_tokenize(text: str, compiled) -> list[str]:
    pieces = [text] if text else []
    for rx in compiled:
        if len(pieces) == 1:
            pieces = _split_isolated(rx, pieces[0])
        else:
            pieces = [q for p in pieces for q in _split_isolated(rx, p)]
    return pieces


@plug.point("bpe_merge")
def bpe_merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """One BPE merge: a new list with every occurrence of ``pair`` in ``ids`` replaced by ``new_id``, scanning
    left to right without overlaps (``[5, 5, 5]`` with ``(5, 5) -> 7`` is ``[7, 5]``). Training and encoding
    both merge through here; lesson 04's exercise of the same name plugs in."""
    a, b = pair
    out, j, n = [], 0, len(ids)
    while j < n:
        if j < n - 1 and ids[j] == a and ids[j + 1] == b:
            out.append(new_id)
            j += 2
        else:
            out.append(ids[j])
            j += 1
    return out


class BPETokenizer:
    """Byte-level BPE: ``train``, ``encode``, ``decode``, ``save``/``load``, ``from_gguf_metadata``.

    Attributes: ``vocab`` (id -> bytes), ``merges`` (list of ``(a, b)`` id pairs in rank order; merge
    ``r`` makes the id ``merge_ids[r]``), ``special_tokens`` (str -> id), ``pattern`` (the regexes),
    ``bos_token_id``/``eos_token_id``/``unk_token_id``/``pad_token_id``/``add_bos_token``/
    ``chat_template`` (set when loaded from a model, else None/False).
    """

    def __init__(self, vocab, merges, merge_ids=None, special_tokens=None, pattern="gpt2", **info):
        self.vocab: list[bytes] = list(vocab)
        self.merges: list[tuple[int, int]] = [tuple(m) for m in merges]
        if merge_ids is None:  # trained tokenizers: merge r makes id 256 + r
            merge_ids = range(256, 256 + len(self.merges))
        self.merge_ids: list[int] = list(merge_ids)
        self.special_tokens: dict[str, int] = dict(special_tokens or {})
        self.pattern, self._compiled = _compile(pattern)
        self.bos_token_id = info.pop("bos_token_id", None)
        self.eos_token_id = info.pop("eos_token_id", None)
        self.unk_token_id = info.pop("unk_token_id", None)
        self.pad_token_id = info.pop("pad_token_id", None)
        self.add_bos_token = bool(info.pop("add_bos_token", False))
        self.chat_template = info.pop("chat_template", None)
        if info:
            raise TypeError(f"unexpected keyword arguments {sorted(info)}")
        self._check()
        self._ranks = dict(zip(self.merges, range(len(self.merges))))  # (a, b) -> rank
        self._merged = dict(zip(self.merges, self.merge_ids))  # (a, b) -> new id
        self._special_ids = set(self.special_tokens.values())
        byte_ids = {}
        for i, tok in enumerate(self.vocab):
            if len(tok) == 1 and i not in self._special_ids:
                byte_ids.setdefault(tok[0], i)
        # Bytes with no token of their own (SmolLM2 lacks 21, e.g. 0xC0, which UTF-8 never uses) are
        # dropped when encoding, as HF tokenizers' BPE does without an unknown token.
        self.missing_bytes = bytes(b for b in range(256) if b not in byte_ids)
        self._byte_ids = [byte_ids.get(b) for b in range(256)]
        self._special_rx_cache: dict = {}
        self._cache: dict[str, list[int]] = {}

    def _check(self) -> None:
        n = len(self.vocab)
        if len(self.merge_ids) != len(self.merges):
            raise TokenizerError(f"{len(self.merges)} merges but {len(self.merge_ids)} merge_ids")
        for r, ((a, b), new) in enumerate(zip(self.merges, self.merge_ids)):
            if not (0 <= a < n and 0 <= b < n and 0 <= new < n):
                raise TokenizerError(f"merge {r} ({a}, {b}) -> {new} refers to an id outside the vocabulary of {n}")
            if self.vocab[new] != self.vocab[a] + self.vocab[b]:
                raise TokenizerError(f"merge {r}: token {new} is not the concatenation of tokens {a} and {b}")
        for s, i in self.special_tokens.items():
            if not (isinstance(s, str) and s and type(i) is int and 0 <= i < n):
                raise TokenizerError(f"special token {s!r} has invalid id {i!r} (vocabulary of {n})")
            if self.vocab[i] != s.encode("utf-8", errors="replace"):
                raise TokenizerError(f"special token {s!r}: token {i} holds other bytes, {self.vocab[i]!r}")
        for key in ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id"):
            i = getattr(self, key)
            if i is not None and not (type(i) is int and 0 <= i < n):
                raise TokenizerError(f"{key} {i!r} is not an id in the vocabulary of {n}")

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens=(), pattern="gpt2", progress: bool = False) -> "BPETokenizer":
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        Ids 0..255 are the bytes, merge ``r`` makes id ``256 + r``, special tokens come last. Ties
        between equally frequent pairs go to the pair with the smaller ids, so training is
        deterministic. Stops early if no pair occurs any more. ``progress=True`` shows a tqdm bar.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        special_tokens = list(special_tokens)
        if len(set(special_tokens)) != len(special_tokens) or not all(isinstance(s, str) and s for s in special_tokens):
            raise ValueError(f"special_tokens must be distinct non-empty strings, got {special_tokens!r}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
            raise ValueError(f"vocab_size must be an int >= 256 + {len(special_tokens)} special tokens, got {vocab_size!r}")
        _, compiled = _compile(pattern)
        if special_tokens:  # special strings in the training text are not learned from
            text = "".join(regex.split("|".join(regex.escape(s) for s in special_tokens), text))

        counts = Counter(_pre_tokenize(text, compiled))  # distinct words with their counts
        words = [list(w.encode("utf-8")) for w in counts]  # each a list of ids
        freqs = list(counts.values())
        pair_counts: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> indices of words holding it
        for i, (w, f) in enumerate(zip(words, freqs)):
            for pair in zip(w, w[1:]):
                pair_counts[pair] += f
                where[pair].add(i)
        heap = [(-c, p) for p, c in pair_counts.items()]
        heapq.heapify(heap)

        vocab = [bytes([b]) for b in range(256)]
        merges: list[tuple[int, int]] = []
        n_merges = vocab_size - 256 - len(special_tokens)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_merges, desc="BPE merges", unit="merge")
        while len(merges) < n_merges and heap:
            neg, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) != -neg or neg == 0:
                continue  # stale heap entry: this pair's count changed since it was pushed
            a, b = pair
            new = 256 + len(merges)
            merges.append(pair)
            vocab.append(vocab[a] + vocab[b])
            delta: dict[tuple[int, int], int] = defaultdict(int)
            for i in where.pop(pair):
                w = words[i]
                out = bpe_merge(w, pair, new)  # every non-overlapping occurrence, left to right
                if len(out) == len(w):
                    continue  # the index is a superset: this word lost the pair in an earlier merge
                f = freqs[i]
                for p in zip(w, w[1:]):
                    delta[p] -= f
                for p in zip(out, out[1:]):
                    delta[p] += f
                    where[p].add(i)
                words[i] = out
            for p, d in delta.items():
                if d:
                    c = pair_counts[p] + d
                    pair_counts[p] = c
                    if c > 0:
                        heapq.heappush(heap, (-c, p))
            pair_counts.pop(pair, None)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        specials = {}
        for s in special_tokens:
            specials[s] = len(vocab)
            vocab.append(s.encode("utf-8"))
        return cls(vocab, merges, special_tokens=specials, pattern=pattern)

    # ------------------------------------------------------------------ encoding
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={len(self.special_tokens)})")

    def _bpe(self, piece: str) -> list[int]:
        """Ids of one pre-token: its bytes, then merges by rank until none applies."""
        byte_ids = self._byte_ids
        ids = [byte_ids[b] for b in piece.encode("utf-8")]
        if self.missing_bytes:
            ids = [i for i in ids if i is not None]
        ranks = self._ranks
        while len(ids) >= 2:
            pairs = list(zip(ids, ids[1:]))
            best = min(pairs, key=lambda p: ranks.get(p, 1 << 62))
            if best not in ranks:
                break
            merged = bpe_merge(ids, best, self._merged[best])
            if len(merged) >= len(ids):  # only a plugged-in merge can fail to merge the pair it was given
                raise TokenizerError(f"bpe_merge(ids, {best}, {self._merged[best]}) returned {len(merged)} ids for "
                                     f"{len(ids)} that hold the pair: it must replace the pair by the new id")
            ids = merged
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` with no special-token handling (``<|endoftext|>`` is plain text here)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        # A plugged bpe_merge must run on every piece, and its results must not stay in the cache.
        cache = self._cache if "bpe_merge" not in plug.in_use() else {}
        out: list[int] = []
        try:
            for piece in _pre_tokenize(text, self._compiled):
                ids = cache.get(piece)
                if ids is None:
                    ids = self._bpe(piece)
                    if len(cache) >= _CACHE_LIMIT:
                        cache.clear()
                    cache[piece] = ids
                out.extend(ids)
        except UnicodeEncodeError as err:
            raise TokenizerError(f"text has no UTF-8 encoding: {err.reason} ({err.object[err.start:err.end]!r}); "
                                 "lone surrogates are not Unicode text") from None
        return out

    def _special_regex(self, allowed):
        key = frozenset(allowed)
        rx = self._special_rx_cache.get(key)
        if rx is None:
            names = sorted(allowed, key=lambda s: (-len(s), s))  # longest first: leftmost-longest match
            rx = regex.compile("(" + "|".join(regex.escape(s) for s in names) + ")")
            self._special_rx_cache[key] = rx
        return rx

    def encode(self, text: str, allowed_special="all") -> list[int]:
        """Token ids of ``text``.

        ``allowed_special``: ``"all"`` (default) maps every special token string in the text to its
        id; a set maps only those; ``"none"`` or an empty set encodes them as ordinary text.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        elif allowed_special == "none" or allowed_special is None:
            allowed = set()
        elif isinstance(allowed_special, (set, frozenset, list, tuple)):
            allowed = set(allowed_special)
            unknown = allowed - self.special_tokens.keys()
            if unknown:
                raise ValueError(f"allowed_special names unknown special tokens {sorted(unknown)}; "
                                 f"known: {sorted(self.special_tokens)}")
        else:
            raise ValueError(f"allowed_special must be 'all', 'none' or a set of special tokens, got {allowed_special!r}")
        if not allowed:
            return self.encode_ordinary(text)
        out: list[int] = []
        for k, part in enumerate(self._special_regex(allowed).split(text)):
            if k % 2:  # the captured separators are the special tokens
                out.append(self.special_tokens[part])
            elif part:
                out.extend(self.encode_ordinary(part))
        return out

    def decode_bytes(self, ids) -> bytes:
        vocab = self.vocab
        try:
            ids = [int(i) for i in ids]
            if ids and (min(ids) < 0):
                raise IndexError
            return b"".join([vocab[i] for i in ids])
        except (IndexError, TypeError, ValueError):
            raise TokenizerError(f"ids must be integers in [0, {len(vocab)})") from None

    def decode(self, ids) -> str:
        """Text of ``ids``. Bytes that are not valid UTF-8 (a cut multi-byte character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def id_to_token(self, i: int) -> str:
        """The printable spelling of token ``i`` (specials as written), e.g. ``' the'`` -> ``'Ġthe'``."""
        specials = {v: k for k, v in self.special_tokens.items()}
        return specials.get(i) or _spell(self.vocab[i])

    # ------------------------------------------------------------------ files
    def save(self, path) -> None:
        """A JSON file with the tokens (printable spelling), merges ``[a, b, new]``, specials and pattern."""
        obj = {
            "format": _FORMAT,
            "version": 1,
            "pattern": list(self.pattern),
            "tokens": [_spell(t) for t in self.vocab],
            "merges": [[a, b, n] for (a, b), n in zip(self.merges, self.merge_ids)],
            "special_tokens": self.special_tokens,
            "info": {"bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
                     "unk_token_id": self.unk_token_id, "pad_token_id": self.pad_token_id,
                     "add_bos_token": self.add_bos_token, "chat_template": self.chat_template},
        }
        write_json(path, obj)

    @classmethod
    def load(cls, path) -> "BPETokenizer":
        """A tokenizer saved by :meth:`save`; every field is checked, and any problem raises
        :class:`TokenizerError` naming the file."""
        obj = read_tokenizer_json(path, _FORMAT)
        name = str(Path(path))

        def bad(problem: str) -> TokenizerError:
            return TokenizerError(f"{name!r}: {problem}"[:400])

        for key in ("tokens", "merges", "pattern"):
            if key not in obj:
                raise bad(f"missing key {key!r}")
        tokens, merges = obj["tokens"], obj["merges"]
        if not isinstance(tokens, list) or not isinstance(merges, list):
            raise bad("keys 'tokens' and 'merges' must be lists")
        vocab = [_unspell(t) if isinstance(t, str) else None for t in tokens]
        if None in vocab:
            raise bad(f"key 'tokens': entry {vocab.index(None)} is not a byte-level spelled string")
        if not all(type(m) is list and len(m) == 3 and all(type(x) is int for x in m) for m in merges):
            raise bad("key 'merges' must be a list of [a, b, new] integer triples")
        specials = obj.get("special_tokens") or {}
        if not isinstance(specials, dict):
            raise bad("key 'special_tokens' must be an object of string -> id")
        info = obj.get("info") or {}
        if not isinstance(info, dict) or not set(info) <= _INFO_TYPES.keys():
            raise bad(f"key 'info' must be an object with keys among {sorted(_INFO_TYPES)}")
        for k, v in info.items():
            if v is not None and type(v) is not _INFO_TYPES[k]:
                raise bad(f"info {k!r} must be {_INFO_TYPES[k].__name__} or null, got {v!r}")
        try:
            return cls(vocab, [(a, b) for a, b, _ in merges], [n for _, _, n in merges],
                       special_tokens=specials, pattern=obj["pattern"], **info)
        except (TokenizerError, ValueError) as err:
            raise bad(str(err)) from None

    # ------------------------------------------------------------------ real models
    @classmethod
    def from_gguf_metadata(cls, metadata: dict, pre_tokenizer=None) -> "BPETokenizer":
        """The tokenizer a GGUF file describes (``tokenizer.ggml.model == "gpt2"``: byte-level BPE).

        ``metadata`` maps GGUF keys to plain Python values (lists or NumPy arrays for arrays).
        Tokens are stored in the printable byte spelling; merges as ``"left right"`` strings in
        rank order. Tokens of type 3 (CONTROL, e.g. ``<|im_start|>``) become special tokens.

        ``pre_tokenizer`` defaults to the one named by ``tokenizer.ggml.pre``: for ``"smollm"``
        that is SmolLM2's own (digits isolated, then GPT-2's regex), as in the model's
        ``tokenizer.json`` and llama.cpp. ``pre_tokenizer="gpt2"`` instead reproduces what
        ``transformers`` builds when it loads the GGUF (it has no entry for ``"smollm"`` and falls back
        to GPT-2's regex); the two differ only where whitespace runs or characters precede digits,
        e.g. ``"  42"``.
        """
        def get(key, kind, default=KeyError):
            """``metadata[key]`` checked to be a ``kind`` (or a list of them, for ``kind=(list, t)``)."""
            if key not in metadata:
                if default is KeyError:
                    raise TokenizerError(f"GGUF metadata lacks key {key!r}")
                return default
            value = metadata[key]
            value = value.tolist() if hasattr(value, "tolist") else value
            if isinstance(kind, tuple):
                ok = type(value) is list and all(type(v) is kind[1] for v in value)
                name = f"a list of {kind[1].__name__}"
            else:
                ok, name = type(value) is kind, kind.__name__
            if not ok:
                raise TokenizerError(f"GGUF metadata {key!r} must be {name}, got {type(value).__name__}")
            return value

        model = get("tokenizer.ggml.model", str)
        if model != "gpt2":
            raise TokenizerError(f"GGUF metadata 'tokenizer.ggml.model' is {model!r}; only byte-level BPE ('gpt2') is supported")
        if pre_tokenizer is None:
            pre = get("tokenizer.ggml.pre", str, "gpt2")
            if pre not in PRE_TOKENIZERS:
                raise TokenizerError(f"GGUF metadata 'tokenizer.ggml.pre' is {pre!r}; known: {sorted(PRE_TOKENIZERS)} "
                                     "(pass pre_tokenizer= a regex to use another)")
            pre_tokenizer = pre
        tokens = get("tokenizer.ggml.tokens", (list, str))
        if not tokens:
            raise TokenizerError("GGUF metadata 'tokenizer.ggml.tokens' is empty")
        types = get("tokenizer.ggml.token_type", (list, int), [1] * len(tokens))
        if len(types) != len(tokens):
            raise TokenizerError(f"GGUF metadata 'tokenizer.ggml.token_type' has {len(types)} entries for {len(tokens)} tokens")
        specials = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3}
        vocab = _unspell_all(tokens)
        for i, t in enumerate(tokens):
            if vocab[i] is None:
                vocab[i] = t.encode("utf-8")  # written as text, not in the byte spelling
        for t, i in specials.items():
            vocab[i] = t.encode("utf-8")
        index = {t: i for i, t in enumerate(tokens)}
        pairs = [m.split(" ") for m in get("tokenizer.ggml.merges", (list, str))]
        try:
            if any(len(p) != 2 for p in pairs):
                raise KeyError
            left, right = [index[a] for a, _ in pairs], [index[b] for _, b in pairs]
            new = [index[a + b] for a, b in pairs]
        except KeyError:
            bad = next(" ".join(p) for p in pairs if len(p) != 2 or any(q not in index for q in (*p, "".join(p))))
            raise TokenizerError(f"GGUF metadata 'tokenizer.ggml.merges': merge {bad!r} is not two tokens "
                                 "whose concatenation is a token") from None
        info = {k: get("tokenizer.ggml." + k, int, None) for k in ("bos_token_id", "eos_token_id")}
        info["unk_token_id"] = get("tokenizer.ggml.unknown_token_id", int, None)
        info["pad_token_id"] = get("tokenizer.ggml.padding_token_id", int, None)
        info["add_bos_token"] = get("tokenizer.ggml.add_bos_token", bool, False)
        info["chat_template"] = get("tokenizer.chat_template", str, None)
        try:
            return cls(vocab, list(zip(left, right)), new, special_tokens=specials, pattern=pre_tokenizer, **info)
        except (TokenizerError, ValueError) as err:
            raise TokenizerError(f"GGUF metadata describes an invalid tokenizer: {err}"[:400]) from None
