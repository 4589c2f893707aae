"""The shape of the assignments (issue 11): real pieces, learner code run inside the library, hints.

- at least 60% of the graded functions have solutions of five or more lines of real code;
- every lesson from 01 on has at least one end-to-end test, which runs the learner's code inside the library
  (or trains something with it) in the grader's process;
- every graded function's solution region carries progressive hints, and the stubs give none away
  (tests/test_grading.py checks the generated cells).
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from tinyllm.grading.runner import lessons, load_exercises

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = re.compile(r"^\s*### BEGIN SOLUTION"), re.compile(r"^\s*### END SOLUTION")


def solution_regions(lesson: str) -> dict[str, list[list[str]]]:
    """{enclosing function or method name: [the lines of each solution region]} of a solution notebook."""
    nb = json.loads((ROOT / "solutions" / f"{lesson}.ipynb").read_text(encoding="utf-8"))
    out: dict[str, list[list[str]]] = {}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        lines = src.split("\n")
        try:
            tree = ast.parse("\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in lines))
        except SyntaxError:
            continue
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        i = 0
        while i < len(lines):
            if BEGIN.match(lines[i]):
                j = i + 1
                while j < len(lines) and not END.match(lines[j]):
                    j += 1
                inner = [d for d in defs if d.lineno <= i + 1 <= (d.end_lineno or d.lineno)]
                names = [d.name for d in inner]
                out.setdefault(names[0] if names else "<cell>", []).append(lines[i + 1:j])
                i = j
            i += 1
    return out


def real_lines(region: list[str]) -> int:
    """Lines of code in a region: not blank, not a comment (### HINT included), not a docstring."""
    n, in_doc = 0, False
    for ln in region:
        s = ln.strip()
        if in_doc:
            in_doc = not (s.endswith('"""') or s.endswith("'''"))
            continue
        if s.startswith(('"""', "'''")):
            in_doc = not (len(s) > 3 and (s.endswith('"""') or s.endswith("'''")))
            continue
        if s and not s.startswith("#"):
            n += 1
    return n


GRADED = [lesson for lesson in lessons() if lesson[:2].isdigit() and int(lesson[:2]) >= 1]


def test_most_graded_functions_are_real_pieces():
    sizes = {}
    for lesson in GRADED:
        regions = solution_regions(lesson)
        for ex in load_exercises(lesson):
            top = ex.function.split(".")[0]
            sizes[f"{lesson}:{ex.function}"] = sum(real_lines(r) for name, rs in regions.items()
                                                   if name == top or name.startswith(top) for r in rs)
    big = [k for k, v in sizes.items() if v >= 5]
    share = len(big) / len(sizes)
    small = sorted(k for k, v in sizes.items() if v < 5)
    assert share >= 0.6, f"only {share:.0%} of graded functions have >= 5 lines of solution; small: {small}"


@pytest.mark.parametrize("lesson", GRADED)
def test_every_lesson_runs_learner_code_inside_the_library(lesson):
    e2e = [f"{ex.function}: {t.name}" for ex in load_exercises(lesson) for t in ex.tests if t.run is not None]
    assert e2e, f"{lesson} has no end-to-end test (Exercise.end_to_end) that runs the learner's code in the library"


def test_the_line_counter_counts_code_only():
    region = ['    """doc', '    more"""', "    ### HINT: x", "", "    a = 1  # c", "    # note", "    return a"]
    assert real_lines(region) == 2


@pytest.mark.parametrize("lesson", GRADED)
def test_two_typical_wrong_implementations_per_graded_function(lesson):
    path = ROOT / "tests" / "wrong_impls" / f"{lesson}.py"
    names = [n.name for n in ast.parse(path.read_text(encoding="utf-8")).body
             if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and "__" in n.name.strip("_")]
    count = {ex.function: sum(1 for n in names if n.split("__")[0] == ex.function.split(".")[0])
             for ex in load_exercises(lesson)}
    few = {f: c for f, c in count.items() if c < 2}
    assert not few, f"tests/wrong_impls/{lesson}.py needs >= 2 wrong implementations of: {few}"
