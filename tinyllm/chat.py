"""The ``tinyllm generate`` and ``tinyllm chat`` commands (SmolLM2-135M-Instruct).

    tinyllm generate "The capital of France is" --max-new-tokens 20 --stream --speed
    tinyllm chat --temperature 0.7 --top-p 0.9 --seed 1

``generate`` continues the prompt as plain text; ``chat`` wraps each line you
type in the model's chat template and keeps the conversation (type ``/exit``
or press Ctrl-D to leave, ``/reset`` to start over).
"""
from __future__ import annotations

import argparse
import sys
import time


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _float_in(low: float, high: float, *, low_open: bool = False, name: str = "value"):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = (value > low if low_open else value >= low) and value <= high
        if not ok:
            lo = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"{name} must be in {lo}{low}, {high}], got {value}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser, command: str = "generate") -> None:
    if command == "generate":
        parser.add_argument("prompt", help="the text to continue, as plain text (no chat template)")
    else:
        parser.add_argument("--system", default=None, help="an optional system message (default: none)")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=64 if command == "generate" else 256,
                        help="most tokens to generate" + ("" if command == "generate" else " per reply")
                        + " (default: %(default)s)")
    parser.add_argument("--temperature", type=_float_in(0.0, 100.0, name="temperature"), default=0.0,
                        help="0 = greedy, higher = more random (default: %(default)s)")
    parser.add_argument("--top-k", type=_non_negative_int, default=0,
                        help="sample among the k likeliest tokens, 0 = off (default: %(default)s)")
    parser.add_argument("--top-p", type=_float_in(0.0, 1.0, low_open=True, name="top-p"), default=1.0,
                        help="nucleus sampling: smallest set of tokens with this probability mass, 1 = off "
                             "(default: %(default)s)")
    parser.add_argument("--repetition-penalty", type=_float_in(0.0, 100.0, low_open=True, name="repetition penalty"),
                        default=1.0, help="CTRL repetition penalty, 1 = off (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for sampling (default: %(default)s)")
    parser.add_argument("--device", choices=["cpu", "gpu", "auto"], default=None,
                        help="where to run (default: TINYLLM_DEVICE, or auto)")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated (default: off)")
    parser.add_argument("--speed", "--show-speed", dest="speed", action="store_true",
                        help="print prefill and decode tokens/s at the end (default: off)")


def _load(device):
    from tinyllm.models.smollm2 import load_smollm2

    return load_smollm2(device)


def _sampling(args) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p,
                repetition_penalty=args.repetition_penalty)


class _Timer:
    """Counts the time to the first token (prefill + first sample) and the decode time after it."""

    def __init__(self):
        self.start = time.perf_counter()
        self.first = None
        self.n = 0

    def tick(self):
        self.n += 1
        if self.first is None:
            self.first = time.perf_counter()

    def report(self, n_prompt: int) -> str:
        end = time.perf_counter()
        if self.first is None:
            return f"[{n_prompt} prompt tokens, no new tokens in {end - self.start:.2f} s]"
        prefill = self.first - self.start
        decode = end - self.first
        rate = (self.n - 1) / decode if self.n > 1 and decode > 0 else float("nan")
        return (f"[prefill: {n_prompt} tokens in {prefill:.2f} s ({n_prompt / prefill:.1f} tokens/s); "
                f"decode: {self.n} tokens, {rate:.1f} tokens/s]")


def run(args: argparse.Namespace) -> int:
    from tinyllm.models.smollm2 import ModelNotInstalledError

    try:
        model, tokenizer = _load(args.device)
    except ModelNotInstalledError as exc:
        print(f"tinyllm {args.command}: {exc}", file=sys.stderr)
        return 1
    if args.command == "generate":
        return _generate(model, tokenizer, args)
    return _chat(model, tokenizer, args)


def _generate(model, tokenizer, args) -> int:
    from tinyllm.generate import TextStreamer, stream_generate

    ids = tokenizer.encode(args.prompt, allowed_special="all")
    if not ids:
        print("tinyllm generate: error: the prompt is empty", file=sys.stderr)
        return 2
    streamer = TextStreamer(tokenizer)
    timer = _Timer()
    eos = _eos_ids(tokenizer)
    if args.stream:
        print(args.prompt, end="", flush=True)
    for tid in stream_generate(model, ids, args.max_new_tokens, stop_ids=eos, seed=args.seed, **_sampling(args)):
        timer.tick()
        piece = streamer.push(tid)
        if args.stream and piece:
            print(piece, end="", flush=True)
    if args.stream:
        print(streamer.flush())
    else:
        print(args.prompt + tokenizer.decode(streamer.ids))
    if args.speed:
        print(timer.report(len(ids)), file=sys.stderr if args.stream else sys.stdout)
    return 0


def _chat(model, tokenizer, args) -> int:
    from tinyllm.generate import ChatSession

    session = ChatSession(model, tokenizer, system=args.system, max_new_tokens=args.max_new_tokens,
                          seed=args.seed, **_sampling(args))
    interactive = sys.stdin.isatty()
    if interactive:
        print("Chat with SmolLM2-135M-Instruct. /reset starts over, /exit (or Ctrl-D) leaves.")
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.messages = session.messages[:1] if args.system else []
            print("(conversation reset)")
            continue
        print("assistant> ", end="", flush=True)
        timer = _Timer()
        n_prompt = len(session.prompt_ids()) + len(tokenizer.encode(text, allowed_special="all"))

        def on_text(piece):
            timer.tick()
            if args.stream:
                print(piece, end="", flush=True)

        reply = session.send(text, on_text=on_text)
        print("" if args.stream else reply)
        if args.speed:
            timer.n = session.last_num_tokens
            print(timer.report(n_prompt))
    return 0


def _eos_ids(tokenizer) -> list[int]:
    from tinyllm.generate import _token_id

    return [i for i in (_token_id(tokenizer, "<|im_end|>"), _token_id(tokenizer, "<|endoftext|>")) if i is not None]
