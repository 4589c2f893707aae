import numpy as np


def _ring(buffers, *, add=True, gather=True, count=lambda msg: msg.nbytes):
    buf = np.array(buffers, copy=True)
    R, N = buf.shape
    parts = np.array_split(np.arange(N), R)
    sent = np.zeros(R, dtype=np.int64)
    for phase in ("reduce", "gather") if gather else ("reduce",):
        for s in range(R - 1):
            chunks = [(r - s) % R if phase == "reduce" else (r + 1 - s) % R for r in range(R)]
            msgs = [buf[r, parts[c]].copy() for r, c in enumerate(chunks)]
            for r, (c, m) in enumerate(zip(chunks, msgs)):
                if phase == "reduce" and add:
                    buf[(r + 1) % R, parts[c]] += m
                else:
                    buf[(r + 1) % R, parts[c]] = m
                sent[r] += count(m)
    return buf, 2 * (R - 1), sent


def ring_allreduce__mean(buffers):
    out, steps, sent = _ring(buffers)
    return (out / len(buffers)).astype(out.dtype), steps, sent


def ring_allreduce__numbers_not_bytes(buffers):
    return _ring(buffers, count=lambda m: m.size)
