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


def bpe_merge__overlapping(ids, pair, new_id):
    out = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
        elif i > 0 and (ids[i - 1], ids[i]) == tuple(pair):
            continue
        else:
            out.append(ids[i])
    return out


def bpe_merge__first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)


def _train(text, vocab_size, pattern, tie, pieces_of=lambda t, p: regex.findall(p, t)):
    pieces = [(list(w.encode("utf-8")), n) for w, n in Counter(pieces_of(text, pattern)).items()]
    merges = []
    while 256 + len(merges) < vocab_size:
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


def train_bpe__largest_pair_wins_ties(text, vocab_size, pattern=GPT2_PATTERN):
    return _train(text, vocab_size, pattern, tie=lambda p: p)


def train_bpe__no_pre_tokenization(text, vocab_size, pattern=GPT2_PATTERN):
    return _train(text, vocab_size, pattern, tie=lambda p: (-p[0], -p[1]), pieces_of=lambda t, p: [t] if t else [])


def _encode(text, merges, pattern, pick):
    rank = {tuple(p): r for r, p in enumerate(merges)}
    out = []
    for piece in regex.findall(pattern, text):
        ids = list(piece.encode("utf-8"))
        while True:
            cands = [p for p in zip(ids, ids[1:]) if p in rank]
            if not cands:
                break
            p = pick(cands, rank)
            ids = _merge(ids, p, 256 + rank[p])
        out += ids
    return out


def bpe_encode__last_learned_first(text, merges, pattern=GPT2_PATTERN):
    return _encode(text, merges, pattern, lambda c, rank: max(c, key=rank.get))


def bpe_encode__leftmost_first(text, merges, pattern=GPT2_PATTERN):
    return _encode(text, merges, pattern, lambda c, rank: c[0])


def _vocab(merges):
    vocab = [bytes([b]) for b in range(256)]
    for a, b in merges:
        vocab.append(vocab[a] + vocab[b])
    return vocab


def bpe_decode__token_by_token(ids, merges):
    vocab = _vocab(merges)
    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)


def bpe_decode__ignores_errors(ids, merges):
    vocab = _vocab(merges)
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="ignore")
