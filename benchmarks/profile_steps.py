"""Where the time of a batch-1 decode step (SmolLM2-135M) and of a training step (the GPT of
``benchmarks/train_throughput.py``) goes, as shares of the step.

    python benchmarks/profile_steps.py decode [--steps 32] [--prompt-tokens 128] [--threads 1]
    python benchmarks/profile_steps.py train [--threads 1 2] [--steps 3] [--batch 16]

``decode``: times plain decode steps, then the same step's weight products alone (``x @ W`` for
every matrix a step reads, on the same BLAS threads): the gap between the two is the work that
is not streaming weights. The fp32 ceiling is ``weight bytes / bandwidth`` with the bandwidth
of those products on the step's threads (``benchmarks/decode_speed.py`` takes the best of 1 and
2 threads). A cProfile of the steps splits the rest by function (the
matrix products themselves are operators inside ``Llama._forward``, so they show up in its
own time).

``train``: a cProfile of training steps at each thread count, summed by source file (the
``@`` inside a layer's forward/backward counts for that layer's file), and how much faster
each part gets with more threads.

Both print shares of one run next to each other, which survive other load on the machine
better than absolute times. On one thread the times (and the profiles) are the process's CPU
time, so time slices taken by other jobs are not counted; with more threads they are wall
time. Still, run it on an idle machine for figures to quote.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402


def _clock(threads: int):
    """CPU time of this process on one thread: time slices lost to other jobs on a shared machine are
    not counted (a thread stalled on memory still counts); wall time with more threads."""
    return time.process_time if threads == 1 else time.perf_counter


def _median_time(fn, n: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(n):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def _top(profile: cProfile.Profile, total: float, n: int, root: str) -> list[tuple[str, float]]:
    """The n functions with the most own time, as (name, share of ``total``)."""
    rows = []
    for (file, line, name), (_, _, tottime, _, _) in pstats.Stats(profile).stats.items():
        where = os.path.relpath(file, root) if file.startswith(root) else os.path.basename(file)
        rows.append((f"{where}:{name}" if line else name, tottime / total))
    return sorted(rows, key=lambda r: -r[1])[:n]


def profile_decode(args) -> None:
    from decode_speed import matvec_bandwidth, prompt_ids, weight_bytes_per_token, weight_matrices
    from tinyllm.evaluate import stream_bandwidth

    from tinyllm.generate import decode_step, prefill
    from tinyllm.models.smollm2 import load_smollm2
    from tinyllm.threads import limit_blas_threads

    os.environ["TINYLLM_DECODE_THREADS"] = str(args.threads)
    model, tok = load_smollm2("cpu")
    ids = prompt_ids(tok, args.prompt_tokens)[0]
    n = args.steps
    _, cache = prefill(model, [ids], max_new_tokens=3 * n + 8)
    token = [int(ids[-1])]

    def step():
        decode_step(model, cache, token)

    step()                                                          # warm-up
    # the weight products alone: every matrix a step reads, at (1, 1, IN) @ (IN, OUT), same threads
    C = model.config.dim
    mats = weight_matrices(model)
    xs = [np.ones((1, 1, m.shape[0]), dtype=np.float32) for m in mats]
    assert all(x.shape[-1] == m.shape[0] for x, m in zip(xs, mats)) and mats[-1].shape[0] == C

    def products():
        with limit_blas_threads(args.threads):
            for x, m in zip(xs, mats):
                x @ m

    products()
    clock = _clock(args.threads)
    t_step, t_mm = [], []
    for _ in range(3):                                              # interleaved: load hits both alike
        t_step.append(_median_time(step, n // 3 or 1, clock))
        t_mm.append(_median_time(products, n // 3 or 1, clock))
    t_step, t_mm = statistics.median(t_step), statistics.median(t_mm)
    t_limit = _median_time(lambda: _enter_exit(limit_blas_threads(args.threads)), 50)
    bw = max(matvec_bandwidth(mats).values())                       # wall time, best of 1 and 2 threads
    bw_own = stream_bandwidth(mats, threads=args.threads, clock=clock) / 1e9   # the step's threads and clock
    nbytes = weight_bytes_per_token(model)
    ceiling = nbytes / (bw_own * 1e9)
    print(f"decode step of SmolLM2-135M (fp32), batch 1, context {len(ids)}+, "
          f"{args.threads} BLAS thread(s), median of {n}, {'CPU' if args.threads == 1 else 'wall'} time:")
    print(f"  weights read per token {nbytes / 1e6:.0f} MB; the step's products stream {bw_own:.1f} GB/s on "
          f"{args.threads} thread(s) -> ceiling {ceiling * 1e3:.1f} ms/token (decode_speed.py's ceiling, "
          f"wall time and the best of 1 and 2 threads: {bw:.1f} GB/s)")
    print(f"  step {t_step * 1e3:.1f} ms = {ceiling / t_step:.0%} of the ceiling")
    print(f"  the {len(mats)} weight products alone {t_mm * 1e3:.1f} ms = {t_mm / t_step:.0%} of the step "
          f"({nbytes / t_mm / 1e9:.1f} GB/s)")
    print(f"  everything else {(t_step - t_mm) * 1e3:.1f} ms = {(t_step - t_mm) / t_step:.0%} of the step; "
          f"entering+leaving the BLAS thread limit once: {t_limit * 1e6:.0f} us")

    kinds = {"wqkv": [], "wo": [], "wgu": [], "wdown": []}
    for blk in model.blocks:
        for kind, group in kinds.items():
            group.append(getattr(blk, kind).data)
    kinds["head"] = [mats[-1]]
    parts = []
    for kind, group in kinds.items():
        gx = [np.ones((1, 1, m.shape[0]), dtype=np.float32) for m in group]

        def run(gx=gx, group=group):
            with limit_blas_threads(args.threads):
                for x, m in zip(gx, group):
                    x @ m

        run()
        t = _median_time(run, max(n // 3, 3), clock)
        size = sum(m.nbytes for m in group)
        parts.append(f"{kind} {size / len(group) / 1e6:.1f} MB x{len(group)}: {size / t / 1e9:.1f} GB/s")
    print("  the products by matrix (size, bandwidth): " + "; ".join(parts))

    prof = cProfile.Profile(clock)
    prof.enable()
    for _ in range(n):
        step()
    prof.disable()
    stats = pstats.Stats(prof)
    total = sum(v[2] for v in stats.stats.values())
    print(f"  cProfile of {n} steps ({stats.total_calls / n:.0f} function calls a step, Python and C), "
          f"own time by function (share of the profiled time):")
    for name, share in _top(prof, total, args.top, str(Path(__file__).resolve().parents[1])):
        print(f"    {share:6.1%}  {name}")


def _enter_exit(ctx) -> None:
    with ctx:
        pass


def profile_train(args) -> None:
    from threadpoolctl import threadpool_limits
    from train_throughput import build_tinyllm

    from tinyllm.models.gpt import GPTConfig

    cfg = GPTConfig.preset(args.preset)
    B, T = args.batch, cfg.context_length
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, size=(B, T))
    y = rng.integers(0, cfg.vocab_size, size=(B, T))
    root = str(Path(__file__).resolve().parents[1])
    by_file: dict[int, dict[str, float]] = {}
    steps: dict[int, float] = {}
    print(f"training step of GPT preset {args.preset!r} ({cfg}), batch {B} x {T}, float32")
    for threads in args.threads:
        with threadpool_limits(limits=threads, user_api="blas"):
            step = build_tinyllm(cfg, 1e-3)
            step(x, y)                                              # warm-up
            steps[threads] = _median_time(lambda: step(x, y), args.steps)
            prof = cProfile.Profile(_clock(threads))
            prof.enable()
            for _ in range(args.steps):
                step(x, y)
            prof.disable()
        acc: dict[str, float] = defaultdict(float)
        for (file, _, name), (_, _, tottime, _, _) in pstats.Stats(prof).stats.items():
            if file.startswith(root):
                key = os.path.relpath(file, root)
            elif file == "~":
                key = f"(builtin) {name}"
            else:
                key = "(other Python) " + os.path.basename(file)
            acc[key] += tottime / args.steps
        by_file[threads] = acc
        if threads == args.threads[0]:
            profiled = sum(v[2] for v in pstats.Stats(prof).stats.values())
            print(f"  {threads} thread(s), own time by function (share of the profiled time):")
            for name, share in _top(prof, profiled, args.top, root):
                print(f"    {share:6.1%}  {name}")
    first = args.threads[0]
    total = {t: sum(acc.values()) for t, acc in by_file.items()}
    print("  step time (median, unprofiled): " + ", ".join(f"{t} thread(s) {s * 1e3:.0f} ms" for t, s in steps.items()))
    head = "".join(f"{f'share @{t}':>11}" for t in args.threads)
    speed = "".join(f"{f'x @{t}':>8}" for t in args.threads[1:])
    print(f"  own time per step, by file:{head}{speed}")
    keys = sorted(by_file[first], key=lambda k: -by_file[first][k])[:args.top]
    for k in keys:
        shares = "".join(f"{by_file[t].get(k, 0.0) / total[t]:11.1%}" for t in args.threads)
        ups = "".join(f"{by_file[first][k] / max(by_file[t].get(k, 0.0), 1e-12):8.2f}" for t in args.threads[1:])
        print(f"    {k[:36]:36}{shares}{ups}")
    for t in args.threads[1:]:
        print(f"  whole profiled step: {total[first] / total[t]:.2f}x faster with {t} threads than with {first}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    d = sub.add_parser("decode", help="a batch-1 decode step of SmolLM2-135M")
    d.add_argument("--steps", type=int, default=30)
    d.add_argument("--prompt-tokens", type=int, default=128)
    d.add_argument("--threads", type=int, default=1, help="BLAS threads of the step (TINYLLM_DECODE_THREADS)")
    d.add_argument("--top", type=int, default=14)
    t = sub.add_parser("train", help="a training step of benchmarks/train_throughput.py's GPT")
    t.add_argument("--preset", default="bench")
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    t.add_argument("--steps", type=int, default=3)
    t.add_argument("--top", type=int, default=14)
    args = ap.parse_args(argv)
    profile_decode(args) if args.what == "decode" else profile_train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
