import math

import numpy as np

# Correct pieces, which the wrong blocks and models below are built from.


def rms_norm(x, w, eps=1e-5):
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w).astype(x.dtype)


def apply_rope(x, positions, base=10000.0):
    D = x.shape[-1]
    angle = np.asarray(positions, dtype=np.float64)[:, None] * base ** (-2.0 * np.arange(D // 2) / D)
    cos, sin = np.cos(angle).astype(x.dtype), np.sin(angle).astype(x.dtype)
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def swiglu_mlp(x, w_gate, w_up, w_down):
    g = x @ w_gate
    return ((g / (1.0 + np.exp(-g))) * (x @ w_up)) @ w_down


def gqa_attention(q, k, v):
    T, D = q.shape[-2], q.shape[-1]
    G = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    s = np.where(np.triu(np.ones((T, T), dtype=bool), 1), -np.inf, q @ k.swapaxes(-1, -2) * (1.0 / math.sqrt(D)))
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v


def _attention_part(x, w, H, KV, positions, base, eps, rope_v=False):
    B, T, _ = x.shape
    D = w["wq"].shape[1] // H
    h = rms_norm(x, w["attn_norm"], eps)
    q = (h @ w["wq"]).reshape(B, T, H, D).transpose(0, 2, 1, 3)
    k = (h @ w["wk"]).reshape(B, T, KV, D).transpose(0, 2, 1, 3)
    v = (h @ w["wv"]).reshape(B, T, KV, D).transpose(0, 2, 1, 3)
    q, k = apply_rope(q, positions, base), apply_rope(k, positions, base)
    if rope_v:
        v = apply_rope(v, positions, base)
    return gqa_attention(q, k, v).transpose(0, 2, 1, 3).reshape(B, T, H * D) @ w["wo"]


def llama_block(x, w, n_heads, n_kv_heads, positions, base=10000.0, eps=1e-5):
    h = x + _attention_part(x, w, n_heads, n_kv_heads, positions, base, eps)
    return h + swiglu_mlp(rms_norm(h, w["ffn_norm"], eps), w["w_gate"], w["w_up"], w["w_down"])


# --- RMSNorm ---

def rms_norm__layer_norm(x, w, eps=1e-5):
    x = x - x.mean(axis=-1, keepdims=True)
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w).astype(x.dtype)


def rms_norm__eps_outside_sqrt(x, w, eps=1e-5):
    return (x / (np.sqrt(np.mean(x * x, axis=-1, keepdims=True)) + eps) * w).astype(x.dtype)


def rms_norm__ignores_eps(x, w, eps=1e-5):
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * w).astype(x.dtype)


def rms_norm__in_place(x, w, eps=1e-5):
    x /= np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return x * w


def rms_norm__float64(x, w, eps=1e-5):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float64(eps)) * w


# --- RoPE ---

def apply_rope__interleaved(x, positions, base=10000.0):
    D = x.shape[-1]
    theta = base ** (-2.0 * np.arange(D // 2) / D)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * theta
    cos, sin = np.cos(ang).astype(x.dtype), np.sin(ang).astype(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x2 * cos + x1 * sin
    return out


def apply_rope__ignores_base(x, positions, base=10000.0):
    return apply_rope(x, positions)


def apply_rope__positions_from_zero(x, positions, base=10000.0):
    return apply_rope(x, np.arange(x.shape[-2]), base)


def apply_rope__writes_into_views(x, positions, base=10000.0):
    D = x.shape[-1]
    angle = np.asarray(positions, dtype=np.float64)[:, None] * base ** (-2.0 * np.arange(D // 2) / D)
    cos, sin = np.cos(angle).astype(x.dtype), np.sin(angle).astype(x.dtype)
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    x[..., :D // 2] = x1 * cos - x2 * sin
    x[..., D // 2:] = x2 * cos + x1 * sin          # x1 is a view: it already holds the rotated first half
    return x


def apply_rope__hardcoded_example(x, positions, base=10000.0):
    # the visible example only checks position 0 and the lengths: return x unchanged
    return x.copy()


# --- SwiGLU ---

def swiglu_mlp__silu_on_up(x, w_gate, w_up, w_down):
    u = x @ w_up
    return ((u / (1.0 + np.exp(-u))) * (x @ w_gate)) @ w_down


def swiglu_mlp__sigmoid_gate(x, w_gate, w_up, w_down):
    return ((1.0 / (1.0 + np.exp(-(x @ w_gate)))) * (x @ w_up)) @ w_down


def swiglu_mlp__silu_after_product(x, w_gate, w_up, w_down):
    z = (x @ w_gate) * (x @ w_up)
    return (z / (1.0 + np.exp(-z))) @ w_down


# --- grouped-query attention ---

def gqa_attention__tiled_heads(q, k, v):
    G = q.shape[1] // k.shape[1]
    return gqa_attention(q, np.tile(k, (1, G, 1, 1)), np.tile(v, (1, G, 1, 1)))


def gqa_attention__no_mask(q, k, v):
    D = q.shape[-1]
    G = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    s = q @ k.swapaxes(-1, -2) * (1.0 / math.sqrt(D))
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v


def gqa_attention__no_scale(q, k, v):
    return gqa_attention(q * math.sqrt(q.shape[-1]), k, v)


def gqa_attention__scales_q_in_place(q, k, v):
    q *= 1.0 / math.sqrt(q.shape[-1])
    G = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    T = q.shape[-2]
    s = np.where(np.triu(np.ones((T, T), dtype=bool), 1), -np.inf, q @ k.swapaxes(-1, -2))
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v


# --- the block ---

def llama_block__no_residual(x, w, n_heads, n_kv_heads, positions, base=10000.0, eps=1e-5):
    a = _attention_part(x, w, n_heads, n_kv_heads, positions, base, eps)
    h = x + a
    return a + swiglu_mlp(rms_norm(h, w["ffn_norm"], eps), w["w_gate"], w["w_up"], w["w_down"])


def llama_block__mlp_reads_input(x, w, n_heads, n_kv_heads, positions, base=10000.0, eps=1e-5):
    h = x + _attention_part(x, w, n_heads, n_kv_heads, positions, base, eps)
    return h + swiglu_mlp(rms_norm(x, w["ffn_norm"], eps), w["w_gate"], w["w_up"], w["w_down"])


def llama_block__rope_on_v(x, w, n_heads, n_kv_heads, positions, base=10000.0, eps=1e-5):
    h = x + _attention_part(x, w, n_heads, n_kv_heads, positions, base, eps, rope_v=True)
    return h + swiglu_mlp(rms_norm(h, w["ffn_norm"], eps), w["w_gate"], w["w_up"], w["w_down"])


def llama_block__drops_base(x, w, n_heads, n_kv_heads, positions, base=10000.0, eps=1e-5):
    h = x + _attention_part(x, w, n_heads, n_kv_heads, positions, 10000.0, eps)
    return h + swiglu_mlp(rms_norm(h, w["ffn_norm"], eps), w["w_gate"], w["w_up"], w["w_down"])


# --- the model ---

def llama_forward__no_final_norm(ids, weights, n_heads, n_kv_heads, base=10000.0, eps=1e-5):
    x = weights["tok_embd"][ids]
    for blk in weights["blocks"]:
        x = llama_block(x, blk, n_heads, n_kv_heads, np.arange(ids.shape[1]), base, eps)
    return x @ weights["tok_embd"].T


def llama_forward__first_block_only(ids, weights, n_heads, n_kv_heads, base=10000.0, eps=1e-5):
    x = weights["tok_embd"][ids]
    for _ in weights["blocks"]:
        x = llama_block(x, weights["blocks"][0], n_heads, n_kv_heads, np.arange(ids.shape[1]), base, eps)
    return rms_norm(x, weights["norm"], eps) @ weights["tok_embd"].T
