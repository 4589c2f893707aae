"""Time to first token of each chat turn, with the KV cache kept across turns and without it.

    python benchmarks/chat_latency.py [--turns 10] [--message-tokens 24] [--reply-tokens 24]

``ChatSession`` keeps its cache, so turn n prefills only the new tokens (the template around
the message, the message, and at most one reply token not fed yet). "Re-read" empties the
cache before each turn, which is what the chat did before: it prefills the whole conversation.
All messages have the same number of tokens, so turn 10 should cost about what turn 1 costs.
Greedy replies; both modes give the same replies. A turn's TTFT is the best of
``--repeats`` prefills of it. Timings vary on a shared machine: the ratios within one run
are what to compare.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def messages(tokenizer, n_turns: int, n_tokens: int) -> list[str]:
    """``n_turns`` different user messages of exactly ``n_tokens`` tokens each."""
    topics = ["rivers", "mountains", "bread", "bridges", "owls", "glass", "tides", "maps", "bees", "clocks",
              "salt", "kites", "moss", "ink", "wolves", "paper"]
    out = []
    for i in range(n_turns):
        words = (f"Tell me one short fact about {topics[i % len(topics)]} and say why it matters to people "
                 "who live near them today, in one or two sentences please. ").split()
        text = ""
        for w in words * 4:
            longer = (text + " " + w).strip()
            if len(tokenizer.encode(longer)) > n_tokens:
                break
            text = longer
        while len(tokenizer.encode(text)) < n_tokens:
            text += "!"
        out.append(text)
    return out


def trial_ttft(chat, text: str) -> float:
    """TTFT of sending ``text`` now, measured on a shallow copy that leaves ``chat`` as it was
    (``send`` replaces its lists rather than changing them; the shared cache is rewound)."""
    import copy

    from tinyllm.generate import rewind_cache

    trial = copy.copy(chat)
    trial.rng, trial.max_new_tokens = copy.deepcopy(chat.rng), 1
    filled = chat.cache.length if chat.cache is not None else 0
    trial.send(text)
    if chat.cache is not None:
        rewind_cache(chat.cache, filled)
    return trial.last_turn.ttft_s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--message-tokens", type=int, default=24)
    ap.add_argument("--reply-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3,
                    help="TTFT of a turn is the best of this many prefills of it (noise on a shared machine)")
    ap.add_argument("--threads", type=int, default=0,
                    help="limit BLAS to this many threads for the whole run (0: as the library does). On a loaded "
                         "machine a 2-thread prefill can be several times slower than a 1-thread one")
    args = ap.parse_args(argv)

    from tinyllm.chat_cli import _warm_up
    from tinyllm.chat import ChatSession
    from tinyllm.generate import rewind_cache
    from tinyllm.models.smollm2 import load_smollm2

    if args.threads > 0:                       # after NumPy has loaded its BLAS: before, there is nothing to limit
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads, user_api="blas")

    model, tok = load_smollm2("cpu")
    _warm_up(model)
    texts = messages(tok, args.turns, args.message_tokens)
    print(f"{args.turns} turns, messages of {args.message_tokens} tokens, replies of up to {args.reply_tokens} "
          f"tokens (greedy); BLAS threads: {args.threads or 'library default'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    rows = {}
    replies = {}
    for mode in ("kept cache", "re-read"):
        chat = ChatSession(model, tok, max_new_tokens=args.reply_tokens)
        rows[mode], replies[mode] = [], []
        for text in texts:
            if mode == "re-read" and chat.cache is not None:
                rewind_cache(chat.cache, 0)            # what the chat did before: read everything again
            trials = [trial_ttft(chat, text) for _ in range(args.repeats - 1)]
            replies[mode].append(chat.send(text))
            t = chat.last_turn
            rows[mode].append((t.prefill_tokens, min([t.ttft_s, *trials]), len(chat.ids)))
    print(f"\n{'turn':>4} | {'kept cache: prefilled':>21} {'TTFT s':>7} | {'re-read: prefilled':>18} {'TTFT s':>7} "
          f"| {'conversation':>12}")
    for i in range(args.turns):
        (pk, tk, n), (pr, tr, _) = rows["kept cache"][i], rows["re-read"][i]
        print(f"{i + 1:>4} | {pk:>21} {tk:>7.3f} | {pr:>18} {tr:>7.3f} | {n:>12}")
    first, last = rows["kept cache"][0][1], rows["kept cache"][-1][1]
    print(f"\nkept cache: TTFT turn {args.turns} / turn 1 = {last:.3f} s / {first:.3f} s = {last / first:.2f}x "
          f"(goal <= 1.5x)")
    first_r, last_r = rows["re-read"][0][1], rows["re-read"][-1][1]
    print(f"re-read:    TTFT turn {args.turns} / turn 1 = {last_r:.3f} s / {first_r:.3f} s = {last_r / first_r:.2f}x")
    print(f"same replies in both modes: {replies['kept cache'] == replies['re-read']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
