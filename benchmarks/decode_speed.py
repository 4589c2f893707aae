"""Decode and prefill speed of tinyllm on SmolLM2-135M, against HF transformers and llama.cpp.

    python benchmarks/decode_speed.py [--repeats 3] [--new-tokens 64] [--prompt-tokens 128] [--batch 8]
                                      [--no-hf] [--no-llamacpp]

Batch-1 decoding is memory bound: every token reads every weight once. The ceiling is
``bandwidth / bytes of weights read per token``, with the bandwidth of the decode step's own
weight products: ``x @ W`` over every matrix a token reads (the model's real matrices and
shapes, 538 MB of fp32 for SmolLM2-135M), timed as one pass, the best of 1 and 2 BLAS
threads. The working set must be at least as large as the weights a token reads: a single
113 MB matrix, as this script used before, fits in a large L3 cache (260 MiB on some of the
course's machines) and then measures the cache, not DRAM (a "ceiling" of 99.5 tok/s there).

Everything is measured in alternating rounds (``--repeats``): each round times the ceiling,
tinyllm on one BLAS thread and on every core (``TINYLLM_DECODE_THREADS=1`` and ``=0``, with
prefill limited alike, as transformers is with ``torch.set_num_threads``), batched decoding
(``--batch`` prompts at once, aggregate tok/s) and the other engines once; the medians of the
rounds, and the medians of each round's ratios, are reported. On a shared machine the absolute
figures are inflated by the other jobs, which hit every engine alike within a round: read the
ratios. It prints the ratios the inference engine is judged by: decode against the ceiling (at
the best thread setting), batched against batch-1 aggregate tok/s, and prefill against
transformers. Each prefill is timed three times per round and engine, and the fastest kept.
transformers prefills as its ``generate()`` does, computing only the last position's logits
(``logits_to_keep=1``), which is also what tinyllm computes; the run with every position's
logits (a plain ``model(x)``) is printed beside it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SETTINGS = {"1 thread": "1", "all cores": "0"}   # TINYLLM_DECODE_THREADS of each tinyllm run


def weight_matrices(model) -> list:
    """Every weight matrix a decode step multiplies by, in order: each block's wqkv, wo, wgu, wdown, then the head."""
    mats = [m for blk in model.blocks for m in (blk.wqkv.data, blk.wo.data, blk.wgu.data, blk.wdown.data)]
    mats.append(model.tok_embd.data.T if model.head is None else model.head.data)      # (C, V)
    return mats


def weight_bytes_per_token(model) -> int:
    """Bytes of weights a batch-1 decode step reads: every matrix once (embedding: one row, ignored)."""
    total = 0
    for name, p in model.named_parameters():
        if name != "tok_embd":
            total += p.data.nbytes
    return total + model.tok_embd.data.nbytes                      # the tied head reads all of E


def matvec_bandwidth(mats: list, repeats: int = 5) -> dict[int, float]:
    """GB/s of a decode step's weight products (:func:`tinyllm.evaluate.stream_bandwidth`) on 1 and on 2 BLAS threads."""
    from tinyllm.evaluate import stream_bandwidth

    return {threads: stream_bandwidth(mats, threads=threads, repeat=repeats) / 1e9 for threads in (1, 2)}


def prompt_ids(tokenizer, n: int, rows: int = 1) -> list[list[int]]:
    """``rows`` prompts of ``n`` tokens each, windows of one text starting 7 tokens apart."""
    text = ("The history of computing is a story of ideas becoming machines. " * 60)
    ids = tokenizer.encode(text)
    return [ids[7 * r:7 * r + n] for r in range(rows)]


PREFILLS = 3   # prefills timed per round and engine, the fastest kept: one 0.2 s prefill is at the mercy of noise
SETTLE_S = 0.5  # pause between engines: OpenBLAS's and OpenMP's idle threads spin for a while after a call


def best_time(fn, repeats: int = PREFILLS):
    """(the fastest of ``repeats`` timed calls of ``fn()``, the last call's result)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_tinyllm(model, rows, new_tokens):
    """(prefill tok/s, decode tok/s) of ``rows`` prompts at once (all tokens of all rows: aggregate)."""
    from tinyllm.generate import decode_step, prefill

    prefill_s, (logits, cache) = best_time(lambda: prefill(model, np.array(rows), max_new_tokens=new_tokens))
    nxt = logits.argmax(-1)                                        # (B,)
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        nxt = decode_step(model, cache, nxt).argmax(-1)
    t1 = time.perf_counter()
    return len(rows) * len(rows[0]) / prefill_s, len(rows) * new_tokens / (t1 - t0)


def bench_hf(model, ids, new_tokens, *, all_logits: bool = False):
    """transformers' (prefill tok/s, decode tok/s). Its prefill computes the logits of the last position
    only (``logits_to_keep=1``, as ``generate()`` does and as tinyllm does), or with ``all_logits`` of
    every position (a plain ``model(x)``: 7.2 GFLOP more for 128 tokens of SmolLM2)."""
    import torch

    x = torch.tensor([ids])
    keep = {} if all_logits else {"logits_to_keep": 1}
    with torch.no_grad():
        prefill_s, out = best_time(lambda: model(x, use_cache=True, **keep))
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(nxt, cache=out.cache, use_cache=True)       # transformers 5: ``cache``, not past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t1 = time.perf_counter()
    return len(ids) / prefill_s, new_tokens / (t1 - t0) if new_tokens else float("nan")


def bench_llamacpp(llm, ids, new_tokens):
    def prefill():
        llm.reset()
        llm.eval(ids)

    prefill_s, _ = best_time(prefill)
    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        llm.eval([nxt])
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t1 = time.perf_counter()
    return len(ids) / prefill_s, new_tokens / (t1 - t0)


def _with_threads(value: str, fn):
    """Run ``fn()`` with ``TINYLLM_DECODE_THREADS=value`` and BLAS limited to as many threads (prefill too,
    as ``torch.set_num_threads`` limits transformers; ``"0"``: no limit), then restore the environment."""
    from threadpoolctl import threadpool_limits

    saved = os.environ.get("TINYLLM_DECODE_THREADS")
    os.environ["TINYLLM_DECODE_THREADS"] = value
    try:
        with threadpool_limits(int(value) or None, user_api="blas"):
            return fn()
    finally:
        if saved is None:
            del os.environ["TINYLLM_DECODE_THREADS"]
        else:
            os.environ["TINYLLM_DECODE_THREADS"] = saved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8, help="prompts decoded at once for the batched figure")
    ap.add_argument("--no-hf", action="store_true", help="skip HF transformers (its load takes ~15 s)")
    ap.add_argument("--no-llamacpp", action="store_true")
    args = ap.parse_args(argv)

    from tinyllm.models.smollm2 import load_smollm2, model_path
    from tinyllm.threads import decode_threads

    t = time.perf_counter()
    model, tok = load_smollm2("cpu")
    load_s = time.perf_counter() - t
    default = decode_threads()                                     # decided now, before our own runs load the CPU
    ids = prompt_ids(tok, args.prompt_tokens)                      # one row
    batch = prompt_ids(tok, args.prompt_tokens, args.batch)        # B rows
    mats = weight_matrices(model)
    nbytes = weight_bytes_per_token(model)
    print(f"tinyllm load (until ready to generate): {load_s:.2f} s")
    print(f"weights read per token: {nbytes / 1e6:.0f} MB; the ceiling's working set: {len(mats)} matrices, "
          f"{sum(m.nbytes for m in mats) / 1e6:.0f} MB")

    engines = {}                                                   # name -> fn() -> (prefill tok/s, decode tok/s)
    for name, value in SETTINGS.items():
        engines[f"tinyllm {name}"] = lambda v=value: _with_threads(
            v, lambda: bench_tinyllm(model, ids, args.new_tokens))
    for name, value in SETTINGS.items():
        engines[f"tinyllm batch {args.batch} {name}"] = lambda v=value: _with_threads(
            v, lambda: bench_tinyllm(model, batch, args.new_tokens))
    if not args.no_hf:
        try:
            import torch
            from transformers import AutoModelForCausalLM
        except ImportError:
            print("transformers/torch not installed: skipped")
        else:
            path = model_path()
            t = time.perf_counter()
            hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                      dtype=torch.float32).eval()
            print(f"transformers load: {time.perf_counter() - t:.1f} s")

            def run_hf(threads, all_logits=False):
                torch.set_num_threads(threads)
                return bench_hf(hf, ids[0], 0 if all_logits else args.new_tokens, all_logits=all_logits)

            for threads in sorted({1, os.cpu_count() or 2}):       # the peer at each thread count
                engines[f"transformers {threads} thr"] = lambda n=threads: run_hf(n)
            for threads in sorted({1, os.cpu_count() or 2}):       # prefill with every position's logits too
                engines[f"transformers {threads} thr all logits"] = lambda n=threads: run_hf(n, True)
    if not args.no_llamacpp:
        try:
            import llama_cpp
        except ImportError:
            print("llama-cpp-python not installed: skipped")
        else:
            t = time.perf_counter()
            llm = llama_cpp.Llama(model_path=model_path(), n_ctx=512, n_threads=os.cpu_count() or 2,
                                  n_batch=512, logits_all=False, verbose=False)
            print(f"llama.cpp load: {time.perf_counter() - t:.2f} s")
            engines["llama.cpp"] = lambda: bench_llamacpp(llm, ids[0], args.new_tokens)

    runs = {name: [] for name in engines}
    bandwidth = {1: [], 2: []}
    for r in range(args.repeats):                                  # alternating rounds: load hits all alike
        for threads, gbs in matvec_bandwidth(mats).items():
            bandwidth[threads].append(gbs)
        for name, fn in engines.items():
            time.sleep(SETTLE_S)                                   # the last engine's idle threads stop spinning
            runs[name].append(fn())
        gbs = ", ".join(f"{t} thr {v[-1]:.1f}" for t, v in bandwidth.items())
        toks = "; ".join(f"{n} {v[-1][0]:.0f}, {v[-1][1]:.1f}" for n, v in runs.items())
        print(f"round {r + 1}/{args.repeats}: bandwidth {gbs} GB/s; prefill, decode tok/s: {toks}", flush=True)
    results = {name: [statistics.median(x[i] for x in rs) for i in (0, 1)] for name, rs in runs.items()}
    bw = {threads: statistics.median(v) for threads, v in bandwidth.items()}
    best_threads = max(bw, key=bw.get)
    ceiling = bw[best_threads] * 1e9 / nbytes

    print(f"\nmedians of {args.repeats} alternating rounds; prompt {len(ids[0])} tokens, {args.new_tokens} new tokens")
    print("ceiling: a decode step's weight products alone ("
          + ", ".join(f"{t} thread(s) {g:.1f} GB/s" for t, g in bw.items()) + f") -> best {bw[best_threads]:.1f} GB/s / {nbytes / 1e6:.0f} MB = {ceiling:.1f} tok/s")
    print(f"{'engine':<28}{'prefill tok/s':>15}{'decode tok/s':>14}")
    for name, (p, d) in results.items():
        print(f"{name:<28}{p:>15.1f}{d:>14.1f}")

    single = {name: results[f"tinyllm {name}"] for name in SETTINGS}
    best = max(single, key=lambda n: single[n][1])
    print(f"\ntinyllm's default decode threads here: {default or 'all cores'} "
          "(TINYLLM_DECODE_THREADS, see tinyllm.threads.decode_threads)")

    def ratio(num, den):          # the median of the rounds' ratios: each round's load hits both alike
        return statistics.median(n / d for n, d in zip(num, den))

    def decode(name):
        return [r[1] for r in runs[name]]

    ceilings = [g * 1e9 / nbytes for g in map(max, zip(*bandwidth.values()))]   # each round's best of 1 and 2
    print(f"(ratios below: the median of the {args.repeats} rounds' ratios)")
    print(f"single-stream decode, best setting ({best}): {single[best][1]:.1f} tok/s = "
          f"{ratio(decode(f'tinyllm {best}'), ceilings):.0%} of the ceiling")
    for name in SETTINGS:
        r = ratio(decode(f"tinyllm batch {args.batch} {name}"), decode(f"tinyllm {name}"))
        print(f"batched decode, {name}: batch {args.batch} aggregate tok/s = {r:.2f}x batch 1")
    hf = [name for name in results if name.startswith("transformers") and not name.endswith("all logits")]
    if hf:
        def best_of(names, i):
            return [max(runs[n][k][i] for n in names) for k in range(args.repeats)]

        ours = [f"tinyllm {name}" for name in SETTINGS]
        hf_all = [f"{name} all logits" for name in hf]
        print(f"prefill, best setting of each: tinyllm / transformers = {ratio(best_of(ours, 0), best_of(hf, 0)):.2f}x "
              f"(both compute the last position's logits; against transformers computing every position's, "
              f"as a plain model(x) does: {ratio(best_of(ours, 0), best_of(hf_all, 0)):.2f}x)")
        print(f"decode, best setting of each: tinyllm / transformers = {ratio(best_of(ours, 1), best_of(hf, 1)):.2f}x")
    if "llama.cpp" in results:
        print(f"decode: tinyllm / llama.cpp = {ratio(decode(f'tinyllm {best}'), decode('llama.cpp')):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
