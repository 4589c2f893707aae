"""Grade a learner's notebook (or plain source) against the graded checks.

Steps, each of which turns every problem into feedback instead of a crash:

1. Read the notebook. Not valid JSON -> every exercise scores zero, saying so.
2. Optionally execute it top to bottom in a fresh Jupyter kernel (nbclient) with
   a per-cell time limit, allowing errors: failing example asserts are reported
   as notes, they do not stop the run and do not change the points.
3. Take the top-level definitions (imports, functions, classes, literal
   constants) of every code cell, in notebook order, and run them in a separate
   isolated Python process (``sandbox.py``) in an empty temporary directory.
   That process receives only the inputs of the graded calls and returns the
   learner's return values as JSON.
4. Judge the return values here, against references computed in this process.
"""
from __future__ import annotations

import ast
import base64
import importlib
import json
import os
import pickle
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyllm.grading.core import CallError, Exercise, Fail
from tinyllm.grading.sandbox import clean_source

# Read once, when the grader starts: code run later (a notebook in its kernel) cannot change what runs.
SANDBOX_SOURCE = Path(__file__).with_name("sandbox.py").read_text(encoding="utf-8")
CHECKS_DIR = Path(__file__).with_name("checks")
DEFAULT_TIMEOUT = 30.0
PRINT_CAP = 1_000_000          # characters a graded function may print before it scores zero
KILL_GRACE = 2.0             # seconds past the time limit before a function that ignores the alarm is killed
STARTUP_GRACE = 30.0           # seconds for the sandbox to start (NumPy import on a busy machine)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

@dataclass
class TestResult:
    name: str
    points: float
    max_points: float
    passed: bool
    feedback: str = ""


@dataclass
class ExerciseResult:
    function: str
    title: str
    score: float
    max_score: float
    tests: list[TestResult] = field(default_factory=list)
    message: str = ""            # one reason for the whole exercise (syntax error, missing, time limit...)

    @property
    def passed(self) -> bool:
        return self.score >= self.max_score


@dataclass
class Report:
    notebook: str
    lesson: str | None
    score: float = 0.0
    max_score: float = 0.0
    exercises: list[ExerciseResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None     # the notebook could not be graded at all (unknown lesson, unreadable file)

    @property
    def full_marks(self) -> bool:
        return self.error is None and self.max_score > 0 and self.score >= self.max_score

    def to_dict(self) -> dict:
        d = asdict(self)
        d["full_marks"] = self.full_marks
        return d


# ---------------------------------------------------------------------------------------------
# lessons
# ---------------------------------------------------------------------------------------------

def lessons() -> list[str]:
    """Names of the lessons that have graded checks, e.g. ``["01_parameters_and_initialization", ...]``."""
    return sorted(p.stem for p in CHECKS_DIR.glob("[0-9][0-9]_*.py"))


def load_exercises(lesson: str) -> list[Exercise]:
    if lesson not in lessons():
        raise KeyError(f"no graded checks for lesson {lesson!r}; known lessons: {', '.join(lessons())}")
    module = importlib.import_module(f"tinyllm.grading.checks.{lesson}")
    return list(module.EXERCISES)


def lesson_for(path: str | Path, nb: dict | None = None) -> str | None:
    """Which lesson a notebook belongs to: its metadata ``tinyllm.lesson``, else the ``NN_`` of its file name."""
    if isinstance(nb, dict):
        meta = nb.get("metadata")
        lesson = meta.get("tinyllm", {}).get("lesson") if isinstance(meta, dict) and isinstance(meta.get("tinyllm"), dict) else None
        if isinstance(lesson, str) and lesson in lessons():
            return lesson
    m = re.match(r"(\d\d)", Path(path).name)
    if m:
        for name in lessons():
            if name.startswith(m.group(1) + "_"):
                return name
    return None


# ---------------------------------------------------------------------------------------------
# source extraction
# ---------------------------------------------------------------------------------------------

@dataclass
class Cell:
    number: int          # 1-based position in the notebook, as the learner counts cells
    source: str
    syntax_error: str | None = None
    defines: tuple[str, ...] = ()


def code_cells(nb: dict) -> list[Cell]:
    """The code cells of a notebook dict, each parsed for syntax errors and top-level function names."""
    cells = []
    for i, cell in enumerate(nb.get("cells", []) if isinstance(nb, dict) else []):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        if isinstance(src, list):
            src = "".join(s for s in src if isinstance(s, str))
        if not isinstance(src, str):
            continue
        cells.append(_parse_cell(i + 1, src))
    return cells


def _parse_cell(number: int, src: str) -> Cell:
    try:
        tree = ast.parse(clean_source(src))
    except SyntaxError as exc:
        names = tuple(re.findall(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", src, flags=re.M))
        return Cell(number, src, f"SyntaxError in cell {number}, line {exc.lineno}: {exc.msg}", names)
    except (ValueError, RecursionError, MemoryError) as exc:
        return Cell(number, src, f"cell {number} could not be parsed: {exc}", ())
    names = tuple(n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return Cell(number, src, None, names)


def source_cells(source: str) -> list[Cell]:
    """Treat a plain Python source (a .py file) as one notebook cell."""
    return [_parse_cell(1, source)]


# ---------------------------------------------------------------------------------------------
# the sandbox process
# ---------------------------------------------------------------------------------------------

def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0",
               PYTHONDONTWRITEBYTECODE="1")
    return env


def _limits() -> None:  # pragma: no cover - runs in the child between fork and exec
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 2**20, 16 * 2**20))   # no file over 16 MB
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.setsid()


def run_sandbox(cells: list[Cell], jobs: list[dict], time_limit: float) -> tuple[list[dict], dict[str, dict], str | None]:
    """Run ``jobs`` (``{"key", "attr", "tests"}``) against the definitions in ``cells`` in child processes.

    Returns (errors while loading the cells, results by job key, a message when loading failed as a whole).
    A job whose child hangs or dies is recorded as such and the rest go to a fresh child.
    """
    chunks = [(c.number, c.source) for c in cells if c.syntax_error is None]
    remaining = list(jobs)
    results: dict[str, dict] = {}
    load_errors: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tinyllm-grade-") as workdir:
        while remaining:
            payload = pickle.dumps({"chunks": chunks, "jobs": remaining, "time_limit": time_limit,
                                    "print_cap": PRINT_CAP}, protocol=4)
            try:
                proc = subprocess.Popen([sys.executable, "-I", "-c", SANDBOX_SOURCE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, cwd=workdir, env=_child_env(), preexec_fn=_limits)
            except OSError as exc:
                return load_errors, results, f"could not start the grading process: {exc}"
            lines: queue.Queue = queue.Queue()

            def feed(p=proc):
                try:
                    p.stdin.write(payload)
                    p.stdin.close()
                except OSError:
                    pass

            def read(p=proc):
                try:
                    for line in p.stdout:
                        lines.put(line)
                except (OSError, ValueError):
                    pass
                lines.put(None)

            threading.Thread(target=feed, daemon=True).start()
            threading.Thread(target=read, daemon=True).start()
            current: str | None = None
            loaded = False
            deadline = time.monotonic() + STARTUP_GRACE + time_limit * max(1, len(chunks))
            outcome = None
            while True:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    outcome = "timeout"
                    break
                if line is None:
                    outcome = "eof"
                    break
                try:
                    msg = json.loads(line)
                except (ValueError, RecursionError):
                    outcome = "garbled"
                    break
                kind = msg.get("kind") if isinstance(msg, dict) else None
                if kind == "loaded":
                    loaded = True
                    if not load_errors:
                        load_errors = [e for e in msg.get("errors", []) if isinstance(e, dict)]
                    deadline = time.monotonic() + time_limit + KILL_GRACE
                elif kind == "start":
                    current = msg.get("key")
                    deadline = time.monotonic() + time_limit + KILL_GRACE
                elif kind == "done":
                    results[msg.get("key")] = msg
                    current = None
                    deadline = time.monotonic() + time_limit + KILL_GRACE
            _kill(proc)
            remaining = [j for j in remaining if j["key"] not in results]
            if not remaining:
                break
            if not loaded:
                why = {"timeout": f"did not finish within {time_limit:g} s",
                       "eof": f"ended the process (exit code {proc.returncode})",
                       "garbled": "wrote into the grader's result channel"}[outcome]
                return load_errors, results, f"loading your code {why}"
            if current is None or current not in {j["key"] for j in remaining}:
                # the child stopped between jobs: blame nothing, but make sure we progress
                current = remaining[0]["key"]
            why = {"timeout": "TimeLimit", "eof": "ProcessEnded", "garbled": "Garbled"}[outcome]
            results[current] = {"kind": "done", "key": current, "results": None, "fatal": why,
                                "returncode": proc.returncode}
            remaining = [j for j in remaining if j["key"] != current]
    return load_errors, results, None


def _kill(proc: subprocess.Popen) -> None:
    try:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, 9)      # the child runs in its own session: take its children too
            except OSError:
                proc.kill()
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pass
    for stream in (proc.stdout, proc.stdin):
        try:
            if stream:
                stream.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# decoding and judging
# ---------------------------------------------------------------------------------------------

def decode(obj: Any, limit: float | None = None) -> Any:
    if not isinstance(obj, dict):
        return CallError("BadResult", "unreadable result")
    t = obj.get("t")
    if t == "py":
        return obj.get("v")
    if t == "float":
        return float(obj.get("v"))
    if t in ("array", "scalar"):
        dtype = np.dtype(obj["dtype"])
        if dtype.hasobject:
            return CallError("BadResult", "object array")
        a = np.frombuffer(base64.b64decode(obj["b64"]), dtype=dtype).reshape(obj["shape"]).copy()
        return a[()] if t == "scalar" else a
    if t == "list":
        return [decode(v, limit) for v in obj.get("v", [])]
    if t == "tuple":
        return tuple(decode(v, limit) for v in obj.get("v", []))
    if t == "dict":
        out = {}
        for k, v in obj.get("v", []):
            k = decode(k, limit)
            if isinstance(k, list):
                k = tuple(k)
            try:
                out[k] = decode(v, limit)
            except TypeError:
                return _Opaque("dict with unhashable keys")
        return out
    if t == "error":
        return CallError(str(obj.get("type")), str(obj.get("message", "")), str(obj.get("where", "")), limit)
    if t == "missing":
        return CallError("Missing")
    return _Opaque(str(obj.get("type", "unknown object")))


class _Opaque:
    """A returned value that cannot travel back (a custom class, a huge array)."""

    def __init__(self, what: str):
        self.what = what

    def __repr__(self) -> str:
        return self.what


def judge_exercise(ex: Exercise, msg: dict | None, *, cells: list[Cell], load_errors: list[dict],
                   fatal: str | None, time_limit: float) -> ExerciseResult:
    """Score one exercise from the sandbox's message (or the reason there is none)."""
    res = ExerciseResult(ex.function, ex.title, 0.0, ex.max_points)
    zero = [TestResult(t.name, 0.0, float(t.points), False, "") for t in ex.tests]
    defining = [c for c in cells if ex.function in c.defines]
    broken = [c for c in defining if c.syntax_error]
    if fatal:
        res.message, res.tests = fatal, zero
        return res
    if msg is None:
        res.message, res.tests = "the grader got no result for this function", zero
        return res
    if msg.get("fatal"):
        kind = msg["fatal"]
        res.message = {
            "TimeLimit": f"`{ex.function}` did not finish within the time limit ({time_limit:g} s), even when interrupted: "
                         "look for an infinite loop",
            "ProcessEnded": f"`{ex.function}` ended the grading process (exit code {msg.get('returncode')}): "
                            "do not call exit(), and keep memory use reasonable",
            "Garbled": f"`{ex.function}` wrote into the grader's result channel",
        }.get(kind, kind)
        res.tests = zero
        return res
    if msg.get("results") is None:
        res.message, res.tests = msg.get("problem", "no results came back"), zero
        return res
    rows = msg["results"]
    first = rows[0][0] if rows and rows[0] else None
    if isinstance(first, dict) and first.get("t") == "missing":
        if broken:
            res.message = f"{broken[-1].syntax_error}, so `{ex.function}` is not defined"
        else:
            errs = [e for e in load_errors if any(c.number == e.get("cell") for c in defining)]
            if errs:
                e = errs[-1]
                res.message = (f"cell {e['cell']} raised {e.get('type')}: {e.get('message', '')} "
                               f"({e.get('where') or 'while defining it'}), so `{ex.function}` is not defined")
            else:
                res.message = (f"function `{ex.function}` is not defined: write `def {ex.function}(...)` in its "
                               "exercise cell (names are case-sensitive)")
        res.tests = zero
        return res
    printed = int(msg.get("printed") or 0)
    if printed > PRINT_CAP:
        res.message = (f"`{ex.function}` printed {printed / 1e6:.1f} million characters (the limit is "
                       f"{PRINT_CAP / 1e6:.0f} million): remove the debugging prints")
        res.tests = zero
        return res
    for test, row in zip(ex.tests, rows):
        values = [decode(v, time_limit) for v in row]
        try:
            test.judge(values)
            res.tests.append(TestResult(test.name, float(test.points), float(test.points), True, ""))
        except Fail as exc:
            res.tests.append(TestResult(test.name, 0.0, float(test.points), False, str(exc)))
        except Exception as exc:  # noqa: BLE001 - a result the judge did not foresee is a failed test, not a crash
            res.tests.append(TestResult(test.name, 0.0, float(test.points), False,
                                        f"the result could not be checked ({type(exc).__name__}: {exc}); "
                                        "check the return type and shape against the docstring"))
    failed = {t.feedback for t in res.tests if not t.passed}
    if len(failed) == 1 and not any(t.passed for t in res.tests) and len(res.tests) > 1:
        res.message = failed.pop()              # one reason for every test: say it once
        for t in res.tests:
            t.feedback = ""
    not_impl = [v for row in rows for v in row if isinstance(v, dict) and v.get("type") == "NotImplementedError"]
    if not_impl and not any(t.passed for t in res.tests):
        res.message = "not implemented yet: replace `raise NotImplementedError(...)` with your code"
        for t in res.tests:
            t.feedback = ""
    res.score = float(sum(t.points for t in res.tests))
    return res


def grade_cells(lesson: str, cells: list[Cell], *, time_limit: float = DEFAULT_TIMEOUT,
                implementations: dict[str, str] | None = None, only: list[str] | None = None,
                notebook: str = "<source>") -> Report:
    """Grade the definitions in ``cells`` for ``lesson``.

    ``implementations`` (see :func:`grade_source`) maps names defined in the cells to the exercise
    each implements, to grade several versions of one function in one process.
    """
    report = Report(notebook=notebook, lesson=lesson)
    try:
        exercises = load_exercises(lesson)
    except Exception as exc:  # noqa: BLE001
        report.error = f"could not load the graded checks for {lesson}: {exc}"
        return report
    if only:
        unknown = [o for o in only if o not in {e.function for e in exercises}]
        if unknown:
            report.error = (f"no exercise named {', '.join(unknown)} in {lesson}; exercises: "
                            + ", ".join(e.function for e in exercises))
            return report
        exercises = [e for e in exercises if e.function in only]
    if any(c.syntax_error for c in cells):
        report.notes += [c.syntax_error for c in cells if c.syntax_error]
    if any(re.search(r"^\s*(import\s+tinyllm|from\s+tinyllm)", c.source, flags=re.M) for c in cells):
        report.notes.append("imports of tinyllm are ignored by the grader: write the graded functions with NumPy")
    pairs = [(ex, ex.function) for ex in exercises]
    if implementations:
        by_name = {e.function: e for e in exercises}
        pairs = [(by_name[fn], attr) for attr, fn in implementations.items()]
    jobs = [{"key": f"{ex.function}@{attr}", "attr": attr, "tests": [t.calls for t in ex.tests]} for ex, attr in pairs]
    try:
        load_errors, results, fatal = run_sandbox(cells, jobs, time_limit)
    except Exception as exc:  # noqa: BLE001 - the grader always finishes its report
        load_errors, results, fatal = [], {}, f"the grader could not run your code: {type(exc).__name__}: {exc}"
    for e in load_errors:
        report.notes.append(f"cell {e.get('cell')} raised {e.get('type')}: {e.get('message', '')}".rstrip(": "))
    for (ex, attr), job in zip(pairs, jobs):
        r = judge_exercise(ex, results.get(job["key"]), cells=cells, load_errors=load_errors, fatal=fatal,
                           time_limit=time_limit)
        if attr != ex.function:
            r.function = f"{ex.function}@{attr}"
        report.exercises.append(r)
    report.score = float(sum(e.score for e in report.exercises))
    report.max_score = float(sum(e.max_score for e in report.exercises))
    return report


def grade_source(lesson: str, source: str, *, implementations: dict[str, str] | None = None,
                 time_limit: float = DEFAULT_TIMEOUT, only: list[str] | None = None) -> Report:
    """Grade plain Python source without a notebook or kernel.

    ``implementations`` maps names defined in ``source`` to the exercise they implement, so one
    process can grade many versions of the same function: ``{"softmax_no_max": "softmax"}``.
    """
    return grade_cells(lesson, source_cells(source), time_limit=time_limit, implementations=implementations,
                       only=only, notebook="<source>")


# ---------------------------------------------------------------------------------------------
# notebooks
# ---------------------------------------------------------------------------------------------

def read_notebook(path: str | Path) -> tuple[dict | None, str | None]:
    """The notebook as a dict, or None and the reason it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"{path}: no such file"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{path}: cannot be read ({exc})"
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, (f"{path} is not a valid notebook: invalid JSON at line {exc.lineno}, column {exc.colno} "
                      f"({exc.msg}); restore it from the last working version or regenerate it")
    except RecursionError:
        return None, f"{path} is not a valid notebook: its JSON is nested too deeply"
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return None, f"{path} is not a valid notebook: it has no list of cells"
    return nb, None


def execute_notebook(nb: dict, timeout: float) -> list[str]:
    """Run the notebook in a fresh kernel (errors allowed, each cell limited to ``timeout`` s) in an
    empty temporary directory; return notes about the cells that failed."""
    import nbformat
    from nbclient import NotebookClient

    notes: list[str] = []
    try:
        node = nbformat.reads(json.dumps(nb), as_version=4)      # normalises sources split in lines
        for cell in node.cells:
            if cell.get("cell_type") == "code":
                cell["outputs"] = []
    except Exception as exc:  # noqa: BLE001
        return [f"the notebook could not be executed: {exc}"]
    with tempfile.TemporaryDirectory(prefix="tinyllm-run-") as workdir:
        client = NotebookClient(node, timeout=int(max(1, timeout)), kernel_name="python3", allow_errors=True,
                                interrupt_on_timeout=True, record_timing=False,
                                resources={"metadata": {"path": workdir}})
        try:
            client.execute()
        except Exception as exc:  # noqa: BLE001 - a dead kernel still gives a report
            notes.append(f"running the notebook stopped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    for i, cell in enumerate(node.cells):
        if cell.get("cell_type") != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                ename, evalue = out.get("ename", "Error"), out.get("evalue", "")
                if ename == "NotImplementedError":
                    evalue = "not implemented yet"
                first = next((ln.strip() for ln in str(cell.get("source", "")).splitlines() if ln.strip()), "")
                first = first if len(first) <= 40 else first[:37] + "..."
                notes.append(f"cell {i + 1} ({first}) raised {ename}: {evalue}"[:300])
    return notes


def grade_notebook(path: str | Path, *, timeout: float = DEFAULT_TIMEOUT, execute: bool = True,
                   only: list[str] | None = None, lesson: str | None = None) -> Report:
    """Grade one exercise notebook; never raises for anything about the notebook or the learner's code."""
    path = Path(path)
    nb, problem = read_notebook(path)
    lesson = lesson or lesson_for(path, nb)
    report = Report(notebook=str(path), lesson=lesson)
    if lesson is None:
        report.error = (f"{path.name}: cannot tell which lesson this is; name it like exercises/NN_topic.ipynb "
                        f"(lessons: {', '.join(lessons())})")
        return report
    if nb is None and not path.is_file():
        report.error = problem
        return report
    if nb is None:
        report = grade_cells(lesson, [], time_limit=timeout, only=only, notebook=str(path))
        for ex in report.exercises:
            ex.message = problem
            for t in ex.tests:
                t.points, t.passed, t.feedback = 0.0, False, ""
            ex.score = 0.0
        report.score = 0.0
        report.notes.insert(0, problem)
        return report
    notes = []
    if execute:
        try:
            load_exercises(lesson)       # import the checks before the learner's code runs in a kernel
        except Exception:  # noqa: BLE001 - reported by grade_cells below
            pass
        notes = execute_notebook(nb, timeout)
    report = grade_cells(lesson, code_cells(nb), time_limit=timeout, only=only, notebook=str(path))
    report.notes = notes + [n for n in report.notes if n not in notes]
    return report
