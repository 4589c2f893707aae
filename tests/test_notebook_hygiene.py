"""Every lesson notebook is committed the way the course promises: executed, without
errors, opening with learning goals, closing with a summary that points to its exercises,
and with no path of the machine it was made on."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MACHINE_PATH = re.compile(r"(/work/|/root/|/home/[a-z]|/tmp/pytest-|C:\\\\Users)")


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _text(cell: dict) -> str:
    return "".join(cell["source"])


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_is_executed_without_errors(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code" and _text(c).strip()]
    assert code, f"{path.name} has no code"
    unexecuted = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    assert not unexecuted, f"{path.name}: code cells {unexecuted} were never executed; run scripts/execute_notebooks.py"
    counts = [c["execution_count"] for c in code]
    assert counts == sorted(counts), f"{path.name} was not executed top to bottom in one kernel"
    errors = [o.get("ename") for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} is committed with errors: {errors}"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_opens_with_goals_and_closes_with_a_pointer_to_exercises(path):
    cells = _cells(path)
    first, last = _text(cells[0]).lower(), _text(cells[-1]).lower()
    assert cells[0]["cell_type"] == "markdown" and "goal" in first, f"{path.name} must open with its learning goals"
    number = path.name[:2]
    assert cells[-1]["cell_type"] == "markdown", f"{path.name} must close with a summary"
    if number != "00":
        assert f"exercises/{number}_" in last, f"{path.name}'s last cell must point to exercises/{number}_*.ipynb"


def test_no_machine_paths_in_tracked_files():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in files:
        if name.startswith("tests/test_notebook_hygiene.py"):
            continue
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for m in MACHINE_PATH.finditer(text):
            offenders.append(f"{name}: ...{text[max(0, m.start() - 30):m.end() + 30]!r}")
    assert not offenders, "machine-specific paths committed:\n" + "\n".join(offenders[:20])


# --- Saved notebook metadata: notebooks open in JupyterLab without being marked as modified. ---

def _load_execute_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("execute_notebooks", ROOT / "scripts" / "execute_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _committed_notebooks() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--", "*.ipynb"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    return sorted(n for n in out if n.startswith(("notebooks/", "exercises/", "solutions/")) or "/" not in n)


NOTEBOOKS = _committed_notebooks()
VERSION = re.compile(r"^\d+\.\d+\.\d+")


def metadata_problems(nb: dict, expected: dict) -> list[str]:
    """What differs from the metadata JupyterLab writes (any Python version is accepted)."""
    problems = []
    if (nb.get("nbformat"), nb.get("nbformat_minor")) != (4, 5):
        problems.append(f"nbformat {nb.get('nbformat')}.{nb.get('nbformat_minor')}, expected 4.5")
    meta = nb.get("metadata", {})
    if meta.get("kernelspec") != expected["kernelspec"]:
        problems.append(f"kernelspec {meta.get('kernelspec')}, expected {expected['kernelspec']}")
    info = dict(meta.get("language_info", {}))
    want = {k: v for k, v in expected["language_info"].items() if k != "version"}
    if {k: v for k, v in info.items() if k != "version"} != want or not VERSION.match(str(info.get("version", ""))):
        problems.append(f"language_info {info}, expected {expected['language_info']} (any version)")
    ids = [c.get("id") for c in nb.get("cells", [])]
    if None in ids or len(set(ids)) != len(ids):
        problems.append("cells without an id, or with duplicate ids")
    return problems


def test_committed_notebooks_are_found():
    assert any(n.startswith("notebooks/") for n in NOTEBOOKS) and any(n.startswith("exercises/") for n in NOTEBOOKS)
    assert any(n.startswith("solutions/") for n in NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_metadata_is_what_jupyterlab_writes(name):
    """JupyterLab marks a notebook as modified as soon as its kernel starts when the saved kernelspec or
    language_info differ from the running kernel's. Fix: scripts/execute_notebooks.py --normalize-only NB."""
    expected = _load_execute_script().expected_metadata()
    problems = metadata_problems(json.loads((ROOT / name).read_text(encoding="utf-8")), expected)
    assert not problems, f"{name}: " + "; ".join(problems) + \
        f"\nrun: python scripts/execute_notebooks.py --normalize-only {name}"


def test_normalize_only_fixes_metadata_idempotently_without_executing(tmp_path):
    module = _load_execute_script()
    expected = module.expected_metadata()
    nb = {
        "cells": [{"cell_type": "code", "execution_count": 3, "id": "a1", "metadata": {},
                   "outputs": [{"name": "stdout", "output_type": "stream", "text": ["saved output\n"]}],
                   "source": ["print('not run again')"]}],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}, "tinyllm": {"lesson": "99_demo"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    path = tmp_path / "demo.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    assert metadata_problems(nb, expected)  # the old metadata is caught
    assert module.main(["--normalize-only", str(path)]) == 0
    first = path.read_text(encoding="utf-8")
    fixed = json.loads(first)
    assert metadata_problems(fixed, expected) == []
    assert fixed["metadata"]["tinyllm"] == {"lesson": "99_demo"}
    assert fixed["cells"][0]["outputs"] == nb["cells"][0]["outputs"] and fixed["cells"][0]["execution_count"] == 3
    assert module.normalize_file(path) is False and path.read_text(encoding="utf-8") == first
