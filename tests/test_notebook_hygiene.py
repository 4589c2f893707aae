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
