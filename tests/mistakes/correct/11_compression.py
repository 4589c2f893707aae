import numpy as np

def quantize_q8_0__rint(w):
    b = w.reshape(-1, 32)
    d = (np.max(np.abs(b), axis=1) / 127).astype(np.float16)
    dd = d.astype(np.float32)
    q = np.zeros(b.shape, np.int8)
    nz = dd > 0
    q[nz] = np.clip(np.rint(b[nz] / dd[nz, None]), -127, 127).astype(np.int8)
    return d, q

def dequantize_q8_0__mul(scales, q):
    return np.multiply(q, scales[:, None], dtype=np.float32).ravel()

def prune_2_4__argpartition(w):
    g = w.reshape(-1, 4)
    idx = np.argpartition(np.abs(g), 2, axis=1)[:, :2]
    out = g.copy()
    np.put_along_axis(out, idx, 0, axis=1)
    return out.reshape(w.shape)

def distillation_loss__scipy_like(student_logits, teacher_logits, labels, T=2.0, alpha=0.5):
    def sm(z):
        e = np.exp(z - z.max(-1, keepdims=True)); return e / e.sum(-1, keepdims=True)
    p, q = sm(teacher_logits / T), sm(student_logits / T)
    kl = np.mean(np.sum(p * (np.log(p) - np.log(q)), -1))
    ce = -np.mean(np.log(sm(student_logits)[np.arange(len(labels)), labels]))
    return alpha * T ** 2 * kl + (1 - alpha) * ce

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
