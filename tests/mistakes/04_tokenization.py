from collections import Counter

import regex

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def bpe_merge__misses_end(ids, pair, new_id):
    """the pair at the very end of the list was not merged"""
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == tuple(pair) and i + 2 < len(ids):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out + ids[i:]


def bpe_merge__in_place(ids, pair, new_id):
    """the call changed its input ids"""
    i = 0
    while i < len(ids) - 1:
        if ids[i] == pair[0] and ids[i + 1] == pair[1]:
            ids[i:i + 2] = [new_id]
        i += 1
    return ids


def bpe_merge__keeps_length(ids, pair, new_id):
    """must become ONE token"""
    out = list(ids)
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            out[i] = new_id
    return out


def bpe_merge__reversed_pair(ids, pair, new_id):
    """the pair is matched reversed"""
    return _merge(ids, tuple(pair)[::-1], new_id)


def _train(text, vocab_size, pattern=GPT2_PATTERN, weighted=True, extra=0, tie=lambda p: (-p[0], -p[1])):
    pieces = [(list(w.encode("utf-8")), n if weighted else 1) for w, n in Counter(regex.findall(pattern, text)).items()]
    merges = []
    while 256 + len(merges) < vocab_size + extra:
        counts = Counter()
        for ids, n in pieces:
            for p in zip(ids, ids[1:]):
                counts[p] += n
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], *tie(p)))
        merges.append(best)
        pieces = [(_merge(ids, best, 255 + len(merges)), n) for ids, n in pieces]
    return merges


def train_bpe__distinct_pieces_once(text, vocab_size, pattern=GPT2_PATTERN):
    """each distinct piece is counted once"""
    return _train(text, vocab_size, pattern, weighted=False)


def train_bpe__one_merge_too_many(text, vocab_size, pattern=GPT2_PATTERN):
    """one merge too many"""
    return _train(text, vocab_size, pattern, extra=1)


def train_bpe__first_seen_wins_ties(text, vocab_size, pattern=GPT2_PATTERN):
    """None"""
    pieces = [(list(w.encode("utf-8")), n) for w, n in Counter(regex.findall(pattern, text)).items()]
    merges = []
    while 256 + len(merges) < vocab_size:
        counts = Counter()
        for ids, n in pieces:
            for p in zip(ids, ids[1:]):
                counts[p] += n
        if not counts:
            break
        best = counts.most_common(1)[0][0]          # ties: the pair seen first
        merges.append(best)
        pieces = [(_merge(ids, best, 255 + len(merges)), n) for ids, n in pieces]
    return merges


def train_bpe__ignores_pattern(text, vocab_size, pattern=GPT2_PATTERN):
    """the pattern argument is ignored"""
    return _train(text, vocab_size, GPT2_PATTERN)


def bpe_encode__no_pre_tokenization(text, merges, pattern=GPT2_PATTERN):
    """merges cross the pieces of the pre-tokenizer"""
    rank = {tuple(p): r for r, p in enumerate(merges)}
    ids = list(text.encode("utf-8"))
    while len(ids) > 1:
        p = min(zip(ids, ids[1:]), key=lambda q: rank.get(q, float("inf")))
        if p not in rank:
            break
        ids = _merge(ids, p, 256 + rank[p])
    return ids


def bpe_encode__rank_as_id(text, merges, pattern=GPT2_PATTERN):
    """the new id is the merge's rank"""
    rank = {tuple(p): r for r, p in enumerate(merges)}
    out = []
    for piece in regex.findall(pattern, text):
        ids = list(piece.encode("utf-8"))
        while len(ids) > 1:
            p = min(zip(ids, ids[1:]), key=lambda q: rank.get(q, float("inf")))
            if p not in rank:
                break
            ids = _merge(ids, p, 256 + rank[p])
        out += [i - 256 if i >= 256 else i for i in ids]
    return out


def bpe_encode__one_pass(text, merges, pattern=GPT2_PATTERN):
    """None"""
    out = []
    for piece in regex.findall(pattern, text):
        ids = list(piece.encode("utf-8"))
        for r, p in enumerate(merges[:len(merges) // 2]):          # stops half way through the merges
            ids = _merge(ids, p, 256 + r)
        out += ids
    return out


def _vocab(merges):
    vocab = [bytes([b]) for b in range(256)]
    for a, b in merges:
        vocab.append(vocab[a] + vocab[b])
    return vocab


def bpe_decode__latin1(ids, merges):
    """decoded as Latin-1"""
    return b"".join(_vocab(merges)[i] for i in ids).decode("latin-1")


def bpe_decode__strict(ids, merges):
    """decode with errors='replace'"""
    return b"".join(_vocab(merges)[i] for i in ids).decode("utf-8")


def bpe_decode__strips(ids, merges):
    """None"""
    return b"".join(_vocab(merges)[i] for i in ids).decode("utf-8", errors="replace").strip()
