"""Training throughput of tinyllm's GPT against the same model in PyTorch (CPU), in one process.

    python benchmarks/train_throughput.py [--preset bench] [--batch 16] [--threads 1] [--steps 10]

Both sides run the same configuration, batch and thread count (``torch.set_num_threads``
and ``threadpoolctl`` for NumPy's BLAS), float32, one training step = forward + backward
+ AdamW update. PyTorch is written the way one normally would (``nn.Linear``,
``nn.LayerNorm``, ``scaled_dot_product_attention``, ``torch.optim.AdamW``). The two
are timed in alternating rounds so that load from other processes on a shared machine
hits both alike; the median step time of each is reported, with tokens/s and the ratio
tinyllm / PyTorch (higher is better for tinyllm; 1.0 means as fast).
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threadpoolctl import threadpool_limits  # noqa: E402

from tinyllm.models.gpt import GPT, GPTConfig  # noqa: E402
from tinyllm.optim import AdamW  # noqa: E402


def build_tinyllm(cfg: GPTConfig, lr: float):
    model = GPT(cfg, rng=0)
    opt = AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)

    def step(x, y):
        model.zero_grad()
        loss = model.loss(x, y)
        model.backward()
        opt.step()
        return loss

    return step


def build_torch(cfg: GPTConfig, lr: float):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            C = cfg.dim
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, C = x.shape
            H = cfg.n_heads
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class TorchGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, cfg.dim)
            self.wpe = nn.Embedding(cfg.context_length, cfg.dim)
            self.h = nn.ModuleList(Block() for _ in range(cfg.n_layers))
            self.ln_f = nn.LayerNorm(cfg.dim)

        def forward(self, idx, targets):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(T))
            for block in self.h:
                x = block(x)
            logits = self.ln_f(x) @ self.wte.weight.T                     # tied head
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))

    torch.manual_seed(0)
    model = TorchGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench", help="GPTConfig preset (default: bench)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="threads for both (BLAS and torch)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    cfg = GPTConfig.preset(args.preset)
    B, T = args.batch, cfg.context_length
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, size=(B, T))
    y = rng.integers(0, cfg.vocab_size, size=(B, T))
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    print(f"config: {cfg}")
    print(f"batch {B} x {T} tokens, {args.threads} thread(s), float32, "
          f"numpy {np.__version__}, torch {torch.__version__}, {platform.machine()}")
    with threadpool_limits(limits=args.threads):
        ours, theirs = build_tinyllm(cfg, 1e-3), build_torch(cfg, 1e-3)
        for _ in range(2):                                                  # warm-up
            ours(x, y)
            theirs(tx, ty)
        times = {"tinyllm": [], "pytorch": []}
        for _ in range(args.rounds):                                        # alternate: load hits both alike
            for name, fn, data in (("tinyllm", ours, (x, y)), ("pytorch", theirs, (tx, ty))):
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    loss = fn(*data)
                    times[name].append(time.perf_counter() - t0)
                assert math.isfinite(loss), f"{name} loss is {loss}"

    tok = {name: B * T / statistics.median(ts) for name, ts in times.items()}
    print(f"{'':8} {'median step (ms)':>17} {'tokens/s':>10}")
    for name, ts in times.items():
        print(f"{name:8} {statistics.median(ts) * 1e3:17.1f} {tok[name]:10.0f}")
    print(f"ratio tinyllm / pytorch: {tok['tinyllm'] / tok['pytorch']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
