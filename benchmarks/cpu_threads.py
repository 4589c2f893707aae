"""How BLAS threads change CPU speed: matmul GFLOP/s, matvec GB/s and SmolLM2 decode tokens/s.

    python benchmarks/cpu_threads.py [--threads 1 2] [--sizes 256 512 1024] [--decode-steps 8]

Every measurement runs under ``threadpoolctl.threadpool_limits(n)`` for each
thread count ``n`` in one process, and the table reports the speed-up over the
first count. Matrix products (compute-bound, 2 n^3 flops on 3 n^2 numbers) scale
with cores; matrix-vector products read every weight once for 2 flops each, so
they are limited by memory bandwidth and scale much less. Decoding one token of
a language model is a chain of matrix-vector products, so it behaves like the
latter. The decode model is SmolLM2-135M's architecture in float32 (the real
weights when the GGUF loader is available, random ones otherwise: speed does not
depend on the values). Median of repeated runs; other load on the machine shows
up as noise, so compare ratios rather than absolute numbers.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402


def median_time(fn: Callable[[], object], *, repeats: int = 5, min_time: float = 0.05) -> float:
    """Median seconds of one call of ``fn``: each of ``repeats`` samples loops until ``min_time`` passed."""
    fn()                                                            # warm-up (allocations, caches)
    samples = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                break
        samples.append(elapsed / n)
    return statistics.median(samples)


def matmul_gflops(n: int, *, repeats: int = 5, min_time: float = 0.05, seed: int = 0) -> float:
    """float32 (n, n) @ (n, n): 2 n^3 flops per product, in GFLOP/s."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    t = median_time(lambda: np.matmul(a, b, out=out), repeats=repeats, min_time=min_time)
    return 2.0 * n ** 3 / t / 1e9


def matvec_gbps(rows: int, cols: int, *, repeats: int = 5, min_time: float = 0.05, seed: int = 0) -> float:
    """float32 (rows, cols) @ (cols,): bytes of the matrix read per second, in GB/s."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    x = rng.standard_normal(cols, dtype=np.float32)
    out = np.empty(rows, dtype=np.float32)
    t = median_time(lambda: np.matmul(w, x, out=out), repeats=repeats, min_time=min_time)
    return w.nbytes / t / 1e9


def smollm2_model(verbose: bool = True):
    """SmolLM2-135M in float32: the real weights if they load, else random weights of the same shapes."""
    from tinyllm.models.llama import Llama, LlamaConfig

    try:
        from tinyllm.models.smollm2 import load_smollm2

        model, _ = load_smollm2(device="cpu")
        what = "SmolLM2-135M-Instruct (real weights)"
    except (ImportError, OSError) as exc:
        model = Llama(LlamaConfig(), rng=0)
        what = f"SmolLM2-135M architecture, random weights ({exc.__class__.__name__}: real weights not loadable here)"
    if verbose:
        print(f"decode model: {what}")
    return model


def decode_tokens_per_s(model, *, steps: int = 8, prompt_len: int = 16, repeats: int = 3) -> float:
    """Batch-1 decode speed: median over ``repeats`` runs of ``steps`` cached decode steps after a prefill."""
    from tinyllm.generate import decode_step, prefill

    prompt = np.arange(1, prompt_len + 1, dtype=np.int64)[None, :]              # (1, T)
    times = []
    for _ in range(repeats):
        logits, cache = prefill(model, prompt, max_new_tokens=steps + 1)
        nxt = np.array([int(np.argmax(logits[0]))])
        t0 = time.perf_counter()
        for _ in range(steps):
            logits = decode_step(model, cache, nxt)                                 # (1, V)
            nxt = np.array([int(np.argmax(logits[0]))])
        times.append((time.perf_counter() - t0) / steps)
    return 1.0 / statistics.median(times)


def run(threads=(1, 2), sizes=(256, 512, 1024), matvec_shape=(4096, 4096), decode_steps: int = 8,
        model=None, repeats: int = 5, min_time: float = 0.05, decode_repeats: int = 3,
        prompt_len: int = 16) -> list[dict]:
    """Measure everything at each thread count; returns rows ``{"what", "unit", threads: value, ...}``."""
    rows = [{"what": f"matmul {n}x{n}", "unit": "GFLOP/s", "fn": lambda n=n: matmul_gflops(n, repeats=repeats, min_time=min_time)}
            for n in sizes]
    r, c = matvec_shape
    rows.append({"what": f"matvec {r}x{c}", "unit": "GB/s",
                 "fn": lambda: matvec_gbps(r, c, repeats=repeats, min_time=min_time)})
    if decode_steps and model is not None:
        rows.append({"what": "SmolLM2 decode (batch 1)", "unit": "tok/s",
                     "fn": lambda: decode_tokens_per_s(model, steps=decode_steps, prompt_len=prompt_len,
                                                       repeats=decode_repeats)})
    for row in rows:
        fn = row.pop("fn")
        for n in threads:
            with threadpool_limits(limits=n):
                row[n] = fn()
    return rows


def format_table(rows: list[dict], threads) -> str:
    """An aligned text table with one column per thread count and the speed-up of the last over the first."""
    head = f"{'measurement':<26} {'unit':>8} " + " ".join(f"{f'{n} thread' + ('s' if n > 1 else ''):>11}" for n in threads)
    head += f" {'speed-up':>9}"
    lines = [head, "-" * len(head)]
    for row in rows:
        vals = " ".join(f"{row[n]:11.1f}" for n in threads)
        lines.append(f"{row['what']:<26} {row['unit']:>8} {vals} {row[threads[-1]] / row[threads[0]]:8.2f}x")
    return "\n".join(lines)


def blas_name() -> str:
    info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return ", ".join(f"{i['internal_api']} {i.get('version') or ''} ({i['num_threads']} threads max)".strip() for i in info) or "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--decode-steps", type=int, default=8, help="0 skips the SmolLM2 decode measurement")
    args = ap.parse_args(argv)
    print(f"numpy {np.__version__}, BLAS: {blas_name()}, {platform.machine()}")
    model = smollm2_model() if args.decode_steps else None
    rows = run(tuple(args.threads), tuple(args.sizes), decode_steps=args.decode_steps, model=model)
    print(format_table(rows, tuple(args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
