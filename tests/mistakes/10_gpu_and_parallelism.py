import numpy as np


def _edges(R, N):
    size, extra = divmod(N, R)
    return [c * size + min(c, extra) for c in range(R + 1)]


def _ring_mistake(buffers, phases=("rs", "ag"), bytes_of=None):
    buf = np.array(buffers, copy=True)
    R, N = buf.shape
    e = _edges(R, N)
    sent = np.zeros(R, dtype=np.int64)
    for phase in phases:
        for s in range(R - 1):
            chunks = [(r - s) % R if phase == "rs" else (r + 1 - s) % R for r in range(R)]
            msgs = [buf[r, e[c]:e[c + 1]].copy() for r, c in enumerate(chunks)]
            for r, (c, m) in enumerate(zip(chunks, msgs)):
                if phase == "rs":
                    buf[(r + 1) % R, e[c]:e[c + 1]] += m
                else:
                    buf[(r + 1) % R, e[c]:e[c + 1]] = m
                sent[r] += m.nbytes if bytes_of is None else bytes_of(m, buf)
    return buf, sent


def ring_allreduce__no_all_gather(buffers):
    """the all-gather phase"""
    buf, sent = _ring_mistake(buffers, phases=("rs",))
    return buf, 2 * (len(buffers) - 1), 2 * sent


def ring_allreduce__one_phase_steps(buffers):
    """that counts one phase only"""
    buf, sent = _ring_mistake(buffers)
    return buf, len(buffers) - 1, sent


def ring_allreduce__whole_buffer_bytes(buffers):
    """every step sends the whole buffer"""
    buf, sent = _ring_mistake(buffers, bytes_of=lambda m, b: b[0].nbytes)
    return buf, 2 * (len(buffers) - 1), sent


def ring_allreduce__formula_bytes(buffers):
    """with N not divisible by R the chunks differ in size"""
    buf, _ = _ring_mistake(buffers)
    R, N = buf.shape
    return buf, 2 * (R - 1), np.full(R, 2 * (R - 1) * (N // R) * buf.itemsize, dtype=np.int64)


def ring_allreduce__received(buffers):
    """those are the bytes each rank RECEIVED"""
    buf, sent = _ring_mistake(buffers)
    return buf, 2 * (len(buffers) - 1), np.roll(sent, 1)


def ring_allreduce__float64(buffers):
    """has dtype float64, expected"""
    buf, sent = _ring_mistake(np.asarray(buffers, dtype=np.float64))         # the sums in float64
    return buf, 2 * (len(buffers) - 1), sent * buffers.itemsize // 8


def ring_allreduce__in_place(buffers):
    """the call changed its input buffers"""
    buf, sent = _ring_mistake(buffers)
    buffers[...] = buf
    return buffers, 2 * (len(buffers) - 1), sent


def ring_allreduce__sum_shortcut_total_bytes(buffers):
    """is one number"""
    R, N = buffers.shape
    return np.broadcast_to(buffers.sum(axis=0), buffers.shape).copy(), 2 * (R - 1), 2 * (R - 1) * N * buffers.itemsize
