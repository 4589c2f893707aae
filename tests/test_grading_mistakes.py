"""A catalogue of typical learner mistakes: nearly all lose points, most get feedback that names the bug.

Each file in tests/mistakes/ holds wrong versions of one lesson's graded functions (every lesson with graded
checks has one, at least three mistakes per graded function), written
``<exercise>__<mistake>``, each with a docstring: the piece of feedback that names the bug, or
``None`` where the grader cannot tell the cause (it must still say what is wrong and where). The catch
rate is the share that lose points, the naming rate the share whose feedback contains their docstring
(a ``None`` counts as not named). tests/mistakes/correct/ holds right answers written in other styles,
which must keep full marks, and stubs that do nothing (return an argument, return the inputs as the new
state, always raise) must score zero. One sandbox process grades all three groups of a lesson.

Run as a script to see every miss: ``python tests/test_grading_mistakes.py [lesson ...]``.
"""
from __future__ import annotations

import ast
import sys
import time
from functools import lru_cache
from pathlib import Path

from tinyllm.grading.report import ExerciseResult
from tinyllm.grading.runner import grade_source, lessons, load_exercises

HERE = Path(__file__).parent / "mistakes"
CATCH_GOAL, NAMING_GOAL = 0.95, 0.75
STUBS = {**{f"arg{k}": f"return args[{k}]" for k in range(5)},
         "first_two": "return args[0], args[1]", "state": "return args[0], args[2]",
         "adam_state": "return args[0], args[2], args[3]", "all_args": "return args", "raises": "raise ValueError('no')"}


def mistakes(path: Path) -> dict[str, str | None]:
    """``{function name: expected feedback or None}`` of a catalogue file."""
    tree = ast.parse(path.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and "__" in node.name:
            doc = (ast.get_docstring(node) or "").strip()
            out[node.name] = None if doc in ("", "None") else doc
    return out


def catalogue_lessons() -> list[str]:
    """Every lesson with graded checks: each must have its catalogue file."""
    return lessons()


def _top_level_names(source: str) -> list[str]:
    out = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out.append(node.name)
        elif isinstance(node, ast.Assign):
            out += [t.id for t in node.targets if isinstance(t, ast.Name)]
    return out


@lru_cache(maxsize=None)
def graded(lesson: str) -> dict[str, dict[str, ExerciseResult]]:
    """The lesson's mistakes, right answers and do-nothing stubs, graded in one sandbox process:
    ``{"mistakes" | "correct" | "stubs": {function name: result}}``."""
    parts = {"mistakes": (HERE / f"{lesson}.py").read_text()}
    if (HERE / "correct" / f"{lesson}.py").exists():
        parts["correct"] = (HERE / "correct" / f"{lesson}.py").read_text()
    functions = [e.function for e in load_exercises(lesson)]
    parts["stubs"] = "\n".join(f"def {f}__{k}(*args, **kwargs):\n    {body}\n" for f in functions for k, body in STUBS.items())
    names = {group: _top_level_names(src) for group, src in parts.items()}
    every = [n for ns in names.values() for n in ns]
    assert len(every) == len(set(every)), f"{lesson}: the same top-level name in two groups"
    impls = {n: n.split("__")[0] for ns in names.values() for n in ns if "__" in n}
    report = grade_source(lesson, "\n\n".join(parts.values()), implementations=impls, time_limit=20)
    assert report.error is None, report.error
    by_name = {ex.function.split("@")[1]: ex for ex in report.exercises}
    return {group: {n: by_name[n] for n in ns if "__" in n} for group, ns in names.items()}


def feedback(ex: ExerciseResult) -> str:
    return " ".join([ex.message] + [t.feedback for t in ex.tests])


def grade_catalogue(lesson: str) -> list[tuple[str, bool, bool, str]]:
    """(name, lost points, feedback names the bug, feedback) for every mistake of a lesson."""
    expected = mistakes(HERE / f"{lesson}.py")
    rows = []
    for name, ex in graded(lesson)["mistakes"].items():
        want = expected[name]
        rows.append((name, ex.score < ex.max_score, want is not None and want in feedback(ex), feedback(ex)))
    return rows


def test_every_lesson_with_graded_checks_has_a_catalogue():
    missing = [lesson for lesson in lessons() if not (HERE / f"{lesson}.py").exists()]
    assert not missing, f"no catalogue of mistakes in tests/mistakes/ for {missing}"
    strays = sorted({p.stem for p in HERE.glob("[0-9][0-9]_*.py")} - set(lessons()))
    assert not strays, f"catalogues of lessons without graded checks: {strays}"


def test_every_graded_function_has_at_least_three_mistakes():
    for lesson in catalogue_lessons():
        names = mistakes(HERE / f"{lesson}.py")
        graded_fns = {e.function for e in load_exercises(lesson)}
        counts = {f: sum(n.split("__")[0] == f for n in names) for f in graded_fns}
        assert all(c >= 3 for c in counts.values()), f"{lesson}: {counts}"
        assert {n.split("__")[0] for n in names} <= graded_fns, f"{lesson}: mistakes of unknown exercises"


def test_doing_nothing_scores_zero():
    """A part's points need real work: returning an argument, the inputs as the new state, or always
    raising scores 0."""
    problems = [f"{lesson} {name}: {ex.score:g}/{ex.max_score:g}" for lesson in catalogue_lessons()
                for name, ex in graded(lesson)["stubs"].items() if ex.score > 0]
    assert not problems, "\n".join(problems)


def test_correct_code_written_differently_scores_full_marks():
    """Right answers in other styles (loops, einsum, float32 draws, np.quantile...): the hidden inputs
    and the diagnoses must not fail them."""
    problems = [f"{name}: {ex.score:g}/{ex.max_score:g} {feedback(ex)}" for lesson in catalogue_lessons()
                for name, ex in graded(lesson).get("correct", {}).items() if ex.score < ex.max_score]
    assert not problems, "\n".join(problems)


def test_catch_rate_and_naming_rate_reach_their_goals():
    rows = [(lesson, *r) for lesson in catalogue_lessons() for r in grade_catalogue(lesson)]
    caught = sum(r[2] for r in rows) / len(rows)
    named = sum(r[3] for r in rows) / len(rows)
    print(f"\n{len(rows)} mistakes: catch rate {caught:.1%}, naming rate {named:.1%}")
    missed = [f"{r[0]}: {r[1]}" + (" (full marks)" if not r[2] else f" (feedback: {r[4][:200]!r})")
              for r in rows if not (r[2] and r[3])]
    assert caught >= CATCH_GOAL and named >= NAMING_GOAL, "\n".join(missed)


if __name__ == "__main__":
    total = []
    for lesson in sys.argv[1:] or catalogue_lessons():
        t0 = time.perf_counter()
        rows = grade_catalogue(lesson)
        total += rows
        print(f"{lesson}: {len(rows)} mistakes, {sum(r[1] for r in rows)} caught, {sum(r[2] for r in rows)} named "
              f"({time.perf_counter() - t0:.1f} s)")
        for name, lost, named, text in rows:
            if not (lost and named):
                print(f"   {'MISSED' if not lost else 'unnamed'} {name}: {text[:300]!r}")
    if total:
        print(f"overall: catch {sum(r[1] for r in total) / len(total):.1%}, naming {sum(r[2] for r in total) / len(total):.1%}")
