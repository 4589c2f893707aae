"""Speculative decoding against plain greedy decoding on SmolLM2-135M, in one run.

    python benchmarks/speculative.py [--new-tokens 64] [--k 8] [--draft-layers 8] [--threads 1]

Two prompt sets, each in the chat template: one where the reply copies from the prompt
(edit or repeat a given text or code) and one where it does not (open questions). For each
prompt: plain greedy decoding (``stream_generate``), then speculative decoding with each
drafter (``tinyllm.speculative``): prompt lookup, and an early-exit draft (SmolLM2's first
``--draft-layers`` blocks with its final norm and head). Every speculative output is checked
to be the greedy output. Decode speed is measured from the first token to the last (the
prefill is the same for all and is left out). It also prints what one verification pass of
k + 1 tokens costs against a one-token step, which decides how many drafts must be accepted
to win. Timings vary on a shared machine: compare the ratios within one run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

CODE = '''def total_price(items, tax_rate):
    total = 0
    for item in items:
        total = total + item.price * item.quantity
    total = total * (1 + tax_rate)
    return round(total, 2)
'''
TEXT = ("The library opens at nine in the morning and closes at six in the evening. Visitors may borrow "
        "up to five books at a time for three weeks. Books can be renewed once, online or at the front "
        "desk, unless another reader has reserved them.")
COPYING = [
    f"Rename the variable `total` to `amount` in this code and show the whole code:\n\n{CODE}",
    f"Add a docstring to this function and show the whole function:\n\n{CODE}",
    f"Fix the spelling and repeat the text: {TEXT.replace('morning', 'mornin').replace('borrow', 'borow')}",
    f"Repeat this text word for word, then stop: {TEXT}",
]
OPEN = [
    "Write a short poem about the sea.",
    "Why is the sky blue? Explain it to a child.",
    "Give me three ideas for a birthday party.",
    "What are the benefits of learning a second language?",
]


def timed(gen):
    """Run a token generator; (tokens, seconds from the first token to the last)."""
    tokens, first = [], None
    for t in gen:
        tokens.append(t)
        if first is None:
            first = time.perf_counter()
    return tokens, (time.perf_counter() - first) if first else 0.0


def verify_cost(model, k: int, repeats: int = 5) -> float:
    """Median time of a (k+1)-token pass over a cache, over that of a 1-token step."""
    from tinyllm.generate import prefill, rewind_cache
    from tinyllm.threads import decode_threads, limit_blas_threads

    _, cache = prefill(model, [list(range(100, 300))], max_len=220)
    out = {}
    for T in (1, k + 1, 1, k + 1):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            with limit_blas_threads(decode_threads()):
                model.forward(np.arange(T)[None] + 400, cache=cache, last_only=T == 1)
            times.append(time.perf_counter() - t)
            rewind_cache(cache, 200)
        out[T] = float(np.median(times))
    return out[k + 1] / out[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=8, help="most draft tokens a pass (prompt lookup)")
    ap.add_argument("--draft-k", type=int, default=4, help="most draft tokens a pass (early-exit draft)")
    ap.add_argument("--draft-layers", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads for the whole run (0: library default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads, user_api="blas")

    from tinyllm.chat_cli import _warm_up
    from tinyllm.generate import stream_generate
    from tinyllm.models.smollm2 import load_smollm2
    from tinyllm.speculative import EarlyExitDraft, PromptLookup, SpecStats, speculative_generate
    from tinyllm.tokenizers.chat import apply_chat_template

    model, tok = load_smollm2("cpu")
    _warm_up(model)
    eos = [tok.encode("<|im_end|>")[0]]
    print(f"SmolLM2-135M, greedy, up to {args.new_tokens} new tokens; BLAS threads: {args.threads or 'default'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("one pass over T tokens costs, in one-token steps: " + ", ".join(
        f"T={k + 1}: {verify_cost(model, k):.2f}x" for k in (1, args.draft_k, args.k, 2 * args.k)))
    early = EarlyExitDraft(model, args.draft_layers)
    drafters = {f"lookup k={args.k}": (PromptLookup(), args.k),
                f"lookup k={2 * args.k}": (PromptLookup(), 2 * args.k),
                f"early exit {args.draft_layers}/{model.config.n_layers} k={args.draft_k}": (early, args.draft_k)}
    summary = []
    for set_name, prompts in (("copying", COPYING), ("open", OPEN)):
        print(f"\n== {set_name} set ==")
        print(f"{'prompt':>6} {'tokens':>6} {'plain tok/s':>11} | " + " | ".join(
            f"{name}: {'accept':>6} {'tok/s':>6} {'x':>5}" for name in drafters))
        total = {"plain": [0, 0.0], **{name: [0, 0.0, SpecStats()] for name in drafters}}
        for i, text in enumerate(prompts):
            ids = tok.encode(apply_chat_template([{"role": "user", "content": text}]))
            plain, t_plain = timed(stream_generate(model, ids, args.new_tokens, stop_ids=eos))
            total["plain"][0] += len(plain) - 1
            total["plain"][1] += t_plain
            cells = []
            for name, (drafter, k) in drafters.items():
                stats = SpecStats()
                got, t = timed(speculative_generate(model, ids, args.new_tokens, drafter, k=k, stop_ids=eos,
                                                    stats=stats))
                if got != plain:
                    raise SystemExit(f"{name} gave other tokens than greedy decoding on {set_name} prompt {i}")
                agg = total[name]
                agg[0] += len(got) - 1
                agg[1] += t
                for f in ("verify_passes", "drafted", "accepted", "plain_steps"):
                    setattr(agg[2], f, getattr(agg[2], f) + getattr(stats, f))
                cells.append(f"{stats.acceptance:>6.2f} {(len(got) - 1) / t:>6.1f} {t_plain / t:>5.2f}")
            print(f"{i:>6} {len(plain):>6} {(len(plain) - 1) / t_plain:>11.1f} | " + " | ".join(cells))
        rate_plain = total["plain"][0] / total["plain"][1]
        for name in drafters:
            n, t, st = total[name]
            summary.append(f"{set_name:>8} | {name:<25} | acceptance {st.acceptance:.2f} "
                           f"({st.accepted}/{st.drafted}), {st.verify_passes} verify passes, {st.plain_steps} plain "
                           f"steps | {n / t:.1f} tok/s against {rate_plain:.1f}: {n / t / rate_plain:.2f}x")
    print("\n== totals (all tokens of a set over all its decode time) ==")
    print("\n".join(summary))
    print("goal: >= 1.5x on the copying set, >= 0.95x on the open set; every output identical to greedy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
