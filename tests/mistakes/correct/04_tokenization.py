import heapq
from collections import Counter, defaultdict

import regex

PATTERN_C = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def bpe_merge__for(ids, pair, new_id):
    out, skip = [], False
    for i, t in enumerate(ids):
        if skip:
            skip = False
            continue
        if i + 1 < len(ids) and (t, ids[i + 1]) == tuple(pair):
            out.append(new_id)
            skip = True
        else:
            out.append(t)
    return out


def train_bpe__sorted_ties(text, vocab_size, pattern=PATTERN_C):
    words = Counter(regex.findall(pattern, text))
    seqs = {w: list(w.encode()) for w in words}
    merges = []
    for new in range(256, vocab_size):
        counts = defaultdict(int)
        for w, ids in seqs.items():
            for p in zip(ids, ids[1:]):
                counts[p] += words[w]
        if not counts:
            break
        top = max(counts.values())
        best = min(p for p, c in counts.items() if c == top)
        merges.append(best)
        seqs = {w: bpe_merge__for(ids, best, new) for w, ids in seqs.items()}
    return merges


def bpe_encode__sequential(text, merges, pattern=PATTERN_C):
    out = []
    for piece in regex.findall(pattern, text):
        ids = list(piece.encode("utf-8"))
        for r, p in enumerate(merges):                   # rank order, each merge once: the same result
            ids = bpe_merge__for(ids, tuple(p), 256 + r)
        out.extend(ids)
    return out


def bpe_decode__bytearray(ids, merges):
    table = {b: bytes([b]) for b in range(256)}
    for r, (a, b) in enumerate(merges):
        table[256 + r] = table[a] + table[b]
    buf = bytearray()
    for i in ids:
        buf += table[i]
    return buf.decode("utf-8", "replace")
