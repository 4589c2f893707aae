import numpy as np


def _lens(logits, targets):
    logits = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    idx = np.broadcast_to(np.asarray(targets)[None, :, None], logits.shape[:2] + (1,))
    t = np.take_along_axis(logits, idx, axis=-1)
    return np.take_along_axis(p, idx, axis=-1)[..., 0], (logits > t).sum(axis=-1)


def logit_lens__no_final_norm(resid, norm_weight, head, targets, eps=1e-5):
    return _lens(resid @ head, targets)


def logit_lens__eps_outside(resid, norm_weight, head, targets, eps=1e-5):
    x = resid / (np.sqrt((resid * resid).mean(axis=-1, keepdims=True)) + eps) * norm_weight
    return _lens(x @ head, targets)


def logit_lens__rank_from_one(resid, norm_weight, head, targets, eps=1e-5):
    x = resid / np.sqrt((resid * resid).mean(axis=-1, keepdims=True) + eps) * norm_weight
    prob, rank = _lens(x @ head, targets)
    return prob, rank + 1


def logit_lens__unstable_softmax(resid, norm_weight, head, targets, eps=1e-5):
    x = resid / np.sqrt((resid * resid).mean(axis=-1, keepdims=True) + eps) * norm_weight
    logits = x @ head
    p = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    idx = np.broadcast_to(np.asarray(targets)[None, :, None], logits.shape[:2] + (1,))
    t = np.take_along_axis(logits, idx, axis=-1)
    return np.take_along_axis(p, idx, axis=-1)[..., 0], (logits > t).sum(axis=-1)


def _pairs(tokens, shift):
    last, q, k = {}, [], []
    for i, t in enumerate(np.asarray(tokens).tolist()):
        if t in last:
            q.append(i)
            k.append(last[t] + shift)
        last[t] = i
    return q, k


def induction_score__previous_token_itself(patterns, tokens):
    q, k = _pairs(tokens, 0)
    return patterns[:, :, q, k].mean(axis=-1)


def induction_score__two_halves(patterns, tokens):
    T = len(tokens)
    n = T // 2
    i = np.arange(n, T)
    return patterns[:, :, i, i - n + 1].mean(axis=-1)


def induction_score__mean_over_all_positions(patterns, tokens):
    q, k = _pairs(tokens, 1)
    return patterns[:, :, q, k].sum(axis=-1) / len(tokens)


def direct_logit_attribution__own_rms(components, final_resid, norm_weight, direction, eps=1e-5):
    rms = np.sqrt((components * components).mean(axis=-1) + eps)
    return (components @ (norm_weight * direction)) / rms


def direct_logit_attribution__no_norm_weight(components, final_resid, norm_weight, direction, eps=1e-5):
    return (components @ direction) / np.sqrt((final_resid * final_resid).mean() + eps)


def direct_logit_attribution__ignores_eps(components, final_resid, norm_weight, direction, eps=1e-5):
    return (components @ (norm_weight * direction)) / np.sqrt((final_resid * final_resid).mean() + 1e-5)
