import math

import numpy as np


def rms_norm__einsum_float64(x, w, eps=1e-5):
    x64 = x.astype(np.float64)
    ms = np.einsum("...c,...c->...", x64, x64) / x.shape[-1]
    return (x64 / np.sqrt(ms + eps)[..., None] * w).astype(x.dtype)


def rms_norm__rsqrt_loop(x, w, eps=1e-5):
    flat = x.reshape(-1, x.shape[-1])
    out = np.empty_like(flat)
    for i, row in enumerate(flat):
        out[i] = row * np.float32(1.0 / math.sqrt(float(np.dot(row, row)) / row.size + eps)) * w
    return out.reshape(x.shape)


def apply_rope__complex(x, positions, base=10000.0):
    D = x.shape[-1]
    theta = 1.0 / base ** (np.arange(0, D, 2) / D)
    z = x[..., :D // 2].astype(np.float64) + 1j * x[..., D // 2:]
    z = z * np.exp(1j * np.outer(positions, theta))
    return np.concatenate([z.real, z.imag], axis=-1).astype(x.dtype)


def apply_rope__rotate_half(x, positions, base=10000.0):
    D = x.shape[-1]
    inv = base ** (-np.arange(0, D, 2, dtype=np.float64) / D)
    ang = np.concatenate([np.outer(positions, inv)] * 2, axis=-1)            # (T, D)
    rot = np.concatenate([-x[..., D // 2:], x[..., :D // 2]], axis=-1)
    return (x * np.cos(ang) + rot * np.sin(ang)).astype(x.dtype)


def swiglu_mlp__einsum_float64(x, w_gate, w_up, w_down):
    x64 = x.astype(np.float64)
    g = np.einsum("...c,cf->...f", x64, w_gate)
    u = np.einsum("...c,cf->...f", x64, w_up)
    return np.einsum("...f,fc->...c", g * 0.5 * (1 + np.tanh(g / 2)) * u, w_down).astype(np.float32)


def swiglu_mlp__stable_silu(x, w_gate, w_up, w_down):
    g = x @ w_gate
    sig = np.where(g >= 0, 1 / (1 + np.exp(-np.abs(g))), np.exp(-np.abs(g)) / (1 + np.exp(-np.abs(g))))
    return ((g * sig) * (x @ w_up)) @ w_down


def gqa_attention__head_loop(q, k, v):
    B, H, T, D = q.shape
    G = H // k.shape[1]
    out = np.zeros_like(q)
    for h in range(H):
        s = np.einsum("btd,bsd->bts", q[:, h], k[:, h // G]) / np.float32(math.sqrt(D))
        s[:, np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] = -np.inf
        p = np.exp(s - s.max(-1, keepdims=True))
        out[:, h] = np.einsum("bts,bsd->btd", p / p.sum(-1, keepdims=True), v[:, h // G])
    return out


def gqa_attention__grouped_reshape(q, k, v):
    B, H, T, D = q.shape
    KV = k.shape[1]
    qg = q.reshape(B, KV, H // KV, T, D).astype(np.float64)                   # (B, KV, G, T, D)
    s = qg @ k[:, :, None].swapaxes(-1, -2) / math.sqrt(D)
    s = s + np.where(np.tril(np.ones((T, T))) > 0, 0.0, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ v[:, :, None]).reshape(B, H, T, D).astype(q.dtype)


def llama_block__einsum(x, w, n_heads, n_kv_heads, positions, base=10000.0, eps=1e-5):
    B, T, C = x.shape
    D = w["wq"].shape[1] // n_heads
    h = rms_norm__einsum_float64(x, w["attn_norm"], eps)
    q = np.einsum("btc,chd->bhtd", h, w["wq"].reshape(C, n_heads, D))
    k = np.einsum("btc,chd->bhtd", h, w["wk"].reshape(C, n_kv_heads, D))
    v = np.einsum("btc,chd->bhtd", h, w["wv"].reshape(C, n_kv_heads, D))
    y = gqa_attention__head_loop(apply_rope__complex(q, positions, base), apply_rope__complex(k, positions, base), v)
    x = x + np.einsum("bhtd,hdc->btc", y, w["wo"].reshape(n_heads, D, -1))
    return x + swiglu_mlp__stable_silu(rms_norm__rsqrt_loop(x, w["ffn_norm"], eps), w["w_gate"], w["w_up"], w["w_down"])


def llama_forward__with_loop(ids, weights, n_heads, n_kv_heads, base=10000.0, eps=1e-5):
    E = weights["tok_embd"]
    x = np.stack([E[row] for row in ids])
    for i in range(len(weights["blocks"])):
        x = llama_block__einsum(x, weights["blocks"][i], n_heads, n_kv_heads, list(range(ids.shape[1])), base=base, eps=eps)
    return np.einsum("btc,vc->btv", rms_norm__einsum_float64(x, weights["norm"], eps), E)
