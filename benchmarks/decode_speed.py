"""Decode and prefill speed of tinyllm on SmolLM2-135M, against HF transformers and llama.cpp.

    python benchmarks/decode_speed.py [--repeats 3] [--new-tokens 64] [--prompt-tokens 128] [--no-hf] [--no-llamacpp]

Batch-1 decoding is memory bound: every token reads every weight once. The
script first measures the memory bandwidth an fp32 matrix-vector product
reaches on this machine (a 100+ MB matrix, larger than any cache) and turns it
into a ceiling: ``bandwidth / bytes of weights read per token``. Each engine is
then timed ``--repeats`` times and the medians are reported, with ratios.
Timings vary on a shared machine: run it more than once.
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


def matvec_bandwidth(repeats: int = 20) -> float:
    """GB/s streamed by ``x @ W`` with W (IN, OUT) float32 of 113 MB (the tied head), the best of 1 and 2
    BLAS threads (the ceiling is what the hardware allows, whichever setting reaches it)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    w = rng.standard_normal((576, 49152), dtype=np.float32)        # (IN, OUT)
    x = rng.standard_normal((1, 576), dtype=np.float32)            # (1, IN)
    best = 0.0
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            x @ w
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                x @ w
                times.append(time.perf_counter() - t)
        best = max(best, w.nbytes / statistics.median(times) / 1e9)
    return best


def weight_bytes_per_token(model) -> int:
    """Bytes of weights a batch-1 decode step reads: every matrix once (embedding: one row, ignored)."""
    total = 0
    for name, p in model.named_parameters():
        if name != "tok_embd":
            total += p.data.nbytes
    return total + model.tok_embd.data.nbytes                      # the tied head reads all of E


def prompt_ids(tokenizer, n: int) -> list[int]:
    text = ("The history of computing is a story of ideas becoming machines. " * 40)
    ids = tokenizer.encode(text)
    return ids[:n]


def bench_tinyllm(model, ids, new_tokens):
    from tinyllm.generate import decode_step, prefill

    t0 = time.perf_counter()
    logits, cache = prefill(model, np.array([ids]), max_new_tokens=new_tokens)
    t1 = time.perf_counter()
    nxt = logits.argmax(-1)
    t2 = time.perf_counter()
    for _ in range(new_tokens):
        nxt = decode_step(model, cache, nxt).argmax(-1)
    t3 = time.perf_counter()
    return len(ids) / (t1 - t0), new_tokens / (t3 - t2)


def bench_hf(model, ids, new_tokens):
    import torch

    x = torch.tensor([ids])
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(x, use_cache=True)
        t1 = time.perf_counter()
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t2 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t3 = time.perf_counter()
    return len(ids) / (t1 - t0), new_tokens / (t3 - t2)


def bench_llamacpp(llm, ids, new_tokens):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t2 = time.perf_counter()
    for _ in range(new_tokens):
        llm.eval([nxt])
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t3 = time.perf_counter()
    return len(ids) / (t1 - t0), new_tokens / (t3 - t2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--no-hf", action="store_true", help="skip HF transformers (its load takes ~15 s)")
    ap.add_argument("--no-llamacpp", action="store_true")
    args = ap.parse_args(argv)

    from tinyllm.models.smollm2 import load_smollm2, model_path

    t = time.perf_counter()
    model, tok = load_smollm2("cpu")
    load_s = time.perf_counter() - t
    ids = prompt_ids(tok, args.prompt_tokens)
    bw = statistics.median(matvec_bandwidth() for _ in range(3))
    nbytes = weight_bytes_per_token(model)
    ceiling = bw * 1e9 / nbytes
    print(f"fp32 matvec bandwidth: {bw:.1f} GB/s; weights read per token: {nbytes / 1e6:.0f} MB; "
          f"ceiling {ceiling:.1f} tok/s")
    print(f"tinyllm load (until ready to generate): {load_s:.2f} s")

    results = {}
    runs = [bench_tinyllm(model, ids, args.new_tokens) for _ in range(args.repeats)]
    results["tinyllm"] = [statistics.median(r[i] for r in runs) for i in (0, 1)]

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
            best = None
            for threads in sorted({1, os.cpu_count() or 2}):   # report the peer at its best thread count
                torch.set_num_threads(threads)
                runs = [bench_hf(hf, ids, args.new_tokens) for _ in range(args.repeats)]
                med = [statistics.median(r[i] for r in runs) for i in (0, 1)]
                print(f"transformers with {threads} thread(s): prefill {med[0]:.1f}, decode {med[1]:.1f} tok/s")
                best = med if best is None else [max(a, b) for a, b in zip(best, med)]
            results["transformers"] = best
            del hf
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
            runs = [bench_llamacpp(llm, ids, args.new_tokens) for _ in range(args.repeats)]
            results["llama.cpp"] = [statistics.median(r[i] for r in runs) for i in (0, 1)]

    print("(tinyllm runs BLAS on TINYLLM_DECODE_THREADS threads, default 1, in prefill and decode)")
    ours_p, ours_d = results["tinyllm"]
    print(f"\nmedians of {args.repeats} runs; prompt {len(ids)} tokens, {args.new_tokens} new tokens, batch 1")
    print(f"{'engine':<14}{'prefill tok/s':>15}{'decode tok/s':>14}{'tinyllm/engine (decode)':>26}{'(prefill)':>11}")
    for name, (p, d) in results.items():
        print(f"{name:<14}{p:>15.1f}{d:>14.1f}{ours_d / d:>26.2f}{ours_p / p:>11.2f}")
    print(f"\ntinyllm decode = {ours_d / ceiling:.0%} of the fp32 bandwidth ceiling ({ceiling:.1f} tok/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
