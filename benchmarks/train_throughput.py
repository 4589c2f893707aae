"""Training throughput of tinyllm's GPT against the same model in PyTorch (CPU), in one process.

    python benchmarks/train_throughput.py [--preset bench] [--batch 16] [--threads 1,2] [--steps 5] [--rounds 4]

Both sides run the same configuration, batch and thread count (``torch.set_num_threads``
and ``threadpoolctl`` for NumPy's BLAS, which also sizes tinyllm's elementwise threads,
:func:`tinyllm.threads.map_rows`), float32, one training step = forward + backward
+ AdamW update. PyTorch is written the way one normally would (``nn.Linear``,
``nn.LayerNorm``, ``scaled_dot_product_attention``, ``torch.optim.AdamW``). Each round
runs every thread count in turn, and at each the two engines back to back (which one goes
first alternates), so that load from other processes on a shared machine hits both alike.
Per thread count it prints the median step time of each, tokens/s, the ratio
tinyllm / PyTorch of the medians (higher is better for tinyllm; 1.0 means as fast), and the
ratio of each round, whose spread shows how much the load moved. The CPU time of a step (all
threads of the process) shows the work done plus any time threads spend spinning while they
wait; on a shared machine it is a steadier figure than the wall time.
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


SETTLE_S = 0.5   # pause between engines: OpenMP's and OpenBLAS's idle threads spin for a while after a call


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


def _thread_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"--threads takes thread counts separated by commas, such as 1,2; got {text!r}")
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench", help="GPTConfig preset (default: bench)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=_thread_counts, default=[1, 2],
                    help="thread counts for both (BLAS and torch), separated by commas (default: 1,2)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per engine, thread count and round")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)

    import torch

    cfg = GPTConfig.preset(args.preset)
    B, T = args.batch, cfg.context_length
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, size=(B, T))
    y = rng.integers(0, cfg.vocab_size, size=(B, T))
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    print(f"config: {cfg}")
    print(f"batch {B} x {T} tokens, threads {','.join(map(str, args.threads))}, float32, "
          f"numpy {np.__version__}, torch {torch.__version__}, {platform.machine()}")
    engines = {n: {"tinyllm": (build_tinyllm(cfg, 1e-3), (x, y)), "pytorch": (build_torch(cfg, 1e-3), (tx, ty))}
               for n in args.threads}
    times = {n: {"tinyllm": [], "pytorch": []} for n in args.threads}
    cpu = {n: {"tinyllm": [], "pytorch": []} for n in args.threads}     # CPU time of the process, all threads
    rounds = {n: [] for n in args.threads}                                 # per round: tinyllm / pytorch
    for r in range(args.rounds + 1):                                        # round 0 warms up
        for n in args.threads:
            torch.set_num_threads(n)
            with threadpool_limits(limits=n):
                order = list(engines[n].items())[::1 if r % 2 else -1]      # alternate who goes first
                this = {}
                for name, (fn, data) in order:
                    time.sleep(SETTLE_S)                                    # the other engine's threads stop spinning
                    ts = []
                    for _ in range(args.steps if r else 2):
                        t0, c0 = time.perf_counter(), time.process_time()
                        loss = fn(*data)
                        ts.append(time.perf_counter() - t0)
                        cpu[n][name].append(time.process_time() - c0)
                    assert math.isfinite(loss), f"{name} loss is {loss}"
                    this[name] = statistics.median(ts)
                    if r:
                        times[n][name] += ts
                    else:
                        cpu[n][name].clear()
                if r:
                    rounds[n].append(this["pytorch"] / this["tinyllm"])

    print(f"{'threads':>7} {'engine':8} {'median step (ms)':>17} {'tokens/s':>10} {'CPU time (ms)':>14}")
    for n in args.threads:
        tok = {name: B * T / statistics.median(ts) for name, ts in times[n].items()}
        for name, ts in times[n].items():
            print(f"{n:7} {name:8} {statistics.median(ts) * 1e3:17.1f} {tok[name]:10.0f} "
                  f"{statistics.median(cpu[n][name]) * 1e3:14.1f}")
    for n in args.threads:
        tok = {name: B * T / statistics.median(ts) for name, ts in times[n].items()}
        print(f"ratio tinyllm / pytorch at {n} thread(s): {tok['tinyllm'] / tok['pytorch']:.2f}x "
              f"(rounds: {', '.join(f'{q:.2f}' for q in rounds[n])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
