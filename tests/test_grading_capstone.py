"""The capstone: SmolLM2's chat on the functions of the exercise notebooks (tinyllm.capstone and its checks)."""
from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import nbformat
import pytest

from tinyllm import capstone, plug
from tinyllm.models.llama import BLOCK_POINTS
from tinyllm.grading.runner import CAPSTONE, grade_notebook, lesson_for, lessons, load_exercises

ROOT = Path(__file__).resolve().parent.parent


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nbformat.write(nb, path)
    return path


def _written_plug_points(paths: list[Path]) -> set[str]:
    """Top-level functions named like a plug point whose body does not raise NotImplementedError (read from the
    source, independently of tinyllm.capstone)."""
    found = set()
    for path in paths:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            tree = ast.parse("\n".join("" if ln.lstrip().startswith(("%", "!")) else ln
                                       for ln in "".join(cell["source"]).splitlines()))
            for node in tree.body:
                if isinstance(node, ast.FunctionDef) and node.name in plug.points():
                    stub = any(isinstance(n, ast.Name) and n.id == "NotImplementedError" for n in ast.walk(node))
                    (found.discard if stub else found.add)(node.name)
    return found


def test_collect_keeps_written_plug_points_only_from_definitions(tmp_path):
    a = _notebook(tmp_path / "01_a.ipynb",
                  "import numpy as np\nEPS = 1e-5\n\ndef rms_norm(x, w, eps=1e-5):\n    return x * 0 + EPS\n",
                  "def helper(x):\n    return x\n",
                  "print(rms_norm(1, 2))\nraise SystemExit('top-level code is not run')\n")
    b = _notebook(tmp_path / "02_b.ipynb", "def rms_norm(x, w, eps=1e-5):\n    raise NotImplementedError('implement rms_norm')\n")
    pieces = capstone.collect([a, b])
    assert list(pieces) == ["rms_norm"]                         # helper is no plug point; the stub in b is skipped
    assert float(pieces["rms_norm"](1.0, None)) == pytest.approx(1e-5)   # the constant came with it
    assert "01_a.ipynb, cell 1" in pieces["rms_norm"].__code__.co_filename
    c = _notebook(tmp_path / "03_c.ipynb", "def rms_norm(x, w, eps=1e-5):\n    return x\n")
    assert capstone.collect([a, c])["rms_norm"](3, None) == 3     # a later notebook wins
    assert capstone.exercise_notebooks(tmp_path) == [a, b, c]


def test_the_capstone_is_graded_as_its_own_lesson():
    assert lesson_for(ROOT / "exercises" / "capstone.ipynb") == CAPSTONE
    assert CAPSTONE not in lessons()
    ex = load_exercises(CAPSTONE)
    graded = {e.function for lesson in lessons() for e in load_exercises(lesson)}
    points = [e.function for e in ex[:-1]]
    assert points == [p for p in capstone.chat_points() if p in graded and p != "generate"] and points
    assert {"generate", "sample_next", "llama_block"} <= set(capstone.chat_points())
    assert ex[-1].function == "all_pieces"
    assert all(t.run is not None for e in ex for t in e.tests)


@pytest.fixture(scope="module")
def smollm2():
    cap = importlib.import_module("tinyllm.grading.checks.capstone")
    return cap._reference()                     # (model, tokenizer, the library's chat), loaded once


def test_the_capstone_runs_smollm2_on_the_solutions_and_gives_the_librarys_greedy_text(smollm2):
    model, tokenizer, library = smollm2
    notebooks = capstone.exercise_notebooks(ROOT / "solutions")
    assert [p.stem for p in notebooks] == lessons()
    pieces = capstone.collect(notebooks)
    assert set(pieces) == _written_plug_points(notebooks) and pieces
    mine = capstone.chat(model, tokenizer, pieces=pieces)
    assert mine.text == library.text and mine.ids == library.ids and library.ids
    assert library.text == capstone.chat(model, tokenizer).text           # greedy: the same every time
    used = set(mine.used())
    assert {"generate", "llama_block"} <= used & set(pieces) and "sample_next" in pieces
    # the library keeps its fused blocks; the solution's generate calls its own sample_next, not the plug point
    assert set(library.used()) - {"sample_next"} == used - BLOCK_POINTS
    assert all(library.calls[n] is None for n in BLOCK_POINTS)
    table = capstone.plug_table(mine)
    for name in plug.points():
        row = next(r for r in table.splitlines() if r.startswith(name + " "))
        assert ("your code" in row) == (name in pieces) and ("not called" in row) == (name not in used)
    assert "not counted" in capstone.plug_table(library).splitlines()[1 + sorted(plug.points()).index("llama_block")]


def test_grading_the_capstone_full_marks_on_the_solutions_and_zero_on_the_stubs(smollm2):
    sol = grade_notebook(ROOT / "solutions" / "capstone.ipynb", execute=False)
    assert sol.error is None and sol.full_marks, [(e.function, e.message, [t.feedback for t in e.tests])
                                                  for e in sol.exercises]
    ex = grade_notebook(ROOT / "exercises" / "capstone.ipynb", execute=False)
    assert ex.error is None and ex.score == 0 and ex.max_score == sol.max_score
    assert all(e.message.startswith("not implemented yet") for e in ex.exercises[:-1])
    assert "is written yet" in ex.exercises[-1].tests[0].feedback


def test_grade_all_includes_the_capstone_after_the_lessons(monkeypatch, capsys):
    from tinyllm.cli import main
    from tinyllm.grading import cli
    from tinyllm.grading.report import Report

    graded = []

    def fake(path, **kw):
        graded.append(Path(path).name)
        return Report(notebook=str(path), lesson=lesson_for(path), error="not graded in this test")

    monkeypatch.setattr(cli, "grade_notebook", fake)
    monkeypatch.chdir(ROOT)
    main(["grade", "--all", "--no-execute"])
    assert graded == [f"{lesson}.ipynb" for lesson in lessons()] + ["capstone.ipynb"]
