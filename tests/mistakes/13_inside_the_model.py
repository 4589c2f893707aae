import numpy as np

# Helpers (no "__" in their names: not graded).


def _norm(resid, norm_weight, eps):
    return resid / np.sqrt((resid * resid).mean(axis=-1, keepdims=True) + eps) * norm_weight


def _target(a, targets):
    idx = np.broadcast_to(np.asarray(targets)[None, :, None], a.shape[:2] + (1,))
    return np.take_along_axis(a, idx, axis=-1)[..., 0]


def _stable_probs(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _previous(tokens):
    """(query positions, previous occurrence of their token)."""
    last, q, k = {}, [], []
    for i, t in enumerate(np.asarray(tokens).tolist()):
        if t in last:
            q.append(i)
            k.append(last[t])
        last[t] = i
    return np.array(q), np.array(k)


def _rms_of(final_resid, eps):
    return np.sqrt((final_resid * final_resid).mean() + eps)


# --- logit lens ---

def logit_lens__no_norm_weight(resid, norm_weight, head, targets, eps=1e-5):
    """the norm weight is missing"""
    logits = _norm(resid, 1.0, eps) @ head
    t = _target(logits, targets)
    return _target(_stable_probs(logits), targets), (logits > t[..., None]).sum(axis=-1)


def logit_lens__layer_norm(resid, norm_weight, head, targets, eps=1e-5):
    """that is LayerNorm"""
    x = resid - resid.mean(axis=-1, keepdims=True)
    logits = x / np.sqrt(x.var(axis=-1, keepdims=True) + eps) * norm_weight @ head
    t = _target(logits, targets)
    return _target(_stable_probs(logits), targets), (logits > t[..., None]).sum(axis=-1)


def logit_lens__ignores_eps(resid, norm_weight, head, targets, eps=1e-5):
    """the eps argument is not used"""
    logits = _norm(resid, norm_weight, 1e-5) @ head
    t = _target(logits, targets)
    return _target(_stable_probs(logits), targets), (logits > t[..., None]).sum(axis=-1)


def logit_lens__rank_counts_ties_and_self(resid, norm_weight, head, targets, eps=1e-5):
    """rank is 1-based"""
    logits = _norm(resid, norm_weight, eps) @ head
    t = _target(logits, targets)
    return _target(_stable_probs(logits), targets), (logits >= t[..., None]).sum(axis=-1)


def logit_lens__rank_ascending(resid, norm_weight, head, targets, eps=1e-5):
    """counts the tokens with a smaller logit"""
    logits = _norm(resid, norm_weight, eps) @ head
    order = np.argsort(logits, axis=-1)                      # ascending: the top token gets rank V - 1
    rank = np.argsort(order, axis=-1)
    return _target(_stable_probs(logits), targets), _target(rank, targets)


def logit_lens__softmax_over_layers(resid, norm_weight, head, targets, eps=1e-5):
    """the softmax runs over the wrong axis"""
    logits = _norm(resid, norm_weight, eps) @ head
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    t = _target(logits, targets)
    return _target(e / e.sum(axis=0, keepdims=True), targets), (logits > t[..., None]).sum(axis=-1)


def logit_lens__log_prob(resid, norm_weight, head, targets, eps=1e-5):
    """a log-probability"""
    logits = _norm(resid, norm_weight, eps) @ head
    z = logits - logits.max(axis=-1, keepdims=True)
    t = _target(z, targets)
    return t - np.log(np.exp(z).sum(axis=-1)), (z > t[..., None]).sum(axis=-1)


def logit_lens__rank_of_top_token(resid, norm_weight, head, targets, eps=1e-5):
    """the id of the top token (argmax)"""
    logits = _norm(resid, norm_weight, eps) @ head
    return _target(_stable_probs(logits), targets), np.argmax(logits, axis=-1)


# --- induction score ---

def induction_score__first_occurrence(patterns, tokens):
    """the first occurrence was used"""
    first, q, k = {}, [], []
    for i, t in enumerate(np.asarray(tokens).tolist()):
        if t in first:
            q.append(i)
            k.append(first[t] + 1)
        else:
            first[t] = i
    return patterns[:, :, q, k].mean(axis=-1)


def induction_score__query_key_swapped(patterns, tokens):
    """the query and key indices are swapped"""
    q, k = _previous(tokens)
    return patterns[:, :, k + 1, q].mean(axis=-1)


def induction_score__sum_not_mean(patterns, tokens):
    """the sum over the repeated positions"""
    q, k = _previous(tokens)
    return patterns[:, :, q, k + 1].sum(axis=-1)


def induction_score__previous_position(patterns, tokens):
    """that is the previous position"""
    q, _ = _previous(tokens)
    return patterns[:, :, q, q - 1].mean(axis=-1)


def induction_score__wrong_axis_mean(patterns, tokens):
    """you averaged over the heads"""
    q, k = _previous(tokens)
    return patterns[:, :, q, k + 1].mean(axis=1)


# --- direct logit attribution ---

def direct_logit_attribution__no_scale(components, final_resid, norm_weight, direction, eps=1e-5):
    """the final norm's scale is missing"""
    return components @ (norm_weight * direction)


def direct_logit_attribution__sign_reversed(components, final_resid, norm_weight, direction, eps=1e-5):
    """the sign is reversed"""
    return -(components @ (norm_weight * direction)) / _rms_of(final_resid, eps)


def direct_logit_attribution__eps_outside(components, final_resid, norm_weight, direction, eps=1e-5):
    """eps is outside the square root"""
    return (components @ (norm_weight * direction)) / (np.sqrt((final_resid * final_resid).mean()) + eps)


def direct_logit_attribution__multiplies_by_rms(components, final_resid, norm_weight, direction, eps=1e-5):
    """multiplied by rms(final_resid)"""
    return (components @ (norm_weight * direction)) * _rms_of(final_resid, eps)


def direct_logit_attribution__sum_of_squares(components, final_resid, norm_weight, direction, eps=1e-5):
    """the SUM of squares"""
    return (components @ (norm_weight * direction)) / np.sqrt((final_resid * final_resid).sum() + eps)


def direct_logit_attribution__weight_divides(components, final_resid, norm_weight, direction, eps=1e-5):
    """the direction is divided by norm_weight"""
    return (components @ (direction / norm_weight)) / _rms_of(final_resid, eps)
