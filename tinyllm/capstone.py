"""The capstone: SmolLM2 chatting on the learner's own functions.

    from tinyllm.capstone import chat, collect, plug_table
    pieces = collect()                      # {plug point: your function}, from the exercise notebooks next to you
    model, tokenizer = load_smollm2()
    mine = chat(model, tokenizer, pieces=pieces)
    print(plug_table(mine))                 # which plug points ran your code, which the library's
    mine.text == chat(model, tokenizer).text

:func:`collect` reads the notebooks' top-level definitions the way the grader does (definitions, imports other
than tinyllm and constants; no other top-level code) and keeps the functions named like a plug point
(:func:`tinyllm.plug.points`) that are written (no longer a stub). :func:`chat` runs one greedy
turn (the chat template, then the generation loop :func:`tinyllm.generate.generate`) with those functions
plugged in and counts the calls of the plug points. The grader's capstone checks run the same :func:`chat`,
with the learner's functions in its sandbox.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tinyllm import plug

PROMPT = "What is the capital of France?"
MAX_NEW_TOKENS = 6


def exercise_notebooks(folder: str | Path = ".") -> list[Path]:
    """The graded exercise notebooks in ``folder`` (``NN_topic.ipynb``), in lesson order."""
    return sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))


def notebook_definitions(path: str | Path) -> dict[str, Any]:
    """The top-level definitions of a notebook's code cells, run in a fresh namespace as the grader runs
    them. A cell that raises defines what it defined before the error, as in the grader."""
    from tinyllm.grading.sandbox import Known, clean_source, run_definitions

    path = Path(path)
    nb = json.loads(path.read_text(encoding="utf-8"))
    space: dict[str, Any] = {"__name__": f"__{path.stem}__"}
    known = Known()
    for n, cell in enumerate(nb.get("cells", []), start=1):
        if cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else src
        try:
            run_definitions(ast.parse(clean_source(src)), f"{path.name}, cell {n}", space, known)
        except Exception:  # noqa: BLE001 - a broken cell, as the grader sees it
            continue
    return space


def collect(notebooks: list[str | Path] | None = None) -> dict[str, Callable]:
    """{plug point name: the learner's function} from ``notebooks`` (default: :func:`exercise_notebooks` of
    the current folder); a later notebook's definition wins; stubs are left out."""
    from tinyllm.grading.sandbox import is_stub

    names = plug.points()
    pieces: dict[str, Callable] = {}
    for path in exercise_notebooks() if notebooks is None else notebooks:
        space = notebook_definitions(path)
        for name in names:
            fn = space.get(name)
            if callable(fn) and not is_stub(fn):
                pieces[name] = fn
    return pieces


@dataclass
class ChatResult:
    """One greedy chat turn: the reply, its token ids, and how often each plug point was called (None: not
    counted, see :func:`chat`)."""

    text: str
    ids: list[int]
    calls: dict[str, int | None]
    pieces: dict[str, Callable] = field(default_factory=dict)

    def used(self) -> list[str]:
        """The plug points the chat called (of those it counted)."""
        return [name for name, n in self.calls.items() if n]


def prompt_ids(tokenizer: Any, prompt: str = PROMPT) -> list[int]:
    """The chat template (:func:`tinyllm.tokenizers.chat.apply_chat_template`) around one user message,
    with the assistant header, encoded."""
    from tinyllm.tokenizers.chat import apply_chat_template

    text = apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    return [int(t) for t in tokenizer.encode(text, allowed_special="all")]


def chat(model: Any, tokenizer: Any, prompt: str = PROMPT, max_new_tokens: int = MAX_NEW_TOKENS, *,
         pieces: dict[str, Callable] | None = None) -> ChatResult:
    """A greedy chat turn with ``pieces`` (plug point -> function) plugged in, counting plug point calls.

    The turn is the chat template (:func:`prompt_ids`) and then the plain generation loop without a KV cache,
    :func:`tinyllm.generate.generate` (a plug point: lesson 09's loop), at ``temperature=0`` (greedy, through
    the plug point ``sample_next``). The loop has no stop condition, so the reply is cut before its first
    end-of-turn token (:func:`tinyllm.chat.end_of_turn_ids`): greedy, the tokens before it are those of a loop
    that stops there. Only ``pieces`` are replaced. Every other plug point is counted through a wrapper around
    the library's function, except that the Llama block's points (:data:`tinyllm.models.llama.BLOCK_POINTS`,
    whose plugging switches the model from its fused blocks to :func:`~tinyllm.models.llama.llama_block`) are
    wrapped only when ``pieces`` already take that path: the library's own run keeps its fused blocks, and
    their calls are reported as None (not counted)."""
    from tinyllm.chat import end_of_turn_ids
    from tinyllm.generate import generate
    from tinyllm.models.llama import BLOCK_POINTS

    pieces = dict(pieces or {})
    unknown = sorted(set(pieces) - set(plug.points()))
    if unknown:
        raise plug.PlugError(f"no plug point named {', '.join(unknown)}; the points are: {', '.join(plug.points())}")
    block_path = bool(BLOCK_POINTS.intersection(pieces))
    calls: dict[str, int | None] = {name: None if name in BLOCK_POINTS and not block_path else 0
                                    for name in plug.points()}

    def counted(name: str, fn: Callable) -> Callable:
        def run(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return fn(*args, **kwargs)
        return run

    plugged = {name: counted(name, pieces[name] if name in pieces else plug.library(name))
               for name, n in calls.items() if n is not None}
    prompt = prompt_ids(tokenizer, prompt)
    with plug.use(**plugged):
        out = generate(model, model.xp.asarray([prompt]), max_new_tokens, temperature=0.0)   # (1, T + new)
    new = [int(t) for t in out[0, len(prompt):].tolist()]
    stops = set(end_of_turn_ids(tokenizer))
    ids = new[:next((i for i, t in enumerate(new) if t in stops), len(new))]
    return ChatResult(tokenizer.decode(ids), ids, calls, pieces)


def chat_points() -> list[str]:
    """The plug points that :func:`chat` calls when every point is plugged (with the library's own
    functions, as a learner who wrote them all would), found by running it on a tiny random Llama with a tiny
    BPE tokenizer: the same code path as SmolLM2's, in a fraction of a second."""
    from tinyllm.models.llama import Llama, LlamaConfig
    from tinyllm.tokenizers.bpe import BPETokenizer

    tokenizer = BPETokenizer.train(PROMPT * 4, 300, special_tokens=["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    config = LlamaConfig(vocab_size=len(tokenizer.vocab), dim=24, n_layers=2, n_heads=3, n_kv_heads=1, head_dim=8,
                         ffn_dim=32, context_length=128)
    everything = {name: plug.library(name) for name in plug.points()}
    return chat(Llama(config, rng=0), tokenizer, max_new_tokens=3, pieces=everything).used()


def _origin(fn: Callable) -> str:
    code = getattr(fn, "__code__", None)
    where = code.co_filename if code is not None else ""
    return f"your code ({where})" if ", cell " in where else "your code"


def plug_table(result: ChatResult) -> str:
    """Which plug points ran the learner's code in ``result``, which the library's, and which the chat did
    not call."""
    width = max([len(n) for n in result.calls] + [10])
    rows = [f"{'plug point':<{width}}  {'calls':>6}  runs"]
    for name, n in result.calls.items():
        who = _origin(result.pieces[name]) if name in result.pieces else "the library's code"
        if n is None:
            rows.append(f"{name:<{width}}  {'-':>6}  the library's fused Llama blocks (not counted)")
        else:
            rows.append(f"{name:<{width}}  {n:>6}  " + (who if n else f"(not called by this chat; {who})"))
    return "\n".join(rows)
