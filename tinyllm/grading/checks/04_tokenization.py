"""Graded checks for exercises/04_tokenization.ipynb.

The references are the library's BPE: ``tinyllm.tokenizers.bpe.bpe_merge`` (the library's own merge, unplugged)
for one merge, ``BPETokenizer.train`` for the merges learned from a text (ties to the smallest pair), and
``BPETokenizer.encode_ordinary`` / ``decode`` for ids and text. Hidden texts are slices of Python's own
documentation (``pydoc_data``) picked by fixed seeds, plus Unicode and tie-heavy texts, at several vocabulary
sizes and pre-tokenizer patterns. The end-to-end test runs the library's trainer and SmolLM2's tokenizer with the
learner's ``bpe_merge`` plugged in.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import regex
from pydoc_data.topics import topics

from tinyllm import plug
from tinyllm.grading.core import CallError, Exercise, Fail, call, call_seeing_args, unchanged, value, with_args
from tinyllm.models.smollm2 import load_tokenizer
from tinyllm.tokenizers.bpe import GPT2_PATTERN, BPETokenizer, bpe_merge

EXERCISES: list[Exercise] = []
ref_merge = bpe_merge.library                    # the library's own merge, whatever is plugged


def _doc(seed, n):
    """``n`` characters of Python's documentation, from a place picked by ``seed``."""
    text = "".join(topics[k] for k in sorted(topics))
    start = int(np.random.default_rng(seed).integers(0, len(text) - n))
    return text[start:start + n]


# --- one merge ------------------------------------------------------------------------------------
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
          ([1000, 1000, 1000, 256, 1000, 1000], (1000, 1000), 1001), ([2, 1, 2, 1], (1, 2), 3)]
MERGE_MISTAKES = [
    (_overlapping, "merges overlap: after merging a pair, skip both of its tokens (left to right, no overlaps): "
                   "[5, 5, 5] -> [7, 5]"),
    (_first_only, "only the first occurrence was merged: replace every occurrence"),
    (_not_at_end, "the pair at the very end of the list was not merged"),
    (lambda ids, pair, new_id: ref_merge(ids, pair[::-1], new_id), "the pair is matched reversed: (a, b) means "
                                                                   "ids[i] == a and ids[i + 1] == b"),
]


def _as_ids(got, what):
    got = value(got, what)
    if hasattr(got, "tolist"):
        got = got.tolist()
    if not isinstance(got, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in got):
        raise Fail(f"{what} returned {type(got).__name__}, expected a list of ints")
    return list(got)


def _judge_merge(rs):
    gots = []
    for (ids, pair, new), r in zip(MERGES, rs):
        what = f"bpe_merge({ids}, {pair}, {new})"
        got, after = with_args(r)
        got = _as_ids(got, what)
        gots.append(got)
        if got == ref_merge(ids, pair, new) and after:
            unchanged(after[0], ids, "ids", "build a new list")
    wants = [ref_merge(*m) for m in MERGES]
    if gots == wants:
        return
    k = next(i for i, (g, w) in enumerate(zip(gots, wants)) if g != w)
    (ids, pair, new), got, want = MERGES[k], gots[k], wants[k]
    what = f"bpe_merge({ids}, {pair}, {new}) = {got}, expected {want}"
    for fn, why in MERGE_MISTAKES:                      # named only when every case shows the same mistake
        if all(g == fn(*m) for g, m in zip(gots, MERGES)):
            raise Fail(f"{what}: {why}")
    if all(len(g) == len(m[0]) for g, m in zip(gots, MERGES)):
        raise Fail(f"{what}: the merged pair must become ONE token; the list gets shorter")
    raise Fail(what)


ex = Exercise("bpe_merge", "One BPE merge")
ex.test("merges left to right without overlaps, ends included, any ids; ids unchanged", 2,
        [call_seeing_args(*m) for m in MERGES], _judge_merge)
EXERCISES.append(ex)


# --- training -------------------------------------------------------------------------------------
def _naive_train(text, vocab_size, pattern, *, tie=lambda p: (-p[0], -p[1]), weighted=True, n_extra=0):
    """A trainer with one knob turned wrong, to recognise mistakes by their results."""
    pieces = [(list(w.encode("utf-8")), n if weighted else 1) for w, n in Counter(regex.findall(pattern, text)).items()]
    merges = []
    while 256 + len(merges) < vocab_size + n_extra:
        counts = Counter()
        for ids, n in pieces:
            for p in zip(ids, ids[1:]):
                counts[p] += n
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], *tie(p)))
        merges.append(best)
        pieces = [(ref_merge(ids, best, 255 + len(merges)), n) for ids, n in pieces]
    return merges


TRAIN = [(_doc(41, 2500), 300, GPT2_PATTERN), (_doc(42, 4000), 340, GPT2_PATTERN),
         ("ab ba " * 7 + "abc cab bca " * 3 + "ééé naïve 日本語 日本 🙂🙂", 290, GPT2_PATTERN)]
TRAIN_PATTERNS = [(_doc(43, 2500), 320, r"\S+|\s+"), (_doc(44, 2000), 300, r"\p{L}+|\p{N}|\s+|[^\s\p{L}\p{N}]+")]
TRAIN_ENDS = [("aaaa bb", 400, GPT2_PATTERN), ("", 300, GPT2_PATTERN), (_doc(45, 500), 256, GPT2_PATTERN),
              ("hello hello", 258, GPT2_PATTERN)]


def _lib_train(text, vocab_size, pattern):
    return BPETokenizer.train(text, vocab_size, pattern=pattern).merges


def _train_mistakes(text, vocab_size, pattern):
    return [
        ("ties are broken another way: among equally frequent pairs take the smallest pair (a, b), as the library",
         _naive_train(text, vocab_size, pattern, tie=lambda p: p)),
        ("merges cross the pieces of the pre-tokenizer: cut the text with regex.findall(pattern, text) first and "
         "count pairs inside each piece", _lib_train(text, vocab_size, r"[\s\S]+") if text else []),
        ("each distinct piece is counted once: a piece that occurs n times adds n to each of its pairs",
         _naive_train(text, vocab_size, pattern, weighted=False)),
        ("the pattern argument is ignored: cut the text with regex.findall(pattern, text)",
         _lib_train(text, vocab_size, GPT2_PATTERN)),
        ("one merge too many: the vocabulary has vocab_size ids, 256 bytes and vocab_size - 256 merges",
         _naive_train(text, vocab_size, pattern, n_extra=1)),
        ("one merge too few: the vocabulary has vocab_size ids, 256 bytes and vocab_size - 256 merges",
         _naive_train(text, vocab_size, pattern, n_extra=-1)),
    ]


def _judge_train(cases):
    def judge(rs):
        gots, wants = [], []
        for (text, vs, pattern), r in zip(cases, rs):
            what = f"train_bpe(<{len(text)} characters>, {vs}" + ("" if pattern == GPT2_PATTERN else f", {pattern!r}") + ")"
            got = value(r, what)
            if not isinstance(got, (list, tuple)) or not all(isinstance(m, (list, tuple)) and len(m) == 2 for m in got):
                raise Fail(f"{what} returned {type(got).__name__}, expected a list of (a, b) pairs")
            gots.append([tuple(int(x) for x in m) for m in got])
            wants.append(_lib_train(text, vs, pattern))
        if gots == wants:
            return
        k = next(i for i, (g, w) in enumerate(zip(gots, wants)) if g != w)
        text, vs, pattern = cases[k]
        for j, (msg, _) in enumerate(_train_mistakes(*cases[k])):
            wrongs = [_train_mistakes(*c)[j][1] for c in cases]
            if any(w != x for w, x in zip(wants, wrongs)) and all(g == x for g, x in zip(gots, wrongs)):
                raise Fail(f"train_bpe on {len(text)} characters, vocab_size {vs}: {msg}")
        g, w = gots[k], wants[k]
        i = next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
        if i == min(len(g), len(w)):
            raise Fail(f"train_bpe on {len(text)} characters, vocab_size {vs}: {len(g)} merges, expected {len(w)} "
                       "(vocab_size - 256, fewer only when no pair is left)")
        raise Fail(f"train_bpe on {len(text)} characters, vocab_size {vs}: merge {i} (id {256 + i}) is {g[i]}, "
                   f"expected {w[i]} (the first {i} merges agree)")
    return judge


ex = Exercise("train_bpe", "Train byte-level BPE")
ex.test("the library's merges on hidden texts (prose, Unicode, ties) at several vocabulary sizes", 2,
        [call(*c) for c in TRAIN], _judge_train(TRAIN))
ex.test("other pre-tokenizer patterns", 1, [call(*c) for c in TRAIN_PATTERNS], _judge_train(TRAIN_PATTERNS))
ex.test("stops when no pair is left; empty text; vocab_size 256", 1, [call(*c) for c in TRAIN_ENDS],
        _judge_train(TRAIN_ENDS))
EXERCISES.append(ex)


# --- encoding and decoding --------------------------------------------------------------------------
def _tok(merges, pattern=GPT2_PATTERN):
    vocab = [bytes([b]) for b in range(256)]
    for a, b in merges:
        vocab.append(vocab[a] + vocab[b])
    return BPETokenizer(vocab, merges, pattern=pattern)


ENC_MERGES = _lib_train(_doc(51, 5000), 400, GPT2_PATTERN)
ENC_MERGES_P = _lib_train(_doc(52, 3000), 330, r"\S+|\s+")
ENC = [(_doc(53, 600), ENC_MERGES, GPT2_PATTERN), ("Héllo wörld! 日本語 🙂 can't  42\n\tx", ENC_MERGES, GPT2_PATTERN),
       ("", ENC_MERGES, GPT2_PATTERN), (_doc(54, 300), ENC_MERGES_P, r"\S+|\s+")]


def _encode_mistakes(text, merges, pattern):
    ranks = {p: r for r, p in enumerate(merges)}

    def greedy(order):
        out = []
        for piece in regex.findall(pattern, text):
            ids = list(piece.encode("utf-8"))
            while len(ids) > 1:
                cands = [p for p in zip(ids, ids[1:]) if p in ranks]
                if not cands:
                    break
                p = order(cands, ids)
                ids = ref_merge(ids, p, 256 + ranks[p])
            out += ids
        return out

    return [
        ("merges cross the pieces of the pre-tokenizer: encode each piece of regex.findall(pattern, text) on its own",
         _tok(merges, r"[\s\S]+").encode_ordinary(text)),
        ("the merge learned last is applied first: take the pair of LOWEST rank (learned first)",
         greedy(lambda c, ids: max(c, key=ranks.get))),
        ("the leftmost mergeable pair is merged first: take the pair of lowest rank, wherever it is",
         greedy(lambda c, ids: c[0])),
        ("the new id is the merge's rank: merge r makes id 256 + r",
         [i - 256 if i >= 256 else i for i in _tok(merges, pattern).encode_ordinary(text)]),
    ]


def _judge_encode(rs):
    gots, wants = [], []
    for (text, merges, pattern), r in zip(ENC, rs):
        gots.append(_as_ids(r, f"bpe_encode(<{len(text)} characters>, <{len(merges)} merges>)"))
        wants.append(_tok(merges, pattern).encode_ordinary(text))
    if gots == wants:
        return
    k = next(i for i, (g, w) in enumerate(zip(gots, wants)) if g != w)
    what = f"bpe_encode of {ENC[k][0][:30]!r}..."
    for j, (msg, _) in enumerate(_encode_mistakes(*ENC[k])):
        wrongs = [_encode_mistakes(*c)[j][1] for c in ENC]
        if any(w != x for w, x in zip(wants, wrongs)) and all(g == x for g, x in zip(gots, wrongs)):
            raise Fail(f"{what}: {msg}")
    g, w = gots[k], wants[k]
    i = next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
    raise Fail(f"{what}: {len(g)} ids, expected {len(w)}; they first differ at position {i} "
               f"(got {g[i:i + 3]}, expected {w[i:i + 3]})")


ex = Exercise("bpe_encode", "Encode text with BPE merges")
ex.test("the library's ids for hidden texts, Unicode, empty text and another pattern", 3,
        [call(*c) for c in ENC], _judge_encode)
EXERCISES.append(ex)

DEC_TEXTS = [_doc(61, 400), "naïve café 日本語 🙂 x", "", " \n\t  "]
DEC = [(_tok(ENC_MERGES).encode_ordinary(t), ENC_MERGES) for t in DEC_TEXTS]
_emoji = _tok(ENC_MERGES).encode_ordinary("a🙂b🙂")
CUT = [(list("日本".encode())[:4], ENC_MERGES), (list("🙂🙂".encode())[1:7], ENC_MERGES), (_emoji[:-1], ENC_MERGES)]


def _decode_mistakes(ids, merges):
    vocab = _tok(merges).vocab
    return [
        ("each token is decoded on its own: join the bytes of all tokens first, then decode once",
         "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)),
        ("invalid bytes are dropped: decode with errors='replace', so that an incomplete character becomes U+FFFD",
         b"".join(vocab[i] for i in ids).decode("utf-8", errors="ignore")),
        ("the bytes are decoded as Latin-1: decode them as UTF-8",
         b"".join(vocab[i] for i in ids).decode("latin-1")),
    ]


def _judge_decode(cases):
    def judge(rs):
        gots, wants = [], []
        for (ids, merges), r in zip(cases, rs):
            what = f"bpe_decode({ids[:6]}{'...' if len(ids) > 6 else ''}, <{len(merges)} merges>)"
            if isinstance(r, CallError) and r.type == "UnicodeDecodeError":
                raise Fail(f"{what} raised UnicodeDecodeError: a token can end inside a character; decode with "
                           "errors='replace', so that an incomplete character becomes U+FFFD")
            got = value(r, what)
            if not isinstance(got, str):
                raise Fail(f"{what} returned {type(got).__name__}, expected a str")
            gots.append(got)
            wants.append(_tok(merges).decode(ids))
        if gots == wants:
            return
        k = next(i for i, (g, w) in enumerate(zip(gots, wants)) if g != w)
        for j, (msg, _) in enumerate(_decode_mistakes(*cases[k])):
            wrongs = [_decode_mistakes(*c)[j][1] for c in cases]
            if any(w != x for w, x in zip(wants, wrongs)) and all(g == x for g, x in zip(gots, wrongs)):
                raise Fail(f"bpe_decode: {msg}")
        raise Fail(f"bpe_decode({cases[k][0][:8]}...) = {gots[k][:40]!r}, expected {wants[k][:40]!r}")
    return judge


ex = Exercise("bpe_decode", "Decode BPE ids")
ex.test("the text of the library's ids: prose, Unicode, empty, whitespace", 1.5, [call(*c) for c in DEC],
        _judge_decode(DEC))
ex.test("ids that cut a character in the middle give U+FFFD", 0.5, [call(*c) for c in CUT], _judge_decode(CUT))
EXERCISES.append(ex)


# --- end to end: the library's tokenizers on the learner's merge step ---------------------------------
SMOL = load_tokenizer()
E2E_TEXT = "Byte pair encoding was invented for compression in 1994; GPT-2 runs it on bytes 🙂."
E2E_IDS = SMOL.encode(E2E_TEXT)
E2E_TRAIN = (_doc(71, 700), 290)
E2E_MERGES = _lib_train(*E2E_TRAIN, GPT2_PATTERN)


def _run_library_on_merge(learner):
    from tinyllm.errors import TokenizerError

    with plug.use(bpe_merge=learner.bpe_merge):
        try:
            ids = SMOL.encode(E2E_TEXT)
            merges = BPETokenizer.train(*E2E_TRAIN).merges
        except TokenizerError as e:
            raise Fail(f"the library's tokenizer stopped on your bpe_merge: {e}") from None
    if ids != E2E_IDS:
        i = next((i for i, (a, b) in enumerate(zip(ids, E2E_IDS)) if a != b), min(len(ids), len(E2E_IDS)))
        raise Fail(f"SmolLM2's tokenizer on your bpe_merge gives {len(ids)} ids, expected {len(E2E_IDS)}; they first "
                   f"differ at position {i}")
    if merges != E2E_MERGES:
        raise Fail("the library's trainer on your bpe_merge learns other merges than on its own")


ex = EXERCISES[0]
ex.end_to_end("SmolLM2's tokenizer and the library's trainer run on your bpe_merge", 1, _run_library_on_merge)
