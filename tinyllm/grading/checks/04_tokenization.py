"""Graded checks for exercises/04_tokenization.ipynb.

The merge reference is ``tinyllm.tokenizers.bpe.BPETokenizer`` itself: a tokenizer with the one merge
``pair -> 256`` encodes the ids (spelled as bytes, one pre-token) with the library's merge rule (left to
right, non-overlapping), and 256 is renamed to the exercise's new id. Pair counting has no public
library function (``BPETokenizer.train`` counts pairs inline), so its reference is its definition,
``Counter(zip(ids, ids[1:]))``.
"""
from __future__ import annotations

from collections import Counter

from tinyllm.grading.core import Exercise, Fail, call, value
from tinyllm.tokenizers.bpe import BPETokenizer

EXERCISES: list[Exercise] = []

TEXTS = ["hello", "naïve café", "日本語 🙂", ""]

ex = Exercise("text_to_bytes", "Text to UTF-8 byte values")


def _judge_bytes(rs):
    for text, r in zip(TEXTS, rs):
        got = value(r, f"text_to_bytes({text!r})")
        want = list(text.encode("utf-8"))
        if hasattr(got, "tolist"):
            got = got.tolist()
        if not isinstance(got, (list, tuple)):
            raise Fail(f"text_to_bytes({text!r}) returned {type(got).__name__}, expected a list of ints")
        got = list(got)
        if got == [ord(c) for c in text] and got != want:
            raise Fail(f"text_to_bytes({text!r}) returned code points (ord), not bytes: "
                       f"{text!r} is {len(want)} bytes in UTF-8; use list(text.encode('utf-8'))")
        if got != want:
            raise Fail(f"text_to_bytes({text!r}) = {got[:12]}..., expected {want[:12]}...")


ex.test("UTF-8 bytes of ASCII, accents, CJK and emoji", 2, [call(t) for t in TEXTS], _judge_bytes)
EXERCISES.append(ex)

ex = Exercise("get_pair_counts", "Count adjacent pairs")
IDS = [[1, 2, 3, 1, 2, 1, 2], [5, 5, 5, 5], [7], []]


def _judge_pairs(rs):
    for ids, r in zip(IDS, rs):
        got = value(r, f"get_pair_counts({ids})")
        if not isinstance(got, dict):
            raise Fail(f"get_pair_counts({ids}) returned {type(got).__name__}, expected a dict {{(a, b): count}}")
        got = {tuple(k) if isinstance(k, (list, tuple)) else k: v for k, v in got.items()}
        want = dict(Counter(zip(ids, ids[1:])))
        if got != want:
            missing = [p for p in want if p not in got]
            extra = [p for p in got if p not in want]
            hint = ""
            if extra and not missing:
                hint = f": pairs {extra} do not occur; pair each id with the next one, zip(ids, ids[1:])"
            elif any(want.get(p) != got.get(p) for p in want):
                hint = ": count every occurrence, overlapping ones too ((5, 5) occurs 3 times in [5, 5, 5, 5])"
            raise Fail(f"get_pair_counts({ids}) = {got}, expected {want}{hint}")


ex.test("counts of adjacent pairs, overlaps included", 2, [call(i) for i in IDS], _judge_pairs)
EXERCISES.append(ex)

ex = Exercise("merge", "Replace every occurrence of a pair by a new token id")


def ref_merge(ids, pair, new_id):
    """Apply one merge with the library's BPE encoder (ids must be byte values < 128 here)."""
    vocab = [bytes([b]) for b in range(256)]
    a, b = pair
    tok = BPETokenizer(vocab + [vocab[a] + vocab[b]], [pair], pattern=r"[\s\S]+")   # the whole text is one piece
    out = tok.encode_ordinary(bytes(ids).decode("ascii")) if ids else []
    return [new_id if i == 256 else i for i in out]


MERGES = [([1, 2, 3, 1, 2], (1, 2), 99), ([5, 5, 5], (5, 5), 7), ([5, 5, 5, 5], (5, 5), 7), ([1, 2, 1], (2, 3), 9),
          ([3, 1, 2], (1, 2), 4), ([], (1, 2), 4)]


def _judge_merge(rs):
    for (ids, pair, new), r in zip(MERGES, rs):
        got = value(r, f"merge({ids}, {pair}, {new})")
        if hasattr(got, "tolist"):
            got = got.tolist()
        if not isinstance(got, (list, tuple)):
            raise Fail(f"merge returned {type(got).__name__}, expected a list of ints")
        want = ref_merge(ids, pair, new)
        if list(got) != want:
            hint = ""
            if ids == [5, 5, 5]:
                hint = ": after merging a pair, skip both of its tokens (left to right, no overlaps): [5, 5, 5] -> [7, 5]"
            elif len(got) == len(ids):
                hint = ": the merged pair must become ONE token; the list gets shorter"
            elif ids and ids[-2:] == list(pair):
                hint = ": check the pair at the very end of the list"
            raise Fail(f"merge({ids}, {pair}, {new}) = {list(got)}, expected {want}{hint}")


ex.test("merges left to right without overlaps, ends included", 3, [call(*m) for m in MERGES], _judge_merge)
EXERCISES.append(ex)
