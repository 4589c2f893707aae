import numpy as np


def logit_lens__logsumexp_float64(resid, norm_weight, head, targets, eps=1e-5):
    r = resid.astype(np.float64)
    x = r * (1.0 / np.sqrt(np.einsum("ltc,ltc->lt", r, r) / r.shape[-1] + eps))[..., None] * norm_weight
    logits = np.einsum("ltc,cv->ltv", x, head)
    m = logits.max(axis=-1)
    lse = m + np.log(np.exp(logits - m[..., None]).sum(axis=-1))
    t = logits[:, np.arange(len(targets)), targets]
    rank = (logits > t[..., None]).sum(axis=-1)
    return np.exp(t - lse).astype(np.float32), rank


def logit_lens__loops(resid, norm_weight, head, targets, eps=1e-5):
    L, T, _ = resid.shape
    prob, rank = np.zeros((L, T)), np.zeros((L, T), dtype=np.int64)
    for l in range(L):
        for t in range(T):
            v = resid[l, t]
            z = (v / np.sqrt(np.mean(v ** 2) + eps) * norm_weight) @ head
            p = np.exp(z - z.max())
            prob[l, t] = p[targets[t]] / p.sum()
            rank[l, t] = int(np.count_nonzero(z > z[targets[t]]))
    return prob, rank


def induction_score__vectorised(patterns, tokens):
    t = np.asarray(tokens)
    T = len(t)
    same = (t[:, None] == t[None, :]) & np.tril(np.ones((T, T), dtype=bool), -1)     # (i, j): j < i, same token
    has = same.any(axis=1)
    prev = T - 1 - np.argmax(same[:, ::-1], axis=1)                                     # the largest such j
    q = np.nonzero(has)[0]
    return patterns[..., q, prev[q] + 1].mean(axis=-1)


def induction_score__loops(patterns, tokens):
    L, H = patterns.shape[:2]
    tokens = list(tokens)
    out = np.zeros((L, H))
    n = 0
    for i in range(len(tokens)):
        js = [j for j in range(i) if tokens[j] == tokens[i]]
        if js:
            out += patterns[:, :, i, js[-1] + 1]
            n += 1
    return out / n


def direct_logit_attribution__einsum_float64(components, final_resid, norm_weight, direction, eps=1e-5):
    f = np.asarray(final_resid, np.float64)
    read = norm_weight.astype(np.float64) * direction
    return (np.einsum("...c,c->...", components.astype(np.float64), read) / np.sqrt(f @ f / f.size + eps)).astype(np.float32)


def direct_logit_attribution__tensordot(components, final_resid, norm_weight, direction, eps=1e-5):
    scale = np.float32(1.0) / np.sqrt(np.square(final_resid).mean() + np.float32(eps))
    return np.tensordot(components * scale, norm_weight * direction, axes=([-1], [0]))
