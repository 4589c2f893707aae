"""The capstone (exercises/capstone.ipynb): SmolLM2's greedy chat on the learner's own functions.

The learner's code is every exercise notebook next to the capstone (the grader reads them, one namespace per
notebook, as it reads one lesson's notebook). The graded pieces are the plug points that the capstone's chat
calls (found on a tiny model, :func:`tinyllm.capstone.chat_points`) and that some lesson grades, except those
that receive the model (see :func:`_takes_the_model`): one exercise each, whose test plugs only that function
into SmolLM2 and wants the library's greedy reply token for token; and one exercise for all of them at once. Nothing here names a lesson's function: new plug points join by
themselves. SmolLM2 is loaded at the first test, not when the checks load.
"""
from __future__ import annotations

import inspect
from functools import lru_cache

from tinyllm import capstone, plug
from tinyllm.grading.core import Exercise, Fail, freeze
from tinyllm.grading.runner import lessons, load_exercises


def _graded() -> set[str]:
    """The functions some lesson grades (a lesson whose checks do not load grades none here)."""
    names: set[str] = set()
    for lesson in lessons():
        try:
            names |= {e.function for e in load_exercises(lesson)}
        except Exception:  # noqa: BLE001 - reported when that lesson is graded
            continue
    return names


def _takes_the_model(name: str) -> bool:
    """Whether the plug point receives the model (the generation loop): the model lives in the grader's
    process and the learner's code runs in the sandbox, which cannot call back into it, so such a point is
    graded by its lesson (on models that travel) and runs on SmolLM2 only in the capstone notebook itself."""
    return "model" in inspect.signature(plug.library(name)).parameters


GRADED = _graded()
POINTS = [name for name in capstone.chat_points() if name in GRADED and not _takes_the_model(name)]
ALL = "all_pieces"
# seconds for one chat: six cacheless forward passes of SmolLM2 over about 35 tokens, and up to a few hundred calls
# of a plugged point (rms_norm: 61 a pass) that each travel to the sandbox and back
BUDGET = 120.0


@lru_cache(maxsize=1)
def _reference():
    from tinyllm.models.smollm2 import ModelNotInstalledError, load_smollm2

    try:
        model, tokenizer = load_smollm2("cpu")
    except ModelNotInstalledError as exc:
        raise Fail(f"the grader cannot load SmolLM2: {exc}") from None
    freeze(model)                      # its weights travel to the learner's sandbox once, not at every call
    return model, tokenizer, capstone.chat(model, tokenizer)


def _compare(got: capstone.ChatResult, ref: capstone.ChatResult, what: str) -> None:
    if got.ids != ref.ids:
        same = next((i for i, (a, b) in enumerate(zip(got.ids, ref.ids)) if a != b), min(len(got.ids), len(ref.ids)))
        raise Fail(f"with {what}, SmolLM2's greedy reply is {got.text!r}, the library's is {ref.text!r}: they part "
                   f"after {same} of {len(ref.ids)} tokens")


def _one(name: str):
    def run(learner):
        model, tokenizer, ref = _reference()
        got = capstone.chat(model, tokenizer, pieces={name: getattr(learner, name)})
        _compare(got, ref, f"your `{name}`")
    return run


def _together(learner):
    model, tokenizer, ref = _reference()
    written = learner._functions()
    pieces = {name: getattr(learner, name) for name in POINTS if written.get(name) is False}
    if not pieces:
        raise Fail("none of the functions the capstone plugs in is written yet ("
                   + ", ".join(f"`{n}`" for n in POINTS) + ")")
    _compare(capstone.chat(model, tokenizer, pieces=pieces), ref, "all your pieces")
    missing = [n for n in POINTS if n not in pieces]
    if missing:
        raise Fail("SmolLM2 gives the library's reply with your pieces, but the chat still runs the library's "
                   + ", ".join(f"`{n}`" for n in missing) + ": write them in their exercise notebooks")


EXERCISES = []
for _name in POINTS:
    _ex = Exercise(_name, f"SmolLM2's chat runs on your {_name}")
    _ex.end_to_end(f"SmolLM2's greedy reply with your {_name} equals the library's", 1, _one(_name), budget=BUDGET)
    EXERCISES.append(_ex)
_all = Exercise(ALL, "SmolLM2's chat runs on all your pieces at once")
_all.end_to_end("every piece is yours and the greedy reply equals the library's", 2, _together,
                budget=max(BUDGET, 20.0 * len(POINTS)))
EXERCISES.append(_all)
