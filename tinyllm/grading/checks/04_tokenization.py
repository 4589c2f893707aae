"""Graded checks for exercises/04_tokenization.ipynb.

The merge reference is ``tinyllm.tokenizers.bpe.BPETokenizer`` itself: a tokenizer with the one merge
``pair -> 256`` encodes the ids (renamed to small byte values and spelled as bytes, one pre-token) with
the library's merge rule (left to right, non-overlapping); 256 is renamed to the exercise's new id and the
other ids back to theirs. Pair counting has no public library function (``BPETokenizer.train`` counts pairs
inline), so its reference is its definition, ``Counter(zip(ids, ids[1:]))``.
"""
from __future__ import annotations

from collections import Counter

from tinyllm.grading.core import Exercise, Fail, call, call_seeing_args, unchanged, value, with_args
from tinyllm.tokenizers.bpe import BPETokenizer

EXERCISES: list[Exercise] = []

TEXTS = ["hello", "naïve café", "日本語 🙂", "", "a\x00b\n\t€𝔘", "  spaces at both ends \n"]

ex = Exercise("text_to_bytes", "Text to UTF-8 byte values")


def _judge_bytes(rs):
    for text, r in zip(TEXTS, rs):
        what = f"text_to_bytes({text!r})"
        got = value(r, what)
        want = list(text.encode("utf-8"))
        if repr(got) == "bytes":                       # a bytes object cannot travel back from the sandbox
            raise Fail(f"{what} returned a bytes object: return a list of ints, list(text.encode('utf-8'))")
        if hasattr(got, "tolist"):
            got = got.tolist()
        if not isinstance(got, (list, tuple)):
            raise Fail(f"{what} returned {type(got).__name__}, expected a list of ints")
        got = list(got)
        if got == want:
            continue
        if got == [ord(c) for c in text]:
            raise Fail(f"{what} returned code points (ord), not bytes: {text!r} is {len(want)} bytes in UTF-8; "
                       "use list(text.encode('utf-8'))")
        for enc in ("utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"):
            try:
                if got == list(text.encode(enc)):
                    raise Fail(f"{what} returned the bytes of {enc.upper()}: encode with UTF-8, text.encode('utf-8')")
            except UnicodeEncodeError:
                pass
        raise Fail(f"{what} = {got[:12]}{'...' if len(got) > 12 else ''}, expected {want[:12]}{'...' if len(want) > 12 else ''}")


ex.test("UTF-8 bytes of ASCII, accents, CJK, emoji, control characters and spaces", 2, [call(t) for t in TEXTS], _judge_bytes)
EXERCISES.append(ex)

ex = Exercise("get_pair_counts", "Count adjacent pairs")
IDS = [[1, 2, 3, 1, 2, 1, 2], [5, 5, 5, 5], [7], [], [256, 1000, 256, 1000, 256, 50_000, 256, 1000], [300, 7, 300]]


PAIR_MISTAKES = [
    (lambda ids: dict(Counter(zip(ids, ids[1:] + ids[:1]))),
     "a pair wraps around from the end to the start: stop at the last pair (ids[-2], ids[-1])"),
    (lambda ids: dict(Counter(zip(ids[:-1], ids[1:-1]))),
     "the last pair is missing: the loop must run up to len(ids) - 1"),
    (lambda ids: dict(Counter(zip(ids, ids[2:]))), "those pairs skip a token: pair each id with the next one, zip(ids, ids[1:])"),
    (lambda ids: {p: 1 for p in zip(ids, ids[1:])}, "every pair counts 1: count every occurrence"),
]


def _judge_pairs(rs):
    gots = []
    for ids, r in zip(IDS, rs):
        what = f"get_pair_counts({ids})"
        got = value(r, what)
        if not isinstance(got, dict):
            raise Fail(f"{what} returned {type(got).__name__}, expected a dict {{(a, b): count}}")
        gots.append({tuple(k) if isinstance(k, (list, tuple)) else k: v for k, v in got.items()})
    wants = [dict(Counter(zip(ids, ids[1:]))) for ids in IDS]
    if gots == wants:
        return
    k = next(i for i, (g, w) in enumerate(zip(gots, wants)) if g != w)
    ids, got, want = IDS[k], gots[k], wants[k]
    for fn, why in PAIR_MISTAKES:                       # named only when every case shows the same mistake
        if all(g == fn(i) for g, i in zip(gots, IDS)):
            raise Fail(f"get_pair_counts({ids}) = {got}, expected {want}: {why}")
    missing = [p for p in want if p not in got]
    extra = [p for p in got if p not in want]
    wrong = [p for p in want if p in got and got[p] != want[p]]
    where = "; ".join(x for x in ((f"pairs {missing} are missing" if missing else ""),
                                  (f"pairs {extra} do not occur" if extra else ""),
                                  (f"the counts of {wrong} are wrong" if wrong else "")) if x)
    raise Fail(f"get_pair_counts({ids}) = {got}, expected {want}: {where}")


ex.test("counts of adjacent pairs, overlaps included, ids beyond 255", 2, [call(i) for i in IDS], _judge_pairs)
EXERCISES.append(ex)

ex = Exercise("merge", "Replace every occurrence of a pair by a new token id")


def ref_merge(ids, pair, new_id):
    """Apply one merge with the library's BPE encoder: the ids are renamed to byte values 0..n-1 (a merge
    does not depend on the ids' values), encoded with the one merge, and renamed back."""
    names = sorted(set(ids) | set(pair))
    small = {t: i for i, t in enumerate(names)}
    vocab = [bytes([b]) for b in range(256)]
    a, b = small[pair[0]], small[pair[1]]
    tok = BPETokenizer(vocab + [vocab[a] + vocab[b]], [(a, b)], pattern=r"[\s\S]+")   # the whole text is one piece
    out = tok.encode_ordinary(bytes(small[t] for t in ids).decode("ascii")) if ids else []
    return [new_id if i == 256 else names[i] for i in out]


def _overlapping(ids, pair, new_id):
    out = []
    for i, t in enumerate(ids):                 # every position that starts the pair emits new_id
        if tuple(ids[i:i + 2]) == tuple(pair):
            out.append(new_id)
        elif not (i > 0 and tuple(ids[i - 1:i + 1]) == tuple(pair)):
            out.append(t)
    return out


def _first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)


def _not_at_end(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:                     # the loop stops before the last token
        if (ids[i], ids[i + 1]) == tuple(pair) and i + 2 < len(ids):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out + ids[i:]


MERGES = [([1, 2, 3, 1, 2], (1, 2), 99), ([5, 5, 5], (5, 5), 7), ([5, 5, 5, 5], (5, 5), 7), ([1, 2, 1], (2, 3), 9),
          ([3, 1, 2], (1, 2), 4), ([], (1, 2), 4), ([300, 7, 300, 300, 7, 7], (300, 7), 50_000),
          ([1000, 1000, 1000, 256, 1000, 1000], (1000, 1000), 1001)]


MERGE_MISTAKES = [
    (_overlapping, "merges overlap: after merging a pair, skip both of its tokens (left to right, no overlaps): "
                   "[5, 5, 5] -> [7, 5]"),
    (_first_only, "only the first occurrence was merged: replace every occurrence"),
    (_not_at_end, "the pair at the very end of the list was not merged"),
]


def _judge_merge(rs):
    gots = []
    for (ids, pair, new), r in zip(MERGES, rs):
        what = f"merge({ids}, {pair}, {new})"
        got, after = with_args(r)
        got = value(got, what)
        if hasattr(got, "tolist"):
            got = got.tolist()
        if not isinstance(got, (list, tuple)):
            raise Fail(f"{what} returned {type(got).__name__}, expected a list of ints")
        gots.append(list(got))
        if list(got) == ref_merge(ids, pair, new):
            unchanged(after[0] if after else None, ids, "ids", "build a new list")
    wants = [ref_merge(*m) for m in MERGES]
    if gots == wants:
        return
    k = next(i for i, (g, w) in enumerate(zip(gots, wants)) if g != w)
    (ids, pair, new), got, want = MERGES[k], gots[k], wants[k]
    what = f"merge({ids}, {pair}, {new}) = {got}, expected {want}"
    for fn, why in MERGE_MISTAKES:                      # named only when every case shows the same mistake
        if all(g == fn(*m) for g, m in zip(gots, MERGES)):
            raise Fail(f"{what}: {why}")
    if all(len(g) == len(m[0]) for g, m in zip(gots, MERGES)):
        raise Fail(f"{what}: the merged pair must become ONE token; the list gets shorter")
    raise Fail(what)


ex.test("merges left to right without overlaps, ends included, any ids; ids unchanged", 3,
        [call_seeing_args(*m) for m in MERGES], _judge_merge)
EXERCISES.append(ex)
