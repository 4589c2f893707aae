# Right answers written another way: they must keep full marks.
import numpy as np


def ring_allreduce__array_split(buffers):
    ranks = [np.array_split(b.copy(), len(buffers)) for b in buffers]          # ranks[r][c]: rank r's chunk c
    R = len(ranks)
    sent = [0] * R
    for s in range(R - 1):
        out = [(r, (r - s) % R, ranks[r][(r - s) % R].copy()) for r in range(R)]
        for r, c, m in out:
            ranks[(r + 1) % R][c] = ranks[(r + 1) % R][c] + m
            sent[r] += m.nbytes
    for s in range(R - 1):
        out = [(r, (r + 1 - s) % R, ranks[r][(r + 1 - s) % R].copy()) for r in range(R)]
        for r, c, m in out:
            ranks[(r + 1) % R][c] = m
            sent[r] += m.nbytes
    result = np.stack([np.concatenate(chunks) for chunks in ranks]).astype(buffers.dtype)
    return result, 2 * R - 2, np.array(sent, dtype=np.int64)
