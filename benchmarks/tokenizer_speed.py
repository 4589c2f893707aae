"""Training and encoding speed of tinyllm's byte-level BPE against HF `tokenizers`, in one process.

    python benchmarks/tokenizer_speed.py [--vocab-size 4096] [--repeats 3] [--threads 1]

Both train a byte-level BPE with GPT-2's pre-tokenizer on the same corpus (the cleaned pydoc text by
default) to the same vocabulary size, then encode the whole corpus. HF `tokenizers` is Rust and runs
its trainer on `--threads` threads (1 by default: like for like with tinyllm's single Python thread).
Times are the best of `--repeats` runs. Encoding is measured cold (empty cache) and warm (tinyllm
caches the ids of each distinct pre-token; HF keeps its own cache across repeats), as one string and
as a list of lines (HF `encode_batch`). Ratios are tinyllm time / HF time: above 1 means tinyllm is
slower.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_of(repeats, fn):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads for HF tokenizers (RAYON_NUM_THREADS)")
    parser.add_argument("--corpus", default="pydoc", help="'pydoc' or a path to a UTF-8 text file")
    args = parser.parse_args(argv)
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before tokenizers starts its thread pool

    import tokenizers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tinyllm.data import load_corpus
    from tinyllm.tokenizers.bpe import BPETokenizer

    text = load_corpus(args.corpus)
    n_bytes = len(text.encode("utf-8"))
    print(f"corpus: {args.corpus} ({n_bytes:,} bytes), vocab size {args.vocab_size}, best of {args.repeats}")
    print(f"python {platform.python_version()}, tokenizers {tokenizers.__version__}, HF threads {args.threads}, "
          f"{os.cpu_count()} CPUs")

    def train_ours():
        return BPETokenizer.train(text, args.vocab_size)

    def train_hf():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator([text], trainer)
        return tok

    t_train_ours, ours = best_of(args.repeats, train_ours)
    t_train_hf, hf = best_of(args.repeats, train_hf)

    def encode_ours_cold():
        ours._cache.clear()
        return ours.encode(text)

    t_enc_cold, ids_ours = best_of(args.repeats, encode_ours_cold)
    t_enc_warm, _ = best_of(args.repeats, lambda: ours.encode(text))
    t_enc_hf, enc_hf = best_of(args.repeats, lambda: hf.encode(text))
    assert ours.decode(ids_ours) == text and hf.decode(enc_hf.ids) == text
    lines = text.splitlines(keepends=True)
    t_lines_ours, lines_ours = best_of(args.repeats, lambda: [ours.encode(line) for line in lines])
    t_lines_hf, lines_hf = best_of(args.repeats, lambda: hf.encode_batch(lines))
    assert sum(map(len, lines_ours)) > 0 and len(lines_hf) == len(lines)

    rows = [
        ("train", t_train_ours, t_train_hf),
        ("encode (cold cache)", t_enc_cold, t_enc_hf),
        ("encode (warm cache)", t_enc_warm, t_enc_hf),
        (f"encode {len(lines):,} lines", t_lines_ours, t_lines_hf),
    ]
    print()
    print(f"{'task':<22}{'tinyllm s':>11}{'HF s':>9}{'ratio':>8}{'tinyllm MB/s':>14}{'HF MB/s':>10}")
    for name, ours_s, hf_s in rows:
        print(f"{name:<22}{ours_s:>11.3f}{hf_s:>9.3f}{ours_s / hf_s:>7.1f}x"
              f"{n_bytes / ours_s / 1e6:>14.2f}{n_bytes / hf_s / 1e6:>10.2f}")
    print()
    print(f"tokens for the corpus: tinyllm {len(ids_ours):,} ({n_bytes / len(ids_ours):.2f} bytes/token), "
          f"HF {len(enc_hf.ids):,} ({n_bytes / len(enc_hf.ids):.2f} bytes/token)")
    print("ratio = tinyllm time / HF time (above 1: tinyllm is slower; HF encodes lines with encode_batch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
