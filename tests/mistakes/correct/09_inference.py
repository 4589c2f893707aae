import numpy as np

def top_p_filter__loop(logits, p):
    out = np.full_like(logits, -np.inf)
    for r in range(logits.shape[0]):
        z = logits[r]
        pr = np.exp(z - z.max()); pr /= pr.sum()
        total = 0.0
        for i in np.argsort(-z, kind="stable"):
            if total >= p:
                break
            out[r, i] = z[i]
            total += pr[i]
    return out

def kv_cache_update__copyto(cache_k, cache_v, k_new, v_new, pos):
    T = k_new.shape[-2]
    if pos + T > cache_k.shape[-2]:
        raise ValueError("too long")
    np.copyto(cache_k[:, :, pos:pos + T], k_new)
    np.copyto(cache_v[:, :, pos:pos + T], v_new)
    return cache_k, cache_v
