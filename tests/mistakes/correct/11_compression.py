import numpy as np


def quantize_q4_1__loop_over_blocks(x):
    rows = x.reshape(-1, x.shape[-1]).astype(np.float32)
    out = []
    for row in rows:
        raw = bytearray()
        for b in row.reshape(-1, 32):
            lo, hi = b.min(), b.max()
            d = (hi - lo) / np.float32(15)
            inv = np.float32(1) / d if d != 0 else np.float32(0)
            q = np.minimum(15, ((b - lo) * inv + np.float32(0.5)).astype(np.int32)).astype(np.uint8)
            raw += np.float16(d).tobytes() + np.float16(lo).tobytes() + (q[:16] | (q[16:] << 4)).tobytes()
        out.append(np.frombuffer(bytes(raw), dtype=np.uint8))
    return np.stack(out).reshape(*x.shape[:-1], -1)


def gptq_layer__lazy_blocks(w, h, bits=4, group_size=128, symmetric=True, damp=0.01):
    """Blocks of columns with one matrix product for the rest, as the paper's code does."""
    n_out, n_in = w.shape
    W = w.astype(np.float32).copy()
    U = np.linalg.cholesky(np.linalg.inv(h + damp * np.diag(h).mean() * np.eye(n_in))).T.astype(np.float32)
    qmin, qmax = (-2 ** (bits - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    Q = np.empty_like(W)
    for start in range(0, n_in, group_size):
        end = start + group_size
        g = W[:, start:end]
        if symmetric:
            s, z = np.abs(g).max(axis=1) / qmax, np.zeros(n_out, np.float32)
        else:
            lo, hi = np.minimum(g.min(axis=1), 0), np.maximum(g.max(axis=1), 0)
            s = (hi - lo) / qmax
            z = np.clip(np.rint(-lo / np.where(s > 0, s, 1)), 0, qmax)
        inv = np.where(s > 0, 1 / np.where(s > 0, s, 1), 0)
        E = np.zeros((n_out, end - start), np.float32)
        for i in range(end - start):
            j = start + i
            Q[:, j] = (np.clip(np.rint(W[:, j] * inv) + z, qmin, qmax) - z) * s
            E[:, i] = (W[:, j] - Q[:, j]) / U[j, j]
            W[:, j + 1:end] -= np.outer(E[:, i], U[j, j + 1:end])
        W[:, end:] -= E @ U[start:end, end:]
    return Q


def prune_2_4__argpartition(w, axis=0):
    g = np.swapaxes(w, axis, -1)
    groups = g.reshape(-1, 4)
    keep = np.argpartition(-np.abs(groups), 1, axis=1)[:, :2]
    m = np.zeros(groups.shape, bool)
    np.put_along_axis(m, keep, True, axis=1)
    mask = np.swapaxes(m.reshape(g.shape), axis, -1)
    return np.where(mask, w, 0).astype(w.dtype), mask


def distillation_loss__probabilities(student_logits, teacher_logits, targets=None, *, temperature=2.0, alpha=0.5,
                                     ignore_index=-100):
    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    V = student_logits.shape[-1]
    s = student_logits.reshape(-1, V).astype(np.float64)
    t = teacher_logits.reshape(-1, V).astype(np.float64)
    keep = np.ones(len(s), bool) if targets is None else targets.reshape(-1) != ignore_index
    n = max(keep.sum(), 1)
    q, p = softmax(s / temperature), softmax(t / temperature)
    soft = (p * (np.log(p) - np.log(q))).sum(-1)[keep].sum() / n
    grad = alpha * temperature * (q - p)
    loss = alpha * temperature ** 2 * soft
    if targets is not None:
        y = np.where(keep, targets.reshape(-1), 0)
        ps = softmax(s)
        loss += (1 - alpha) * -np.log(ps[np.arange(len(y)), y])[keep].sum() / n
        ps[np.arange(len(y)), y] -= 1
        grad = grad + (1 - alpha) * ps
    grad = grad * keep[:, None] / n
    return float(loss), grad.reshape(student_logits.shape).astype(student_logits.dtype)


def smooth_scales__loop_float64(act_absmax, w, alpha=0.5):
    s = np.ones(len(act_absmax), dtype=np.float64)
    for j in range(len(act_absmax)):
        a, m = float(act_absmax[j]), float(np.max(np.abs(w[j])))
        if a > 0 and m > 0:
            s[j] = a ** alpha / m ** (1 - alpha)
    return s.astype(np.float32)

def smooth_scales__log_space(act_absmax, w, alpha=0.5):
    wmax = np.linalg.norm(w, ord=np.inf, axis=1)
    ok = (act_absmax > 0) & (wmax > 0)
    with np.errstate(divide="ignore"):
        log_s = alpha * np.log(act_absmax) - (1 - alpha) * np.log(wmax)
    return np.where(ok, np.exp(np.where(ok, log_s, 0.0)), 1.0)
