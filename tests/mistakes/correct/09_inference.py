# Right answers written another way: they must keep full marks.
import numpy as np


def sample_next__choice_per_row(logits, *, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                                previous=None, rng=None):
    z = np.asarray(logits, dtype=np.float64).copy()
    if previous is not None:
        for row, seen in zip(z, previous):
            for t in set(int(s) for s in seen):
                row[t] = row[t] / repetition_penalty if row[t] > 0 else row[t] * repetition_penalty
    if temperature == 0:
        return np.array([int(np.argmax(row)) for row in z])
    out = []
    for row in z / temperature:                                    # one row at a time
        if top_k:
            row = np.where(row < np.sort(row)[::-1][min(top_k, len(row)) - 1], -np.inf, row)
        p = np.exp(row - row.max())
        p /= p.sum()
        if top_p is not None and top_p < 1:
            order = np.argsort(-row, kind="stable")
            before = np.concatenate([[0.0], np.cumsum(p[order])[:-1]])
            keep = np.zeros(len(row), bool)
            keep[order[before < top_p]] = True
            p = np.where(keep, p, 0.0)
            p /= p.sum()
        out.append(rng.choice(len(row), p=p))                       # one rng.random() per row, like the library
    return np.array(out)


def cached_attention__einsum(q, k_new, v_new, cache_k, cache_v, pos):
    T, D = q.shape[2], q.shape[3]
    if not (0 <= pos and pos + T <= cache_k.shape[2]):
        raise ValueError(f"no room for {T} tokens at {pos}")
    np.copyto(cache_k[:, :, pos:pos + T], k_new)
    np.copyto(cache_v[:, :, pos:pos + T], v_new)
    s = np.einsum("bhtd,bhsd->bhts", q, cache_k[:, :, :pos + T]) / np.sqrt(np.float32(D))
    s = s + np.triu(np.full((T, pos + T), -np.inf, np.float32), k=pos + 1)
    w = np.exp(s - s.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    return np.einsum("bhts,bhsd->bhtd", w, cache_v[:, :, :pos + T]).astype(np.float32)


def _pick(logits, temperature, top_k, top_p, rng):
    z = np.asarray(logits, np.float64)
    if temperature == 0:
        return z.argmax(-1)
    z = z / temperature
    if top_k and top_k < z.shape[1]:
        z = np.where(z < np.sort(z, -1)[:, [-top_k]], -np.inf, z)
    if top_p is not None and top_p < 1:
        order = np.argsort(-z, -1, kind="stable")
        p = np.exp(np.take_along_axis(z, order, -1) - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        drop = np.empty(z.shape, bool)
        np.put_along_axis(drop, order, np.cumsum(p, -1) - p >= top_p, -1)
        z = np.where(drop, -np.inf, z)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.minimum((p.cumsum(-1) < rng.random((len(z), 1))).sum(-1), z.shape[1] - 1)


def generate__list_of_columns(model, idx, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, seed=None,
                              block_size=None):
    rng = np.random.default_rng(seed)
    cols = [idx]
    for _ in range(max_new_tokens):
        seq = np.hstack(cols)
        nxt = _pick(model(seq[:, -block_size:] if block_size else seq)[:, -1], temperature, top_k, top_p, rng)
        cols.append(nxt.reshape(-1, 1).astype(idx.dtype))
    return np.hstack(cols)
