import math

import numpy as np

# Correct pieces, which the wrong versions below are built from.
GELU_K, GELU_C = math.sqrt(2.0 / math.pi), 0.044715


def gelu(u):
    return 0.5 * u * (1.0 + np.tanh(GELU_K * (u + GELU_C * u ** 3)))


def gelu_backward(dy, u):
    t = np.tanh(GELU_K * (u + GELU_C * u ** 3))
    return dy * (0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * GELU_K * (1.0 + 3.0 * GELU_C * u * u))


def _parts(x, w_qkv, b_qkv, n_head, split="right", scale=None, mask=True):
    B, T, C = x.shape
    D = C // n_head
    qkv = x @ w_qkv + b_qkv
    if split == "reshape":
        q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, n_head, T, D) for i in range(3))
    else:
        q, k, v = qkv.reshape(B, T, 3, n_head, D).transpose(2, 0, 3, 1, 4)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    s = (q @ k.swapaxes(-1, -2)) * scale
    if mask:
        s = np.where(np.triu(np.ones((T, T), dtype=bool), k=1), -np.inf, s)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p = p / p.sum(axis=-1, keepdims=True)
    return q, k, v, p, scale


def attention_forward(x, w_qkv, b_qkv, w_o, b_o, n_head):
    B, T, C = x.shape
    q, k, v, p, _ = _parts(x, w_qkv, b_qkv, n_head)
    return (p @ v).transpose(0, 2, 1, 3).reshape(B, T, C) @ w_o + b_o


def _attention_backward(dout, x, w_qkv, b_qkv, w_o, b_o, n_head, rowsum=True, dk_t=True, scale_back=True):
    B, T, C = x.shape
    H = n_head
    D = C // H
    q, k, v, p, scale = _parts(x, w_qkv, b_qkv, H)
    y = (p @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
    dw_o = y.reshape(-1, C).T @ dout.reshape(-1, C)
    db_o = dout.sum(axis=(0, 1))
    dy = (dout @ w_o.T).reshape(B, T, H, D).transpose(0, 2, 1, 3)
    dv = p.swapaxes(-1, -2) @ dy
    dp = dy @ v.swapaxes(-1, -2)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True)) if rowsum else p * dp
    if scale_back:
        ds = ds * scale
    dq = ds @ k
    dk = ds.swapaxes(-1, -2) @ q if dk_t else ds @ q
    dqkv = np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * C)
    return dqkv @ w_qkv.T, x.reshape(-1, C).T @ dqkv.reshape(-1, 3 * C), dqkv.sum(axis=(0, 1)), dw_o, db_o


def attention_backward(dout, x, w_qkv, b_qkv, w_o, b_o, n_head):
    return _attention_backward(dout, x, w_qkv, b_qkv, w_o, b_o, n_head)


def _ln(z, w, b, eps, ddof=0, eps_outside=False):
    mu = z.mean(axis=-1, keepdims=True)
    var = z.var(axis=-1, keepdims=True, ddof=ddof)
    return (z - mu) / (np.sqrt(var) + eps if eps_outside else np.sqrt(var + eps)) * w + b


def _attn_p(a, p, n_head):
    return attention_forward(a, p["attn.c_attn.weight"], p["attn.c_attn.bias"], p["attn.c_proj.weight"],
                             p["attn.c_proj.bias"], n_head)


def _mlp(m, p, act=gelu):
    return act(m @ p["mlp.c_fc.weight"] + p["mlp.c_fc.bias"]) @ p["mlp.c_proj.weight"] + p["mlp.c_proj.bias"]


def block_forward(x, p, n_head, eps=1e-5):
    h = x + _attn_p(_ln(x, p["ln_1.weight"], p["ln_1.bias"], eps), p, n_head)
    return h + _mlp(_ln(h, p["ln_2.weight"], p["ln_2.bias"], eps), p)


def _block_backward(dy, x, p, n_head, eps=1e-5, residual=True, ln_terms=("mean", "var"), gelu_back=True, keys=None):
    C = x.shape[-1]
    g = {}

    def ln(z, name):
        mu = z.mean(axis=-1, keepdims=True)
        r = 1.0 / np.sqrt(((z - mu) ** 2).mean(axis=-1, keepdims=True) + eps)
        zhat = (z - mu) * r
        return zhat * p[name + ".weight"] + p[name + ".bias"], zhat, r

    def ln_back(d, name, zhat, r):
        g[name + ".weight"] = (d * zhat).sum(axis=(0, 1))
        g[name + ".bias"] = d.sum(axis=(0, 1))
        gw = d * p[name + ".weight"]
        out = gw
        if "mean" in ln_terms:
            out = out - gw.mean(axis=-1, keepdims=True)
        if "var" in ln_terms:
            out = out - zhat * (gw * zhat).mean(axis=-1, keepdims=True)
        return out * r

    attn = [p["attn.c_attn.weight"], p["attn.c_attn.bias"], p["attn.c_proj.weight"], p["attn.c_proj.bias"]]
    a, z1, r1 = ln(x, "ln_1")
    h = x + attention_forward(a, *attn, n_head)
    m, z2, r2 = ln(h, "ln_2")
    u = m @ p["mlp.c_fc.weight"] + p["mlp.c_fc.bias"]
    g["mlp.c_proj.weight"] = gelu(u).reshape(-1, 4 * C).T @ dy.reshape(-1, C)
    g["mlp.c_proj.bias"] = dy.sum(axis=(0, 1))
    dgu = dy @ p["mlp.c_proj.weight"].T
    du = gelu_backward(dgu, u) if gelu_back else dgu
    g["mlp.c_fc.weight"] = m.reshape(-1, C).T @ du.reshape(-1, 4 * C)
    g["mlp.c_fc.bias"] = du.sum(axis=(0, 1))
    dh = ln_back(du @ p["mlp.c_fc.weight"].T, "ln_2", z2, r2) + (dy if residual else 0.0)
    da, *dattn = attention_backward(dh, a, *attn, n_head)
    g.update(zip(("attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias"), dattn))
    dx = ln_back(da, "ln_1", z1, r1) + (dh if residual else 0.0)
    return dx, (g if keys is None else {k: g[k] for k in keys})


# ---- wrong versions ------------------------------------------------------------------------------------


def attention_forward__no_scale(x, w_qkv, b_qkv, w_o, b_o, n_head):
    B, T, C = x.shape
    q, k, v, p, _ = _parts(x, w_qkv, b_qkv, n_head, scale=1.0)
    return (p @ v).transpose(0, 2, 1, 3).reshape(B, T, C) @ w_o + b_o


def attention_forward__heads_reshaped(x, w_qkv, b_qkv, w_o, b_o, n_head):
    B, T, C = x.shape
    q, k, v, p, _ = _parts(x, w_qkv, b_qkv, n_head, split="reshape")
    return (p @ v).reshape(B, T, C) @ w_o + b_o


def attention_forward__float64(x, w_qkv, b_qkv, w_o, b_o, n_head):
    B, T, C = x.shape
    q, k, v, p, _ = _parts(x, w_qkv, b_qkv, n_head, scale=1.0 / np.sqrt(C // n_head))
    return (p @ v).transpose(0, 2, 1, 3).reshape(B, T, C) @ w_o + b_o


def attention_backward__no_rowsum(dout, x, w_qkv, b_qkv, w_o, b_o, n_head):
    return _attention_backward(dout, x, w_qkv, b_qkv, w_o, b_o, n_head, rowsum=False)


def attention_backward__dk_not_transposed(dout, x, w_qkv, b_qkv, w_o, b_o, n_head):
    return _attention_backward(dout, x, w_qkv, b_qkv, w_o, b_o, n_head, dk_t=False)


def block_forward__mlp_reads_x(x, p, n_head, eps=1e-5):
    h = x + _attn_p(_ln(x, p["ln_1.weight"], p["ln_1.bias"], eps), p, n_head)
    return h + _mlp(_ln(x, p["ln_2.weight"], p["ln_2.bias"], eps), p)


def block_forward__relu(x, p, n_head, eps=1e-5):
    h = x + _attn_p(_ln(x, p["ln_1.weight"], p["ln_1.bias"], eps), p, n_head)
    return h + _mlp(_ln(h, p["ln_2.weight"], p["ln_2.bias"], eps), p, act=lambda u: np.maximum(u, 0.0))


def block_backward__no_residual(dy, x, p, n_head, eps=1e-5):
    return _block_backward(dy, x, p, n_head, eps, residual=False)


def block_backward__ln_no_mean_term(dy, x, p, n_head, eps=1e-5):
    return _block_backward(dy, x, p, n_head, eps, ln_terms=("var",))
