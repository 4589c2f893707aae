import math

import numpy as np

# Right pieces (no "__" in their names: not graded) that the wrong blocks and models are built from.


def _rms(x, w, eps=1e-5):
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w).astype(x.dtype)


def _rope(x, positions, base=10000.0):
    D = x.shape[-1]
    angle = np.asarray(positions, dtype=np.float64)[:, None] * base ** (-2.0 * np.arange(D // 2) / D)
    cos, sin = np.cos(angle).astype(x.dtype), np.sin(angle).astype(x.dtype)
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _mlp(x, w_gate, w_up, w_down):
    g = x @ w_gate
    return ((g / (1.0 + np.exp(-g))) * (x @ w_up)) @ w_down


def _softmax_masked(s):
    T = s.shape[-1]
    s = np.where(np.triu(np.ones((T, T), dtype=bool), 1), -np.inf, s)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def _gqa(q, k, v):
    G = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    return _softmax_masked(q @ k.swapaxes(-1, -2) * (1.0 / math.sqrt(q.shape[-1]))) @ v


def _block(x, w, H, KV, positions, base=10000.0, eps=1e-5, *, split="ok", merge="ok", mlp_norm="ffn_norm", first_residual=True):
    B, T, _ = x.shape
    D = w["wq"].shape[1] // H
    h = _rms(x, w["attn_norm"], eps)

    def heads(a, n):
        if split == "reshape":                                     # straight into (B, n, T, D): mixes positions
            return a.reshape(B, n, T, D)
        return a.reshape(B, T, n, D).transpose(0, 2, 1, 3)
    q, k, v = heads(h @ w["wq"], H), heads(h @ w["wk"], KV), heads(h @ w["wv"], KV)
    q, k = _rope(q, positions, base), _rope(k, positions, base)
    y = _gqa(q, k, v)
    y = y.reshape(B, T, H * D) if merge == "reshape" else y.transpose(0, 2, 1, 3).reshape(B, T, H * D)
    hh = x + y @ w["wo"] if first_residual else y @ w["wo"]
    return hh + _mlp(_rms(hh, w[mlp_norm], eps), w["w_gate"], w["w_up"], w["w_down"])


# --- RMSNorm ---

def rms_norm__no_weight(x, w, eps=1e-5):
    """the weight w is missing"""
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def rms_norm__sum_of_squares(x, w, eps=1e-5):
    """the root of the SUM of squares"""
    return (x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + eps) * w).astype(x.dtype)


def rms_norm__whole_array(x, w, eps=1e-5):
    """over the last axis"""
    return (x / np.sqrt(np.mean(x * x) + eps) * w).astype(x.dtype)


def rms_norm__no_sqrt(x, w, eps=1e-5):
    """the square root is missing"""
    return (x / (np.mean(x * x, axis=-1, keepdims=True) + eps) * w).astype(x.dtype)


def rms_norm__float64_weight(x, w, eps=1e-5):
    """float64 crept in"""
    w = np.asarray(w, dtype=float)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


# --- RoPE ---

def apply_rope__exponent_i_over_d(x, positions, base=10000.0):
    """the frequencies are base^(-i/D)"""
    D = x.shape[-1]
    angle = np.asarray(positions, dtype=np.float64)[:, None] * base ** (-np.arange(D // 2) / D)
    cos, sin = np.cos(angle).astype(x.dtype), np.sin(angle).astype(x.dtype)
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def apply_rope__wrong_direction(x, positions, base=10000.0):
    """rotates the wrong way"""
    D = x.shape[-1]
    angle = np.asarray(positions, dtype=np.float64)[:, None] * base ** (-2.0 * np.arange(D // 2) / D)
    cos, sin = np.cos(angle).astype(x.dtype), np.sin(angle).astype(x.dtype)
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return np.concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)


def apply_rope__halves_swapped(x, positions, base=10000.0):
    """the two rotated halves are concatenated in the wrong order"""
    D = x.shape[-1]
    angle = np.asarray(positions, dtype=np.float64)[:, None] * base ** (-2.0 * np.arange(D // 2) / D)
    cos, sin = np.cos(angle).astype(x.dtype), np.sin(angle).astype(x.dtype)
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return np.concatenate([x2 * cos + x1 * sin, x1 * cos - x2 * sin], axis=-1)


def apply_rope__float64_tables(x, positions, base=10000.0):
    """float64 crept in"""
    D = x.shape[-1]
    angle = np.asarray(positions)[:, None] * base ** (-2.0 * np.arange(D // 2) / D)
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle), x2 * np.cos(angle) + x1 * np.sin(angle)], axis=-1)


def apply_rope__frequencies_from_one(x, positions, base=10000.0):
    """theta_i = base^(-2i/D) for i = 0"""
    D = x.shape[-1]
    angle = np.asarray(positions, dtype=np.float64)[:, None] * base ** (-2.0 * np.arange(1, D // 2 + 1) / D)
    cos, sin = np.cos(angle).astype(x.dtype), np.sin(angle).astype(x.dtype)
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def apply_rope__assumes_four_axes(x, positions, base=10000.0):
    """any number of leading axes"""
    D = x.shape[3]                                   # the visible example is (B, H, T, D)
    angle = np.asarray(positions, dtype=np.float64)[:, None] * base ** (-2.0 * np.arange(D // 2) / D)
    cos, sin = np.cos(angle).astype(x.dtype), np.sin(angle).astype(x.dtype)
    x1, x2 = x[:, :, :, :D // 2], x[:, :, :, D // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


# --- SwiGLU ---

def swiglu_mlp__relu_gate(x, w_gate, w_up, w_down):
    """ReLU"""
    return (np.maximum(x @ w_gate, 0) * (x @ w_up)) @ w_down


def swiglu_mlp__float64_sigmoid(x, w_gate, w_up, w_down):
    """float64 crept in"""
    g = x @ w_gate
    return (g / (1.0 + np.exp(-g.astype(np.float64))) * (x @ w_up)) @ w_down


def swiglu_mlp__down_on_each(x, w_gate, w_up, w_down):
    """w_down projects the product"""
    g = x @ w_gate
    return ((g / (1.0 + np.exp(-g))) @ w_down) * ((x @ w_up) @ w_down)


def swiglu_mlp__no_down(x, w_gate, w_up, w_down):
    """project back with w_down"""
    g = x @ w_gate
    return (g / (1.0 + np.exp(-g))) * (x @ w_up)


def swiglu_mlp__gelu_gate(x, w_gate, w_up, w_down):
    """GELU"""
    g = x @ w_gate
    gelu = 0.5 * g * (1.0 + np.tanh(0.7978845608 * (g + 0.044715 * g ** 3)))
    return (gelu * (x @ w_up)).astype(x.dtype) @ w_down


# --- grouped-query attention ---

def gqa_attention__mask_hides_diagonal(q, k, v):
    """hides the diagonal"""
    G = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    T = q.shape[-2]
    s = np.where(np.triu(np.ones((T, T), dtype=bool), 0), -np.inf, q @ k.swapaxes(-1, -2) * (1.0 / math.sqrt(q.shape[-1])))
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v


def gqa_attention__mask_one_late(q, k, v):
    """sees the next position"""
    G = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    T = q.shape[-2]
    s = np.where(np.triu(np.ones((T, T), dtype=bool), 2), -np.inf, q @ k.swapaxes(-1, -2) * (1.0 / math.sqrt(q.shape[-1])))
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v


def gqa_attention__no_max_subtraction(q, k, v):
    """subtract each row's maximum"""
    G = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    T = q.shape[-2]
    s = np.where(np.triu(np.ones((T, T), dtype=bool), 1), -np.inf, q @ k.swapaxes(-1, -2) * (1.0 / math.sqrt(q.shape[-1])))
    p = np.exp(s)
    return (p / p.sum(axis=-1, keepdims=True)) @ v


def gqa_attention__numpy_scalar_scale(q, k, v):
    """float64 crept in"""
    G = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    s = q @ k.swapaxes(-1, -2) / np.sqrt(np.float64(q.shape[-1]))
    return _softmax_masked(s) @ v


def gqa_attention__divides_by_d(q, k, v):
    """not by D"""
    G = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    return _softmax_masked(q @ k.swapaxes(-1, -2) * (1.0 / q.shape[-1])) @ v


def gqa_attention__softmax_over_queries(q, k, v):
    """the softmax runs over the wrong axis"""
    G = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    T = q.shape[-2]
    s = np.where(np.triu(np.ones((T, T), dtype=bool), 1), -np.inf, q @ k.swapaxes(-1, -2) * (1.0 / math.sqrt(q.shape[-1])))
    p = np.exp(s - s.max(axis=-2, keepdims=True))
    return (p / p.sum(axis=-2, keepdims=True)) @ v


def gqa_attention__mask_with_zero(q, k, v):
    """masked scores are set to 0"""
    G = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    T = q.shape[-2]
    s = np.where(np.triu(np.ones((T, T), dtype=bool), 1), 0.0, q @ k.swapaxes(-1, -2) * (1.0 / math.sqrt(q.shape[-1])))
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return ((p / p.sum(axis=-1, keepdims=True)) @ v).astype(q.dtype)


def gqa_attention__group_by_kv_loop(q, k, v):
    """reads KV head h // KV"""
    H, KV = q.shape[1], k.shape[1]
    out = np.empty_like(q)
    for h in range(H):
        g = h // KV                                     # should be h // (H // KV)
        s = q[:, h] @ k[:, g].swapaxes(-1, -2) * (1.0 / math.sqrt(q.shape[-1]))
        out[:, h] = _softmax_masked(s) @ v[:, g]
    return out


# --- the block ---

def llama_block__no_first_residual(x, w, n_heads, n_kv_heads, positions, base=10000.0, eps=1e-5):
    """the first residual is missing"""
    return _block(x, w, n_heads, n_kv_heads, positions, base, eps, first_residual=False)


def llama_block__positions_arange(x, w, n_heads, n_kv_heads, positions, base=10000.0, eps=1e-5):
    """the positions argument is ignored"""
    return _block(x, w, n_heads, n_kv_heads, np.arange(x.shape[1]), base, eps)


def llama_block__drops_eps(x, w, n_heads, n_kv_heads, positions, base=10000.0, eps=1e-5):
    """the eps argument does not reach rms_norm"""
    return _block(x, w, n_heads, n_kv_heads, positions, base)


def llama_block__attn_norm_twice(x, w, n_heads, n_kv_heads, positions, base=10000.0, eps=1e-5):
    """the MLP's RMSNorm uses w['attn_norm']"""
    return _block(x, w, n_heads, n_kv_heads, positions, base, eps, mlp_norm="attn_norm")


def llama_block__heads_by_reshape(x, w, n_heads, n_kv_heads, positions, base=10000.0, eps=1e-5):
    """reshape to (B, T, H, D), then transpose"""
    return _block(x, w, n_heads, n_kv_heads, positions, base, eps, split="reshape")


def llama_block__merge_without_transpose(x, w, n_heads, n_kv_heads, positions, base=10000.0, eps=1e-5):
    """transpose back to (B, T, H, D) before"""
    return _block(x, w, n_heads, n_kv_heads, positions, base, eps, merge="reshape")


def llama_block__head_dim_from_c(x, w, n_heads, n_kv_heads, positions, base=10000.0, eps=1e-5):
    """take the head size from the weights"""
    B, T, C = x.shape
    D = C // n_heads                                    # right for SmolLM2 (576 / 9 = 64), not in general
    h = _rms(x, w["attn_norm"], eps)
    q = (h @ w["wq"]).reshape(B, T, n_heads, D).transpose(0, 2, 1, 3)
    k = (h @ w["wk"]).reshape(B, T, n_kv_heads, D).transpose(0, 2, 1, 3)
    v = (h @ w["wv"]).reshape(B, T, n_kv_heads, D).transpose(0, 2, 1, 3)
    att = _gqa(_rope(q, positions, base), _rope(k, positions, base), v).transpose(0, 2, 1, 3).reshape(B, T, -1)
    hh = x + att @ w["wo"]
    return hh + _mlp(_rms(hh, w["ffn_norm"], eps), w["w_gate"], w["w_up"], w["w_down"])


# --- the model ---

def llama_forward__final_norm_default_eps(ids, weights, n_heads, n_kv_heads, base=10000.0, eps=1e-5):
    """the final rms_norm does not get eps"""
    x = weights["tok_embd"][ids]
    for blk in weights["blocks"]:
        x = _block(x, blk, n_heads, n_kv_heads, np.arange(ids.shape[1]), base, eps)
    return _rms(x, weights["norm"]) @ weights["tok_embd"].T


def llama_forward__base_not_passed(ids, weights, n_heads, n_kv_heads, base=10000.0, eps=1e-5):
    """the base argument does not reach the blocks"""
    x = weights["tok_embd"][ids]
    for blk in weights["blocks"]:
        x = _block(x, blk, n_heads, n_kv_heads, np.arange(ids.shape[1]), eps=eps)
    return _rms(x, weights["norm"], eps) @ weights["tok_embd"].T


def llama_forward__returns_probs(ids, weights, n_heads, n_kv_heads, base=10000.0, eps=1e-5):
    """probabilities, not logits"""
    x = weights["tok_embd"][ids]
    for blk in weights["blocks"]:
        x = _block(x, blk, n_heads, n_kv_heads, np.arange(ids.shape[1]), base, eps)
    z = _rms(x, weights["norm"], eps) @ weights["tok_embd"].T
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def llama_forward__last_position_only(ids, weights, n_heads, n_kv_heads, base=10000.0, eps=1e-5):
    """at every position"""
    x = weights["tok_embd"][ids]
    for blk in weights["blocks"]:
        x = _block(x, blk, n_heads, n_kv_heads, np.arange(ids.shape[1]), base, eps)
    return _rms(x[:, -1], weights["norm"], eps) @ weights["tok_embd"].T


def llama_forward__blocks_reversed(ids, weights, n_heads, n_kv_heads, base=10000.0, eps=1e-5):
    """the blocks run in reverse order"""
    x = weights["tok_embd"][ids]
    for blk in weights["blocks"][::-1]:
        x = _block(x, blk, n_heads, n_kv_heads, np.arange(ids.shape[1]), base, eps)
    return _rms(x, weights["norm"], eps) @ weights["tok_embd"].T


def llama_forward__norm_weight_ignored(ids, weights, n_heads, n_kv_heads, base=10000.0, eps=1e-5):
    """the final RMSNorm's weight weights['norm'] is missing"""
    x = weights["tok_embd"][ids]
    for blk in weights["blocks"]:
        x = _block(x, blk, n_heads, n_kv_heads, np.arange(ids.shape[1]), base, eps)
    return _rms(x, np.ones(x.shape[-1], x.dtype), eps) @ weights["tok_embd"].T
