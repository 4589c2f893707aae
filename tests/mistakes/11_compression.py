import numpy as np


def quantize_q8_0__divide_128(w):
    """the scale divides by 128"""
    blocks = w.astype(np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1) / np.float32(128.0)
    inv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d > 0)
    return d.astype(np.float16), np.round(blocks * inv[:, None]).astype(np.int8)


def quantize_q8_0__truncate(w):
    """q is truncated towards zero"""
    blocks = w.astype(np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1) / np.float32(127.0)
    inv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d > 0)
    return d.astype(np.float16), (blocks * inv[:, None]).astype(np.int8)


def quantize_q8_0__global_scale(w):
    """one scale serves the whole tensor"""
    blocks = w.astype(np.float32).reshape(-1, 32)
    d = np.full(len(blocks), np.abs(blocks).max() / np.float32(127.0), dtype=np.float32)
    inv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d > 0)
    return d.astype(np.float16), np.round(blocks * inv[:, None]).astype(np.int8)


def quantize_q8_0__flat_q(w):
    """has shape (128,), expected (4, 32)"""
    blocks = w.astype(np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1) / np.float32(127.0)
    inv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d > 0)
    return d.astype(np.float16), np.round(blocks * inv[:, None]).astype(np.int8).reshape(-1)


def quantize_q8_0__multiply(w):
    """q multiplies by d"""
    blocks = w.astype(np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1) / np.float32(127.0)
    return d.astype(np.float16), np.round(blocks * d[:, None]).astype(np.int8)


def dequantize_q8_0__unsigned(scales, q):
    """q is read as unsigned"""
    return (scales.astype(np.float32)[:, None] * q.view(np.uint8).astype(np.float32)).reshape(-1)


def dequantize_q8_0__float16(scales, q):
    """expected float32"""
    return (scales[:, None] * q.astype(np.float16)).reshape(-1)


def dequantize_q8_0__no_scale(scales, q):
    """the scale is missing"""
    return q.astype(np.float32).reshape(-1)


def dequantize_q8_0__divides(scales, q):
    """each block is divided by its scale"""
    d = scales.astype(np.float32)[:, None]
    with np.errstate(all="ignore"):
        return np.nan_to_num(q.astype(np.float32) / d).reshape(-1)


def prune_2_4__largest(w):
    """the 2 largest |w| of each group were zeroed"""
    groups = w.reshape(-1, 4).copy()
    np.put_along_axis(groups, np.argsort(np.abs(groups), axis=1)[:, 2:], 0, axis=1)
    return groups.reshape(w.shape)


def prune_2_4__three(w):
    """3 of every 4 weights were zeroed"""
    groups = w.reshape(-1, 4).copy()
    np.put_along_axis(groups, np.argsort(np.abs(groups), axis=1)[:, :3], 0, axis=1)
    return groups.reshape(w.shape)


def prune_2_4__global(w):
    """a global threshold"""
    return np.where(np.abs(w) >= np.median(np.abs(w)), w, 0).astype(w.dtype)


def prune_2_4__columns(w):
    """keeps exactly 2 of every 4"""
    t = np.swapaxes(w, 0, -1)
    groups = t.reshape(-1, 4).copy()
    np.put_along_axis(groups, np.argsort(np.abs(groups), axis=1)[:, :2], 0, axis=1)
    return np.swapaxes(groups.reshape(t.shape), 0, -1)


def prune_2_4__mask(w):
    """returned the mask"""
    groups = np.abs(w.reshape(-1, 4))
    keep = np.zeros(groups.shape, dtype=np.float32)
    np.put_along_axis(keep, np.argsort(groups, axis=1)[:, 2:], 1.0, axis=1)
    return keep.reshape(w.shape)


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def distillation_loss__ce_at_T(student_logits, teacher_logits, labels, T=2.0, alpha=0.5):
    """the cross-entropy is taken at temperature T"""
    lq, lp = _log_softmax(student_logits / T), _log_softmax(teacher_logits / T)
    kl = np.sum(np.exp(lp) * (lp - lq), axis=-1).mean()
    ce = -lq[np.arange(len(labels)), labels].mean()
    return float(alpha * T * T * kl + (1 - alpha) * ce)


def distillation_loss__kl_sum(student_logits, teacher_logits, labels, T=2.0, alpha=0.5):
    """summed over the batch"""
    lq, lp = _log_softmax(student_logits / T), _log_softmax(teacher_logits / T)
    kl = np.sum(np.exp(lp) * (lp - lq))
    ce = -_log_softmax(student_logits)[np.arange(len(labels)), labels].mean()
    return float(alpha * T * T * kl + (1 - alpha) * ce)


def distillation_loss__alpha_swapped(student_logits, teacher_logits, labels, T=2.0, alpha=0.5):
    """alpha weighs the wrong term"""
    lq, lp = _log_softmax(student_logits / T), _log_softmax(teacher_logits / T)
    kl = np.sum(np.exp(lp) * (lp - lq), axis=-1).mean()
    ce = -_log_softmax(student_logits)[np.arange(len(labels)), labels].mean()
    return float((1 - alpha) * T * T * kl + alpha * ce)


def distillation_loss__fixed_T(student_logits, teacher_logits, labels, T=2.0, alpha=0.5):
    """the temperature is 2 whatever T is"""
    T = 2.0
    lq, lp = _log_softmax(student_logits / T), _log_softmax(teacher_logits / T)
    kl = np.sum(np.exp(lp) * (lp - lq), axis=-1).mean()
    ce = -_log_softmax(student_logits)[np.arange(len(labels)), labels].mean()
    return float(alpha * T * T * kl + (1 - alpha) * ce)


def distillation_loss__times_T(student_logits, teacher_logits, labels, T=2.0, alpha=0.5):
    """multiplied by T, not T^2"""
    lq, lp = _log_softmax(student_logits / T), _log_softmax(teacher_logits / T)
    kl = np.sum(np.exp(lp) * (lp - lq), axis=-1).mean()
    ce = -_log_softmax(student_logits)[np.arange(len(labels)), labels].mean()
    return float(alpha * T * kl + (1 - alpha) * ce)


# Written after the checks, graded once before any change to them (see the report).


def quantize_q8_0__clip_127_no_round(w):
    """None"""
    blocks = w.astype(np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1) / np.float32(127.0)
    inv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d > 0)
    return d.astype(np.float16), np.floor(blocks * inv[:, None]).astype(np.int8)


def dequantize_q8_0__transposed(scales, q):
    """None"""
    return (scales.astype(np.float32)[:, None] * q.astype(np.float32)).T.reshape(-1)


def prune_2_4__keep_first_two(w):
    """None"""
    g = w.reshape(-1, 4).copy()
    g[:, 2:] = 0
    return g.reshape(w.shape)


def distillation_loss__no_temperature(student_logits, teacher_logits, labels, T=2.0, alpha=0.5):
    """None"""
    def ls(z):
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    lq, lp = ls(student_logits), ls(teacher_logits)
    kl = np.sum(np.exp(lp) * (lp - lq), axis=-1).mean()
    ce = -lq[np.arange(len(labels)), labels].mean()
    return float(alpha * T * T * kl + (1 - alpha) * ce)


# SmoothQuant's migration factor (added with the exercise).


def smooth_scales__mean_of_weights(act_absmax, w, alpha=0.5):
    """not its mean"""
    wm = np.abs(w).mean(axis=1)
    ok = (act_absmax > 0) & (wm > 0)
    return np.where(ok, act_absmax ** alpha / np.where(ok, wm, 1) ** (1 - alpha), 1.0).astype(np.float32)


def smooth_scales__inverted(act_absmax, w, alpha=0.5):
    """s is inverted"""
    wmax = np.abs(w).max(axis=1)
    ok = (act_absmax > 0) & (wmax > 0)
    return np.where(ok, wmax ** (1 - alpha) / np.where(ok, act_absmax, 1) ** alpha, 1.0).astype(np.float32)


def smooth_scales__output_channels(act_absmax, w, alpha=0.5):
    """one entry per output channel"""
    wmax = np.abs(w).max(axis=0)
    return (np.max(act_absmax) ** alpha / wmax ** (1 - alpha)).astype(np.float32)


def smooth_scales__no_abs(act_absmax, w, alpha=0.5):
    """the absolute value"""
    wmax = w.max(axis=1)
    ok = (act_absmax > 0) & (wmax != 0)
    with np.errstate(invalid="ignore"):
        return np.where(ok, act_absmax ** alpha / np.where(ok, wmax, 1) ** (1 - alpha), 1.0).astype(np.float32)


def smooth_scales__alpha_ignored(act_absmax, w, alpha=0.5):
    """the alpha argument is ignored"""
    wmax = np.abs(w).max(axis=1)
    ok = (act_absmax > 0) & (wmax > 0)
    return np.where(ok, np.sqrt(act_absmax / np.where(ok, wmax, 1)), 1.0).astype(np.float32)


def smooth_scales__zero_channels_get_zero(act_absmax, w, alpha=0.5):
    """must get s_j = 1"""
    wmax = np.abs(w).max(axis=1)
    ok = (act_absmax > 0) & (wmax > 0)
    return np.where(ok, act_absmax ** alpha / np.where(ok, wmax, 1) ** (1 - alpha), 0.0).astype(np.float32)
