"""The ``tinyllm`` command.

Each subcommand lives in the module that owns its idea and exposes two
functions: ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code).
This file only wires them together, so it stays light to import.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("tinyllm.cli", "Show the tinyllm version and which device (CPU/GPU) is in use."),
    "generate": ("tinyllm.chat_cli", "Continue a prompt as plain text with SmolLM2-135M-Instruct (no chat template: "
                                 "for questions and instructions use `tinyllm chat`)."),
    "chat": ("tinyllm.chat_cli", "Chat with SmolLM2-135M-Instruct in the terminal: each line you type is wrapped in "
                             "the model's chat template, and the conversation is kept."),
    "grade": ("tinyllm.grading.cli", "Grade an exercise notebook (or --all of them)."),
    "make-exercises": ("tinyllm.grading.generate", "Regenerate exercises/ from solutions/."),
    "make-translations": ("tinyllm.i18n", "Regenerate the Chinese edition (notebooks/zh/, exercises/zh/) from "
                                          "the English notebooks and the catalogues in i18n/zh/."),
}


def add_arguments(parser: argparse.ArgumentParser, command: str = "info") -> None:
    parser.add_argument("--device", choices=["cpu", "gpu", "auto"], default=None,
                        help="device to report on (default: TINYLLM_DEVICE, or auto)")


def run(args: argparse.Namespace) -> int:
    import tinyllm
    from tinyllm import backend

    print(f"tinyllm {tinyllm.__version__}")
    print(backend.describe(args.device))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyllm", description="tinyllm: a large language model built from scratch in NumPy.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a subcommand whose module is not there yet is simply not offered
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p, name) if _takes_command(module.add_arguments) else module.add_arguments(p)
        p.set_defaults(_module=module, command=name)
    return parser


def _takes_command(fn) -> bool:
    import inspect

    return len(inspect.signature(fn).parameters) >= 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
