import math

import numpy as np


def _c_gelu(u):
    return 0.5 * u * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u ** 3)))


def _c_gelu_backward(dy, u):
    k, c = math.sqrt(2.0 / math.pi), 0.044715
    t = np.tanh(k * (u + c * u ** 3))
    return dy * (0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * k * (1.0 + 3.0 * c * u * u))


def _c_heads(x, w_qkv, b_qkv, H):
    """q, k, v (B, H, T, D) by slicing and einsum, and the attention weights with a large negative fill."""
    B, T, C = x.shape
    D = C // H
    qkv = np.einsum("btc,cf->btf", x, w_qkv) + b_qkv
    q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, T, H, D).transpose(0, 2, 1, 3) for i in range(3))
    s = np.einsum("bhtd,bhsd->bhts", q, k) / np.float32(math.sqrt(D))
    s = s + np.triu(np.full((T, T), -1e30, dtype=x.dtype), 1)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return q, k, v, p


def attention_forward__einsum(x, w_qkv, b_qkv, w_o, b_o, n_head):
    B, T, C = x.shape
    q, k, v, p = _c_heads(x, w_qkv, b_qkv, n_head)
    y = np.einsum("bhts,bhsd->bthd", p, v).reshape(B, T, C)
    return (np.einsum("btc,cd->btd", y, w_o) + b_o).astype(x.dtype)


def attention_backward__einsum(dout, x, w_qkv, b_qkv, w_o, b_o, n_head):
    B, T, C = x.shape
    H = n_head
    D = C // H
    q, k, v, p = _c_heads(x, w_qkv, b_qkv, H)
    y = np.einsum("bhts,bhsd->bthd", p, v).reshape(B, T, C)
    dy = np.einsum("btc,dc->btd", dout, w_o).reshape(B, T, H, D)
    dv = np.einsum("bhts,bthd->bhsd", p, dy)
    dp = np.einsum("bthd,bhsd->bhts", dy, v)
    ds = p * (dp - np.einsum("bhts,bhts->bht", dp, p)[..., None]) / math.sqrt(D)
    dq = np.einsum("bhts,bhsd->bthd", ds, k).reshape(B, T, C)
    dk = np.einsum("bhts,bhtd->bshd", ds, q).reshape(B, T, C)
    dqkv = np.concatenate([dq, dk, dv.transpose(0, 2, 1, 3).reshape(B, T, C)], axis=-1)
    return (np.einsum("btf,cf->btc", dqkv, w_qkv), np.einsum("btc,btf->cf", x, dqkv), dqkv.sum((0, 1)),
            np.einsum("btc,btd->cd", y, dout), dout.sum((0, 1)))


def _c_norm(z, eps):
    mu = np.mean(z, -1, keepdims=True)
    r = 1.0 / np.sqrt(np.mean(np.square(z - mu), -1, keepdims=True) + eps)
    return (z - mu) * r, r


def block_forward__stepwise(x, p, n_head, eps=1e-5):
    a = _c_norm(x, eps)[0] * p["ln_1.weight"] + p["ln_1.bias"]
    x = x + attention_forward__einsum(a, p["attn.c_attn.weight"], p["attn.c_attn.bias"], p["attn.c_proj.weight"],
                                      p["attn.c_proj.bias"], n_head)
    m = _c_norm(x, eps)[0] * p["ln_2.weight"] + p["ln_2.bias"]
    hidden = _c_gelu(m @ p["mlp.c_fc.weight"] + p["mlp.c_fc.bias"])
    x = x + hidden @ p["mlp.c_proj.weight"]
    x = x + p["mlp.c_proj.bias"]
    return x


def block_backward__stepwise(dy, x, p, n_head, eps=1e-5):
    names = ("attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias")
    attn = [p[n] for n in names]
    xh1, r1 = _c_norm(x, eps)
    a = xh1 * p["ln_1.weight"] + p["ln_1.bias"]
    h = x + attention_forward__einsum(a, *attn, n_head)
    xh2, r2 = _c_norm(h, eps)
    m = xh2 * p["ln_2.weight"] + p["ln_2.bias"]
    u = m @ p["mlp.c_fc.weight"] + p["mlp.c_fc.bias"]
    grads = {"mlp.c_proj.weight": np.einsum("btf,btc->fc", _c_gelu(u), dy), "mlp.c_proj.bias": dy.sum((0, 1))}
    du = _c_gelu_backward(dy @ p["mlp.c_proj.weight"].T, u)
    grads["mlp.c_fc.weight"] = np.einsum("btc,btf->cf", m, du)
    grads["mlp.c_fc.bias"] = du.sum((0, 1))
    dm = du @ p["mlp.c_fc.weight"].T
    grads["ln_2.weight"], grads["ln_2.bias"] = (dm * xh2).sum((0, 1)), dm.sum((0, 1))
    C = x.shape[-1]
    g = dm * p["ln_2.weight"]
    dh = dy + r2 * (C * g - g.sum(-1, keepdims=True) - xh2 * (g * xh2).sum(-1, keepdims=True)) / C
    da, *dw = attention_backward__einsum(dh, a, *attn, n_head)
    grads.update(zip(names, dw))
    grads["ln_1.weight"], grads["ln_1.bias"] = (da * xh1).sum((0, 1)), da.sum((0, 1))
    g = da * p["ln_1.weight"]
    dx = dh + r1 * (C * g - g.sum(-1, keepdims=True) - xh1 * (g * xh1).sum(-1, keepdims=True)) / C
    return dx, grads
