import numpy as np


def quantize_q8_0__signed_max(w):
    blocks = w.astype(np.float32).reshape(-1, 32)
    d = blocks.max(axis=1) / np.float32(127.0)
    inv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d != 0)
    return d.astype(np.float16), np.clip(np.round(blocks * inv[:, None]), -127, 127).astype(np.int8)


def quantize_q8_0__float32_scales(w):
    blocks = w.astype(np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1) / np.float32(127.0)
    inv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d > 0)
    return d, np.round(blocks * inv[:, None]).astype(np.int8)


def dequantize_q8_0__not_flattened(scales, q):
    return scales.astype(np.float32)[:, None] * q.astype(np.float32)


def prune_2_4__signed(w):
    groups = w.reshape(-1, 4).copy()
    smallest = np.argsort(groups, axis=1)[:, :2]
    np.put_along_axis(groups, smallest, 0, axis=1)
    return groups.reshape(w.shape)


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def distillation_loss__no_t_squared(student_logits, teacher_logits, labels, T=2.0, alpha=0.5):
    lq, lp = _log_softmax(student_logits / T), _log_softmax(teacher_logits / T)
    kl = np.sum(np.exp(lp) * (lp - lq), axis=-1).mean()
    ce = -_log_softmax(student_logits)[np.arange(len(labels)), labels].mean()
    return float(alpha * kl + (1 - alpha) * ce)


def distillation_loss__reversed_kl(student_logits, teacher_logits, labels, T=2.0, alpha=0.5):
    lq, lp = _log_softmax(student_logits / T), _log_softmax(teacher_logits / T)
    kl = np.sum(np.exp(lq) * (lq - lp), axis=-1).mean()
    ce = -_log_softmax(student_logits)[np.arange(len(labels)), labels].mean()
    return float(alpha * T * T * kl + (1 - alpha) * ce)


def smooth_scales__exponents_swapped(act_absmax, w, alpha=0.5):
    return act_absmax ** (1 - alpha) / np.abs(w).max(axis=1) ** alpha


def smooth_scales__weight_max_of_whole_matrix(act_absmax, w, alpha=0.5):
    return act_absmax ** alpha / np.abs(w).max() ** (1 - alpha)


def smooth_scales__zero_channels_unguarded(act_absmax, w, alpha=0.5):
    return act_absmax ** alpha / np.abs(w).max(axis=1) ** (1 - alpha)
