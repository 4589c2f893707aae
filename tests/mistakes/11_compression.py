import numpy as np

_Q41 = np.dtype([("d", "<f2"), ("m", "<f2"), ("q", "u1", (16,))])


def _q41(x, *, div=15, m_zero=False, inv_f16=False, rounding="trunc", swap=False, f64=False):
    ft = np.float64 if f64 else np.float32
    b = x.astype(ft).reshape(-1, 32)
    lo = np.zeros((len(b), 1), ft) if m_zero else b.min(axis=1, keepdims=True)
    d = (b.max(axis=1, keepdims=True) - b.min(axis=1, keepdims=True)) / ft(div)
    dd = d.astype(np.float16).astype(ft) if inv_f16 else d
    inv = np.divide(ft(1), dd, out=np.zeros_like(dd), where=dd != 0)
    v = (b - lo) * inv
    q = np.clip(np.trunc(v + ft(0.5)) if rounding == "trunc" else np.floor(v) if rounding == "floor" else np.rint(v),
                0, 15).astype(np.uint8)
    rec = np.empty(len(b), dtype=_Q41)
    rec["d"], rec["m"] = d[:, 0], lo[:, 0]
    rec["q"] = (q[:, 16:] | (q[:, :16] << 4)) if swap else (q[:, :16] | (q[:, 16:] << 4))
    return rec.view(np.uint8).reshape(*x.shape[:-1], -1)


def quantize_q4_1__divide_16(x):
    """d divides the range by 16"""
    return _q41(x, div=16)


def quantize_q4_1__m_zero(x):
    """m is not the block minimum"""
    return _q41(x, m_zero=True)


def quantize_q4_1__inverse_of_f16(x):
    """1/d is taken from the float16-rounded d"""
    return _q41(x, inv_f16=True)


def quantize_q4_1__halves_swapped(x):
    """the two halves are swapped"""
    return _q41(x, swap=True)


def quantize_q4_1__floor(x):
    """codes are truncated without adding 0.5"""
    return _q41(x, rounding="floor")


def quantize_q4_1__float64(x):
    """the codes are computed in float64"""
    return _q41(x, f64=True)


def quantize_q4_1__flat(x):
    """keep the leading axes of x"""
    return _q41(x).reshape(-1)


def quantize_q4_1__float32_scales(x):
    """None"""
    b = x.astype(np.float32).reshape(-1, 32)
    lo = b.min(axis=1, keepdims=True)
    d = (b.max(axis=1, keepdims=True) - lo) / np.float32(15)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = np.clip(np.trunc((b - lo) * inv + np.float32(0.5)), 0, 15).astype(np.uint8)
    out = np.concatenate([d.view(np.uint8)[:, :2], lo.view(np.uint8)[:, :2], q[:, :16] | (q[:, 16:] << 4)], axis=1)
    return out.reshape(*x.shape[:-1], -1)


def _grid(g, bits, symmetric):
    if symmetric:
        hi = 2 ** (bits - 1) - 1
        return np.abs(g).max(axis=1) / hi, np.zeros(len(g)), -hi - 1, hi
    hi = 2 ** bits - 1
    lo, top = np.minimum(g.min(axis=1), 0), np.maximum(g.max(axis=1), 0)
    s = (top - lo) / hi
    return s, np.clip(np.rint(-lo / np.where(s > 0, s, 1)), 0, hi), 0, hi


def _gptq(w, h, bits, group_size, symmetric, damp, *, static=False, no_damp=False, fixed_damp=False,
          per_row=False, sym_only=False, no_cholesky_t=False):
    W = w.astype(np.float64).copy()
    W0 = W.copy()
    lam = 0.0 if no_damp else (0.01 if fixed_damp else damp)
    H = h + lam * np.mean(np.diag(h)) * np.eye(len(h))
    L = np.linalg.cholesky(np.linalg.inv(H))
    U = L if no_cholesky_t else L.T
    gs = W.shape[1] if per_row else group_size
    sym = True if sym_only else symmetric
    Q = np.zeros_like(W)
    for j in range(W.shape[1]):
        if j % gs == 0:
            s, z, lo, hi = _grid((W0 if static else W)[:, j:j + gs], bits, sym)
            inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
        Q[:, j] = (np.clip(np.rint(W[:, j] * inv) + z, lo, hi) - z) * s
        e = (W[:, j] - Q[:, j]) / U[j, j]
        W[:, j + 1:] -= np.outer(e, U[j, j + 1:])
    return Q.astype(np.float32)


def gptq_layer__static_scales(w, h, bits=4, group_size=128, symmetric=True, damp=0.01):
    """each group's scale comes from the original weights"""
    return _gptq(w, h, bits, group_size, symmetric, damp, static=True)


def gptq_layer__no_damping(w, h, bits=4, group_size=128, symmetric=True, damp=0.01):
    """damping is missing"""
    return _gptq(w, h, bits, group_size, symmetric, damp, no_damp=True)


def gptq_layer__damp_fixed(w, h, bits=4, group_size=128, symmetric=True, damp=0.01):
    """the damp argument is ignored"""
    return _gptq(w, h, bits, group_size, symmetric, damp, fixed_damp=True)


def gptq_layer__symmetric_always(w, h, bits=4, group_size=128, symmetric=True, damp=0.01):
    """symmetric=False is ignored"""
    return _gptq(w, h, bits, group_size, symmetric, damp, sym_only=True)


def gptq_layer__lower_factor(w, h, bits=4, group_size=128, symmetric=True, damp=0.01):
    """the rounding error is never passed on"""
    return _gptq(w, h, bits, group_size, symmetric, damp, no_cholesky_t=True)


def gptq_layer__codes_not_values(w, h, bits=4, group_size=128, symmetric=True, damp=0.01):
    """None"""
    q = _gptq(w, h, bits, group_size, symmetric, damp)
    return np.rint(q / np.maximum(np.abs(q).max(axis=1, keepdims=True), 1e-12) * 7).astype(np.float32)


def _mask(w, axis, *, key=np.abs, drop=slice(0, 2)):
    moved = np.moveaxis(w, axis, -1)
    g = moved.reshape(*moved.shape[:-1], -1, 4)
    m = np.ones(g.shape, bool)
    np.put_along_axis(m, np.argsort(key(g), axis=-1)[..., drop], False, axis=-1)
    return np.moveaxis(m.reshape(moved.shape), -1, axis)


def prune_2_4__largest(w, axis=0):
    """the 2 largest |w| of each group were zeroed"""
    m = _mask(w, axis, drop=slice(2, 4))
    return w * m, m


def prune_2_4__three(w, axis=0):
    """3 of every 4 weights were zeroed"""
    m = _mask(w, axis, drop=slice(0, 3))
    return w * m, m


def prune_2_4__axis_zero_always(w, axis=0):
    """the groups of 4 run along axis 0"""
    m = _mask(w, 0)
    return w * m, m


def prune_2_4__inverted_mask(w, axis=0):
    """the mask is inverted"""
    m = _mask(w, axis)
    return w * m, ~m


def prune_2_4__float_mask(w, axis=0):
    """the mask has dtype"""
    m = _mask(w, axis)
    return w * m, m.astype(w.dtype)


def prune_2_4__in_place(w, axis=0):
    """the call changed its input w"""
    m = _mask(w, axis)
    w *= m
    return w, m


def prune_2_4__pruned_only(w, axis=0):
    """must return the tuple (pruned, mask)"""
    return w * _mask(w, axis)


def prune_2_4__float32_always(w, axis=0):
    """keep w's dtype"""
    m = _mask(w, axis)
    return (w * m).astype(np.float32), m


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _distill(zs, zt, targets, T, alpha, ignore_index, *, ce_at_T=False, kl_sum=False, swap_alpha=False, fixed_T=None,
             no_div_n=False, no_onehot=False, ignore_ignored=False, keep_ignored_in_n=False, grad_f64=False,
             sign=1.0):
    T = fixed_T or T
    V = zs.shape[-1]
    s, t = zs.reshape(-1, V).astype(np.float64), zt.reshape(-1, V).astype(np.float64)
    y = np.zeros(len(s), int) if targets is None else np.asarray(targets).reshape(-1)
    valid = np.ones(len(s), bool) if targets is None or ignore_ignored else y != (-100 if ignore_ignored else ignore_index)
    if targets is not None and ignore_ignored:
        valid = y != -100
    n = len(s) if keep_ignored_in_n else max(valid.sum(), 1)
    wt = valid / (1.0 if no_div_n else n)
    a_soft, a_hard = (1 - alpha, alpha) if swap_alpha else (alpha, 1 - alpha)
    lq, lp = _log_softmax(s / T), _log_softmax(t / T)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    loss = a_soft * T * T * float(((valid if kl_sum else wt) * kl).sum())
    grad = a_soft * T * (np.exp(lq) - np.exp(lp)) * wt[:, None]
    if targets is not None:
        yy = np.where(valid, y, 0)
        ls = _log_softmax(s / T if ce_at_T else s)
        loss += a_hard * float(-(wt * ls[np.arange(len(yy)), yy]).sum())
        hot = 0 if no_onehot else np.eye(V)[yy]
        grad += a_hard * (np.exp(_log_softmax(s)) - hot) * wt[:, None]
    grad = sign * grad.reshape(zs.shape)
    return loss, grad if grad_f64 else grad.astype(zs.dtype)


def distillation_loss__ce_at_T(student_logits, teacher_logits, targets=None, *, temperature=2.0, alpha=0.5,
                               ignore_index=-100):
    """the cross-entropy is taken at temperature T"""
    return _distill(student_logits, teacher_logits, targets, temperature, alpha, ignore_index, ce_at_T=True)


def distillation_loss__kl_sum(student_logits, teacher_logits, targets=None, *, temperature=2.0, alpha=0.5,
                              ignore_index=-100):
    """the KL divergence is summed over the positions"""
    return _distill(student_logits, teacher_logits, targets, temperature, alpha, ignore_index, kl_sum=True)


def distillation_loss__alpha_swapped(student_logits, teacher_logits, targets=None, *, temperature=2.0, alpha=0.5,
                                     ignore_index=-100):
    """alpha weighs the wrong term"""
    return _distill(student_logits, teacher_logits, targets, temperature, alpha, ignore_index, swap_alpha=True)


def distillation_loss__fixed_T(student_logits, teacher_logits, targets=None, *, temperature=2.0, alpha=0.5,
                               ignore_index=-100):
    """the temperature is 2 whatever the temperature argument says"""
    return _distill(student_logits, teacher_logits, targets, temperature, alpha, ignore_index, fixed_T=2.0)


def distillation_loss__grad_not_divided(student_logits, teacher_logits, targets=None, *, temperature=2.0, alpha=0.5,
                                        ignore_index=-100):
    """the gradient is not divided by N"""
    loss, _ = _distill(student_logits, teacher_logits, targets, temperature, alpha, ignore_index)
    return loss, _distill(student_logits, teacher_logits, targets, temperature, alpha, ignore_index, no_div_n=True)[1]


def distillation_loss__no_onehot(student_logits, teacher_logits, targets=None, *, temperature=2.0, alpha=0.5,
                                 ignore_index=-100):
    """the hard term's gradient misses the one-hot"""
    return _distill(student_logits, teacher_logits, targets, temperature, alpha, ignore_index, no_onehot=True)


def distillation_loss__grad_sign(student_logits, teacher_logits, targets=None, *, temperature=2.0, alpha=0.5,
                                 ignore_index=-100):
    """the gradient has the wrong sign"""
    return _distill(student_logits, teacher_logits, targets, temperature, alpha, ignore_index, sign=-1.0)


def distillation_loss__ignore_index_ignored(student_logits, teacher_logits, targets=None, *, temperature=2.0,
                                            alpha=0.5, ignore_index=-100):
    """the ignore_index argument is not used"""
    return _distill(student_logits, teacher_logits, targets, temperature, alpha, ignore_index, ignore_ignored=True)


def distillation_loss__n_counts_ignored(student_logits, teacher_logits, targets=None, *, temperature=2.0, alpha=0.5,
                                        ignore_index=-100):
    """N counts the ignored positions"""
    return _distill(student_logits, teacher_logits, targets, temperature, alpha, ignore_index, keep_ignored_in_n=True)


def distillation_loss__float64_gradient(student_logits, teacher_logits, targets=None, *, temperature=2.0, alpha=0.5,
                                        ignore_index=-100):
    """return it in the student's dtype"""
    return _distill(student_logits, teacher_logits, targets, temperature, alpha, ignore_index, grad_f64=True)


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
