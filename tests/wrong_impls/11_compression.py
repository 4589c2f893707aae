import numpy as np

_Q41 = np.dtype([("d", "<f2"), ("m", "<f2"), ("q", "u1", (16,))])


def _pack_q4_1(d, lo, q, shape):
    rec = np.empty(len(q), dtype=_Q41)
    rec["d"], rec["m"], rec["q"] = d[:, 0], lo[:, 0], q
    return rec.view(np.uint8).reshape(*shape[:-1], -1)


def quantize_q4_1__interleaved(x):
    blocks = x.astype(np.float32).reshape(-1, 32)
    lo = blocks.min(axis=1, keepdims=True)
    d = (blocks.max(axis=1, keepdims=True) - lo) / np.float32(15)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = np.clip(np.trunc((blocks - lo) * inv + np.float32(0.5)), 0, 15).astype(np.uint8)
    return _pack_q4_1(d, lo, q[:, 0::2] | (q[:, 1::2] << 4), x.shape)


def quantize_q4_1__np_round(x):
    blocks = x.astype(np.float32).reshape(-1, 32)
    lo = blocks.min(axis=1, keepdims=True)
    d = (blocks.max(axis=1, keepdims=True) - lo) / np.float32(15)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = np.clip(np.round((blocks - lo) * inv), 0, 15).astype(np.uint8)
    return _pack_q4_1(d, lo, q[:, :16] | (q[:, 16:] << 4), x.shape)


def _grid(g, bits, symmetric):
    if symmetric:
        hi = 2 ** (bits - 1) - 1
        return np.abs(g).max(axis=1) / hi, np.zeros(len(g)), -hi - 1, hi
    hi = 2 ** bits - 1
    lo, top = np.minimum(g.min(axis=1), 0), np.maximum(g.max(axis=1), 0)
    s = (top - lo) / hi
    return s, np.clip(np.rint(-lo / np.where(s > 0, s, 1)), 0, hi), 0, hi


def gptq_layer__no_error_feedback(w, h, bits=4, group_size=128, symmetric=True, damp=0.01):
    W = w.astype(np.float64)
    Q = np.zeros_like(W)
    for j in range(0, W.shape[1], group_size):
        g = W[:, j:j + group_size]
        s, z, lo, hi = _grid(g, bits, symmetric)
        inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)[:, None]
        Q[:, j:j + group_size] = (np.clip(np.rint(g * inv) + z[:, None], lo, hi) - z[:, None]) * s[:, None]
    return Q.astype(np.float32)


def gptq_layer__inverse_rows(w, h, bits=4, group_size=128, symmetric=True, damp=0.01):
    W = w.astype(np.float64).copy()
    Hinv = np.linalg.inv(h + damp * np.mean(np.diag(h)) * np.eye(len(h)))
    Q = np.zeros_like(W)
    for j in range(W.shape[1]):
        if j % group_size == 0:
            s, z, lo, hi = _grid(W[:, j:j + group_size], bits, symmetric)
            inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
        Q[:, j] = (np.clip(np.rint(W[:, j] * inv) + z, lo, hi) - z) * s
        e = (W[:, j] - Q[:, j]) / Hinv[j, j]
        W[:, j + 1:] -= np.outer(e, Hinv[j, j + 1:])
    return Q.astype(np.float32)


def prune_2_4__signed(w, axis=0):
    moved = np.moveaxis(w, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], -1, 4)
    mask = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(mask, np.argsort(groups, axis=-1)[..., :2], False, axis=-1)
    mask = np.moveaxis(mask.reshape(moved.shape), -1, axis)
    return w * mask, mask


def prune_2_4__last_axis_always(w, axis=0):
    groups = w.reshape(*w.shape[:-1], -1, 4)
    mask = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(mask, np.argsort(np.abs(groups), axis=-1)[..., :2], False, axis=-1)
    mask = mask.reshape(w.shape)
    return w * mask, mask


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _distill(zs, zt, targets, T, alpha, ignore_index, *, t_power=2, grad_t_power=1, reverse=False):
    V = zs.shape[-1]
    s, t = zs.reshape(-1, V).astype(np.float64), zt.reshape(-1, V).astype(np.float64)
    y = np.zeros(len(s), int) if targets is None else np.asarray(targets).reshape(-1)
    valid = np.ones(len(s), bool) if targets is None else y != ignore_index
    wt = valid / max(valid.sum(), 1)
    lq, lp = _log_softmax(s / T), _log_softmax(t / T)
    kl = (np.exp(lq) * (lq - lp)).sum(-1) if reverse else (np.exp(lp) * (lp - lq)).sum(-1)
    loss = alpha * T ** t_power * float((wt * kl).sum())
    grad = alpha * T ** grad_t_power * (np.exp(lq) - np.exp(lp)) * wt[:, None]
    if targets is not None:
        y = np.where(valid, y, 0)
        ls = _log_softmax(s)
        loss += (1 - alpha) * float(-(wt * ls[np.arange(len(y)), y]).sum())
        grad += (1 - alpha) * (np.exp(ls) - np.eye(V)[y]) * wt[:, None]
    return loss, grad.reshape(zs.shape).astype(zs.dtype)


def distillation_loss__no_t_squared(student_logits, teacher_logits, targets=None, *, temperature=2.0, alpha=0.5,
                                    ignore_index=-100):
    return _distill(student_logits, teacher_logits, targets, temperature, alpha, ignore_index, t_power=0)


def distillation_loss__reversed_kl(student_logits, teacher_logits, targets=None, *, temperature=2.0, alpha=0.5,
                                   ignore_index=-100):
    return _distill(student_logits, teacher_logits, targets, temperature, alpha, ignore_index, reverse=True)


def distillation_loss__gradient_without_t(student_logits, teacher_logits, targets=None, *, temperature=2.0,
                                          alpha=0.5, ignore_index=-100):
    return _distill(student_logits, teacher_logits, targets, temperature, alpha, ignore_index, grad_t_power=0)


def smooth_scales__exponents_swapped(act_absmax, w, alpha=0.5):
    return act_absmax ** (1 - alpha) / np.abs(w).max(axis=1) ** alpha


def smooth_scales__weight_max_of_whole_matrix(act_absmax, w, alpha=0.5):
    return act_absmax ** alpha / np.abs(w).max() ** (1 - alpha)


def smooth_scales__zero_channels_unguarded(act_absmax, w, alpha=0.5):
    return act_absmax ** alpha / np.abs(w).max(axis=1) ** (1 - alpha)
