"""The ``tinyllm generate`` and ``tinyllm chat`` commands (SmolLM2-135M-Instruct).

    tinyllm generate "The capital of France is" --max-new-tokens 20 --stream --speed
    tinyllm generate "Repeat this text: ..." --speculative lookup --speed
    tinyllm chat --temperature 0.7 --top-p 0.9 --seed 1
    tinyllm chat --speculative lookup

``generate`` continues the prompt as plain text; ``chat`` wraps each line you
type in the model's chat template and keeps the conversation and its KV cache,
so each turn reads only the new tokens (:class:`tinyllm.chat.ChatSession`).
``--speculative lookup`` (both commands) decodes greedily with speculative decoding
(``tinyllm.speculative``, prompt-lookup drafts): the same text, faster when the reply
copies from the prompt or the conversation. Chat commands:
``/help``, ``/reset`` (start over), ``/exit`` (or Ctrl-D). Ctrl-C stops a reply
and keeps the conversation. The prompt has line editing and history (``readline``)
where the standard library has it.
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
    parser.add_argument("--speculative", choices=["off", "lookup"], default="off",
                        help="speculative decoding with prompt-lookup drafts: the greedy text, faster when it "
                             "copies from the prompt; greedy only (default: %(default)s)")


def _load(device):
    from tinyllm.models.smollm2 import load_smollm2

    return load_smollm2(device)


def _sampling(args) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p,
                repetition_penalty=args.repetition_penalty)


def _speed_line(prefill_tokens: int, prefill_s: float, new_tokens: int, decode_s: float) -> str:
    """The ``--speed`` report: tokens prefilled and the time to the first token; decode rate after it."""
    if new_tokens == 0:
        return f"[prefill: {prefill_tokens} tokens in {prefill_s:.2f} s, no new tokens]"
    rate = (new_tokens - 1) / decode_s if new_tokens > 1 and decode_s > 0 else float("nan")
    return (f"[prefill: {prefill_tokens} tokens in {prefill_s:.2f} s ({prefill_tokens / prefill_s:.1f} tokens/s); "
            f"decode: {new_tokens} tokens, {rate:.1f} tokens/s]")


def _warm_up(model) -> None:
    """One throw-away prefill and decode step, so that one-time costs (BLAS threads, the thread
    controller, first-touch memory) are not timed as the first prompt's prefill."""
    from tinyllm.generate import decode_step, prefill

    _, cache = prefill(model, [[0, 0]], max_new_tokens=1)
    decode_step(model, cache, [0])


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
        first = self.first or end
        return _speed_line(n_prompt, first - self.start, self.n, end - first)


def run(args: argparse.Namespace) -> int:
    from tinyllm.models.smollm2 import ModelNotInstalledError

    problem = _speculative_problem(args)
    if problem:
        print(f"tinyllm {args.command}: error: {problem}", file=sys.stderr)
        return 2
    try:
        model, tokenizer = _load(args.device)
    except ModelNotInstalledError as exc:
        print(f"tinyllm {args.command}: {exc}", file=sys.stderr)
        return 1
    if args.command == "generate":
        return _generate(model, tokenizer, args)
    return _chat(model, tokenizer, args)


def _speculative_problem(args) -> str | None:
    """Why ``--speculative`` cannot run with these options (None if it can): it verifies drafts greedily."""
    if getattr(args, "speculative", "off") == "off":
        return None
    if args.temperature > 0:
        return (f"--speculative {args.speculative} decodes greedily; use --temperature 0 "
                f"(got {args.temperature}) or --speculative off")
    if args.repetition_penalty != 1.0:
        return (f"--speculative {args.speculative} needs --repetition-penalty 1 (got {args.repetition_penalty}); "
                "or use --speculative off")
    return None


# the draft length benchmarks/speculative.py measured for prompt lookup
DRAFT_K = 16


def _token_stream(model, ids, eos, args):
    """The generated token ids: plain decoding, or greedy speculative decoding with prompt lookup."""
    if args.speculative == "lookup":
        from tinyllm.speculative import PromptLookup, speculative_generate

        return speculative_generate(model, ids, args.max_new_tokens, PromptLookup(), k=DRAFT_K, stop_ids=eos)
    from tinyllm.generate import stream_generate

    return stream_generate(model, ids, args.max_new_tokens, stop_ids=eos, seed=args.seed, **_sampling(args))


def _generate(model, tokenizer, args) -> int:
    from tinyllm.chat import TextStreamer, end_of_turn_ids

    ids = tokenizer.encode(args.prompt, allowed_special="all")
    if not ids:
        print("tinyllm generate: error: the prompt is empty", file=sys.stderr)
        return 2
    streamer = TextStreamer(tokenizer)
    if args.speed:
        _warm_up(model)
    timer = _Timer()
    eos = end_of_turn_ids(tokenizer)
    if args.stream:
        print(args.prompt, end="", flush=True)
    for tid in _token_stream(model, ids, eos, args):
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


CHAT_HELP = """Commands:
  /help    show this list
  /reset   forget the conversation (a --system message stays) and empty the KV cache
  /exit    leave (also /quit, or Ctrl-D)
Ctrl-C stops a reply and keeps the conversation. Any other line is sent to the model."""


def _enable_line_editing() -> None:
    """Importing ``readline`` gives ``input()`` line editing and a history (up/down arrows)."""
    try:
        import readline  # noqa: F401, PLC0415 - the import is the effect; absent on some platforms
    except ImportError:
        pass


def _read_line(interactive: bool) -> str:
    """The next line typed (EOFError at the end of the input)."""
    if interactive:
        return input("you> ")
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line


def _chat(model, tokenizer, args) -> int:
    import re

    from tinyllm.chat import ChatSession, ContextFullError

    drafter = None
    if args.speculative == "lookup":
        from tinyllm.speculative import PromptLookup

        drafter = PromptLookup()
    session = ChatSession(model, tokenizer, system=args.system, max_new_tokens=args.max_new_tokens,
                          seed=args.seed, drafter=drafter, draft_k=DRAFT_K, **_sampling(args))
    interactive = sys.stdin.isatty()
    if interactive:
        _enable_line_editing()
        print("Chat with SmolLM2-135M-Instruct. /help lists the commands; Ctrl-C stops a reply, Ctrl-D leaves.")
    if args.speed:
        _warm_up(model)
    while True:
        try:
            text = _read_line(interactive).strip()
        except EOFError:
            if interactive:
                print()
            break
        except KeyboardInterrupt:             # Ctrl-C at the prompt: a new prompt, as in Python's REPL
            print()
            continue
        if not text:
            continue
        if re.fullmatch(r"/\w+", text):       # a command; "/usr/bin ..." is a question
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                session.reset()
                print("(conversation reset)")
            elif text == "/help":
                print(CHAT_HELP)
            else:
                print(f"unknown command {text}; /help lists the commands")
            continue
        print("assistant> ", end="", flush=True)

        def on_text(piece):
            if args.stream:
                print(piece, end="", flush=True)

        n_messages = len(session.messages)
        try:
            reply = session.send(text, on_text=on_text)
        except KeyboardInterrupt:
            said = len(session.messages) > n_messages and not args.stream
            print(f"{session.messages[-1]['content'] if said else ''}\n(reply stopped; the conversation goes on)")
            continue
        except ContextFullError as exc:
            print(f"\n({exc})")
            continue
        print("" if args.stream else reply)
        if args.speed:
            t = session.last_turn
            print(_speed_line(t.prefill_tokens, t.ttft_s, t.new_tokens, t.decode_s))
    return 0
