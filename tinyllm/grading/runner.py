"""Grade a learner's notebook (or plain source) against the graded checks.

Steps, each of which turns every problem into feedback instead of a crash:

1. Read the notebook. Not valid JSON -> every exercise scores zero, saying so.
2. Optionally execute it top to bottom in a fresh Jupyter kernel (nbclient) with
   a per-cell time limit and one for the whole run, allowing errors: failing
   example asserts are reported as notes, they do not stop the run and do not
   change the points.
3. Take the top-level definitions (imports, functions, classes, constants) of
   every code cell, in notebook order, and run them in a separate isolated Python
   process (``sandbox.py``) that cannot read tinyllm. That process receives only
   the inputs of the graded calls and returns the learner's return values as JSON.
4. Judge the return values here, against references computed in this process.

The checks (and the tinyllm modules they use) are loaded into this process before
any learner code runs. The kernel and the sandbox run confined (:mod:`jail`): a
scratch folder as working directory and home, a memory limit, no writes elsewhere
where the OS allows it, and every process they start is killed when they end.
"""
from __future__ import annotations

import ast
import base64
import importlib
import importlib.util
import json
import os
import pickle
import queue
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import tinyllm
from tinyllm.grading import jail
from tinyllm.grading.core import ArgsAfter, CallError, Exercise, Fail
from tinyllm.grading.sandbox import clean_source

# Read once, when the grader starts: code run later (a notebook in its kernel) cannot change what runs.
SANDBOX_SOURCE = Path(__file__).with_name("sandbox.py").read_text(encoding="utf-8")
JAIL_SOURCE = Path(jail.__file__).read_text(encoding="utf-8")
LIBRARY_DIR = Path(tinyllm.__file__).resolve().parent
DEFAULT_CHECKS = "tinyllm.grading.checks"
DEFAULT_TIMEOUT = 30.0
DEFAULT_NOTEBOOK_TIMEOUT = 600.0   # seconds for the whole notebook run in the kernel
DEFAULT_MEMORY = 4 * 2**30         # bytes of address space for the kernel and for the sandbox
MAX_MESSAGE = 256 * 2**20      # the longest line read from the sandbox (as its MAX_MESSAGE)
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

class ChecksSourceError(ValueError):
    """The checks cannot be loaded from where ``--checks-from`` says."""


class _Checks:
    """Where the graded checks come from (a package of checks modules, or a folder of them), and the
    exercises of each lesson once loaded: loaded once, before any learner code runs, and kept."""

    def __init__(self, source: str = DEFAULT_CHECKS):
        self.source = source
        if Path(source).is_dir():
            self.package, self.folder = None, Path(source).resolve()
        else:
            try:
                spec = importlib.util.find_spec(source)
            except (ImportError, ValueError) as exc:
                raise ChecksSourceError(f"no checks package or folder {source!r}: {exc}") from None
            if spec is None or not spec.submodule_search_locations:
                raise ChecksSourceError(f"no checks package or folder {source!r}")
            self.package, self.folder = source, Path(list(spec.submodule_search_locations)[0]).resolve()
        self.loaded: dict[str, list[Exercise]] = {}

    def lessons(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("[0-9][0-9]_*.py"))

    def load(self, lesson: str) -> list[Exercise]:
        if lesson not in self.loaded:
            if lesson not in self.lessons():
                raise KeyError(f"no graded checks for lesson {lesson!r}; known lessons: {', '.join(self.lessons())}")
            if self.package:
                module = importlib.import_module(f"{self.package}.{lesson}")
            else:
                spec = importlib.util.spec_from_file_location(f"_tinyllm_checks_{lesson}", self.folder / f"{lesson}.py")
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            self.loaded[lesson] = list(module.EXERCISES)
        return self.loaded[lesson]

    def load_all(self) -> None:
        for lesson in self.lessons():
            try:
                self.load(lesson)
            except Exception:  # noqa: BLE001 - reported when that lesson is graded
                pass


_CHECKS = _Checks()


def use_checks(source: str = DEFAULT_CHECKS, *, untrusted: list[str | Path] = ()) -> None:
    """Take the checks from ``source`` (a package name such as ``tinyllm.grading.checks``, or a folder of
    ``NN_topic.py`` modules). Refuse, with :class:`ChecksSourceError`, when the checks or tinyllm itself
    (the references) lie inside one of the ``untrusted`` folders (the learner's repository)."""
    global _CHECKS
    checks = _Checks(source)
    for folder in untrusted:
        folder = Path(folder).resolve()
        for what, path in (("the checks", checks.folder), ("tinyllm (the reference implementations)", LIBRARY_DIR)):
            if path == folder or folder in path.parents:
                raise ChecksSourceError(
                    f"{what} would come from {path}, inside the graded folder {folder}: install tinyllm from the "
                    "instructor's copy in a separate environment and run its `tinyllm` (see the README)")
    _CHECKS = checks


def checks_folder() -> Path:
    return _CHECKS.folder


def lessons() -> list[str]:
    """Names of the lessons that have graded checks, e.g. ``["01_parameters_and_initialization", ...]``."""
    return _CHECKS.lessons()


def load_exercises(lesson: str) -> list[Exercise]:
    return list(_CHECKS.load(lesson))


def preload_checks() -> None:
    """Load every lesson's checks (and the tinyllm modules they import) now, before learner code runs:
    what a notebook later writes to disk cannot change them."""
    _CHECKS.load_all()


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

_UID: list = []


def _grading_uid() -> int | None:
    """As root, the unused user id the learner's processes run as (None when not root)."""
    if not _UID:
        try:
            _UID.append(jail.unused_uid())
        except Exception:  # noqa: BLE001 - no user switch; the other protections remain
            _UID.append(None)
    return _UID[0]


def library_dirs(*near: str | Path) -> list[str]:
    """tinyllm's package folders the sandbox may not read: the grader's own, and a ``tinyllm/`` package
    in each of ``near`` (the working directory, the notebook's repository)."""
    dirs = {str(LIBRARY_DIR)}
    for folder in near:
        cand = Path(folder).resolve() / "tinyllm"
        if (cand / "__init__.py").is_file():
            dirs.add(str(cand))
    return sorted(dirs)


class Confined:
    """One confined run of learner code (a kernel, or sandbox processes): a scratch folder that is its
    working directory, home and temporary folder; resource limits; Landlock where available; a user of
    its own when the grader is root. :meth:`close` kills every process the run left and removes the folder."""

    def __init__(self, memory: int = DEFAULT_MEMORY, hidden: list[str] | None = None):
        self.memory = int(memory)
        self.hidden = hidden
        self.marker = secrets.token_hex(8)
        self.uid = _grading_uid()
        self.landlock = jail.landlock_abi() > 0
        self.scratch = tempfile.mkdtemp(prefix="tinyllm-grade-")
        if self.uid is not None:
            os.chown(self.scratch, self.uid, self.uid)
        self.since = jail.boot_ticks() if os.path.isdir("/proc") else None
        self._subreaper = jail.set_subreaper(True)
        self.sessions: list[int] = []

    def command(self, cmd: list[str], chown: list[str] = ()) -> list[str]:
        config = {"memory": self.memory, "uid": self.uid, "chown": [self.scratch, *chown],
                  "landlock": self.landlock, "scratch": self.scratch, "hidden": self.hidden}
        return [sys.executable, "-I", "-c", JAIL_SOURCE, json.dumps(config), "--", *cmd]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        s = self.scratch
        env.update({jail.MARKER: self.marker, "HOME": s, "TMPDIR": s, "IPYTHONDIR": os.path.join(s, ".ipython"),
                    "MPLCONFIGDIR": os.path.join(s, ".matplotlib"), "XDG_CACHE_HOME": os.path.join(s, ".cache"),
                    "XDG_CONFIG_HOME": os.path.join(s, ".config"), "JUPYTER_RUNTIME_DIR": os.path.join(s, ".jupyter"),
                    "JUPYTER_CONFIG_DIR": os.path.join(s, ".jupyter"), "JUPYTER_DATA_DIR": os.path.join(s, ".jupyter"),
                    "PYTHONDONTWRITEBYTECODE": "1"})
        return env

    def kill(self) -> int:
        return jail.sweep(self.marker, uid=self.uid, sessions=tuple(self.sessions), children_since=self.since)

    def close(self) -> None:
        self.kill()
        jail.set_subreaper(self._subreaper)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> "Confined":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _sandbox_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


def run_sandbox(cells: list[Cell], jobs: list[dict], time_limit: float, *, memory: int = DEFAULT_MEMORY,
                hidden: list[str] | None = None) -> tuple[list[dict], dict[str, dict], str | None]:
    """Run ``jobs`` (``{"key", "attr", "tests"}``) against the definitions in ``cells`` in child processes.

    Returns (errors while loading the cells, results by job key, a message when loading failed as a whole).
    A job whose child hangs or dies is recorded as such and the rest go to a fresh child.
    """
    hidden = library_dirs(Path.cwd()) if hidden is None else hidden
    chunks = [(c.number, c.source) for c in cells if c.syntax_error is None]
    remaining = list(jobs)
    results: dict[str, dict] = {}
    load_errors: list[dict] = []
    with Confined(memory, hidden) as box:
        while remaining:
            payload = pickle.dumps({"chunks": chunks, "jobs": remaining, "time_limit": time_limit,
                                    "print_cap": PRINT_CAP, "memory": memory, "hidden": hidden}, protocol=4)
            try:
                proc = subprocess.Popen(box.command([sys.executable, "-I", "-c", SANDBOX_SOURCE]), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=box.scratch,
                                        env=box.env(_sandbox_env()), start_new_session=True)
            except OSError as exc:
                return load_errors, results, f"could not start the grading process: {exc}"
            box.sessions.append(proc.pid)
            lines: queue.Queue = queue.Queue()

            def feed(p=proc):
                try:
                    p.stdin.write(payload)
                    p.stdin.close()
                except OSError:
                    pass

            def read(p=proc):
                try:
                    while True:
                        line = p.stdout.readline(MAX_MESSAGE + 2)
                        if not line:
                            break
                        lines.put(line if line.endswith(b"\n") else b"not a message\n")   # cut: garbled
                except (OSError, ValueError):
                    pass
                lines.put(None)

            threading.Thread(target=feed, daemon=True).start()
            reader = threading.Thread(target=read, daemon=True)
            reader.start()
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
            _kill(proc, box, reader)
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


def _kill(proc: subprocess.Popen, box: Confined, reader: threading.Thread) -> None:
    """Kill the sandbox and everything it started (which may hold its output pipe open), then close the pipes."""
    try:
        os.killpg(proc.pid, 9)          # the child runs in its own session: take its children too
    except OSError:
        pass
    try:
        proc.kill()
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pass
    box.kill()
    reader.join(timeout=10)             # the pipe's last writer is gone: the reader sees its end
    for stream in (proc.stdout, proc.stdin):
        try:
            if stream and not reader.is_alive():
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
    if t == "with_args":                 # only the sandbox's call loop writes this type, never _encode
        return ArgsAfter(decode(obj.get("value"), limit), decode(obj.get("args"), limit))
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
    """A returned value that cannot travel back (a custom class, a huge array). It compares equal to nothing,
    and its type has the name of what was returned, so feedback says "returned a MyClass"."""

    def __new__(cls, what: str):
        return object.__new__(type(what[:100], (cls,), {"__slots__": ()}))

    def __init__(self, what: str):
        pass

    def __repr__(self) -> str:
        return type(self).__name__


def _tinyllm_import(node: ast.AST) -> str | None:
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.name.split(".")[0] == "tinyllm":
                return f"import {a.name}"
    if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tinyllm" and node.level == 0:
        return f"from {node.module} import ..."
    return None


def library_use(cells: list[Cell], function: str) -> str | None:
    """How the function ``function`` defined in ``cells`` (or a notebook function it calls) uses tinyllm:
    an import of it, a name bound to it at top level, or a string naming one of its modules
    (``__import__("tinyllm.nn")``).
    None when it does not, as far as the source shows; the sandbox refuses the rest at run time."""
    defs: dict[str, ast.AST] = {}
    aliases: dict[str, str] = {}
    for cell in cells:
        if cell.syntax_error:
            continue
        try:
            tree = ast.parse(clean_source(cell.source))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defs[node.name] = node
                aliases.pop(node.name, None)
            elif _tinyllm_import(node):
                for a in node.names:
                    aliases[(a.asname or a.name).split(".")[0]] = _tinyllm_import(node)
    todo, seen = [function], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        body = defs[name].body
        docstring = body[0].value if body and isinstance(body[0], ast.Expr) else None
        for sub in ast.walk(defs[name]):
            found = _tinyllm_import(sub)
            if found:
                return f"`{found}` in `{name}`"
            if (isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub is not docstring
                    and re.match(r"\s*tinyllm(\.|\s*$)", sub.value)):
                return f"the string {sub.value[:40]!r} in `{name}`"
            if isinstance(sub, ast.Name):
                if sub.id in aliases:
                    return f"`{sub.id}` from `{aliases[sub.id]}` in `{name}`"
                todo.append(sub.id)
    return None


def judge_exercise(ex: Exercise, msg: dict | None, *, cells: list[Cell], load_errors: list[dict],
                   fatal: str | None, time_limit: float, attr: str | None = None) -> ExerciseResult:
    """Score one exercise from the sandbox's message (or the reason there is none)."""
    res = ExerciseResult(ex.function, ex.title, 0.0, ex.max_points)
    zero = [TestResult(t.name, 0.0, float(t.points), False, "") for t in ex.tests]
    attr = attr or ex.function
    defining = [c for c in cells if attr in c.defines]
    broken = [c for c in defining if c.syntax_error]
    if fatal:
        res.message, res.tests = fatal, zero
        return res
    used = library_use(cells, attr) or (", ".join((msg or {}).get("library") or []) or None)
    if used:
        res.message = (f"`{attr}` uses tinyllm ({used}): a graded function must be your own code, not the "
                       "library's reference implementation, so it gets 0 points")
        res.tests = zero
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
                            "do not call exit(), and keep memory use within the grader's limit",
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
                res.message = (f"function `{attr}` is not defined: write `def {attr}(...)` in its "
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
                notebook: str = "<source>", memory: int = DEFAULT_MEMORY, hidden: list[str] | None = None) -> Report:
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
    pairs = [(ex, ex.function) for ex in exercises]
    if implementations:
        by_name = {e.function: e for e in exercises}
        pairs = [(by_name[fn], attr) for attr, fn in implementations.items()]
    jobs = [{"key": f"{ex.function}@{attr}", "attr": attr, "tests": [t.calls for t in ex.tests]} for ex, attr in pairs]
    try:
        load_errors, results, fatal = run_sandbox(cells, jobs, time_limit, memory=memory, hidden=hidden)
    except Exception as exc:  # noqa: BLE001 - the grader always finishes its report
        load_errors, results, fatal = [], {}, f"the grader could not run your code: {type(exc).__name__}: {exc}"
    for e in load_errors:
        report.notes.append(f"cell {e.get('cell')} raised {e.get('type')}: {e.get('message', '')}".rstrip(": "))
    for (ex, attr), job in zip(pairs, jobs):
        r = judge_exercise(ex, results.get(job["key"]), cells=cells, load_errors=load_errors, fatal=fatal,
                           time_limit=time_limit, attr=attr)
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
    if path.is_dir():
        return None, f"{path}: a folder, not a notebook"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"{path}: no such file"
    except UnicodeDecodeError:
        return None, f"{path}: not a notebook (not even text); grade a .ipynb file such as exercises/NN_topic.ipynb"
    except OSError as exc:
        return None, f"{path}: cannot be read ({exc.strerror or exc})"
    not_a_notebook = f"{path}: not a notebook; grade a .ipynb file such as exercises/NN_topic.ipynb"
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as exc:
        if path.suffix != ".ipynb":
            return None, not_a_notebook
        return None, (f"{path}: not a valid notebook: invalid JSON at line {exc.lineno}, column {exc.colno} "
                      f"({exc.msg}); restore it from the last working version or regenerate it")
    except RecursionError:
        return None, f"{path}: not a valid notebook: its JSON is nested too deeply"
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return None, not_a_notebook if path.suffix != ".ipynb" else f"{path}: not a valid notebook: it has no list of cells"
    return nb, None


def _kernel_manager(box: Confined):
    """A Jupyter kernel manager that starts the kernel confined in ``box``, its output to /dev/null (the
    kernel's own log lines, such as its transport warning, are not the learner's)."""
    from jupyter_client.manager import AsyncKernelManager

    class ConfinedKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            kw["env"] = box.env(kw.get("env"))
            kw.update(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=box.scratch)
            cmd = box.command(kernel_cmd, chown=[os.path.realpath(self.connection_file)])
            await super()._async_launch_kernel(cmd, **kw)
            box.sessions.append(self.provisioner.process.pid)

    return ConfinedKernelManager(kernel_name="python3", connection_file=os.path.join(box.scratch, "kernel.json"))


def _errors_only_client(node, **kw):
    """An nbclient that keeps only the error outputs (cut to 4 kB each): a notebook printing gigabytes
    cannot fill the grader's memory."""
    from nbclient import NotebookClient

    class ErrorsOnly(NotebookClient):
        def output(self, outs, msg, display_id, cell_index):
            if msg.get("msg_type") != "error":
                return None
            out = super().output(outs, msg, display_id, cell_index)
            if out is not None:
                out["evalue"] = str(out.get("evalue", ""))[:4000]
                out["traceback"] = []
            return out

    return ErrorsOnly(node, **kw)


def execute_notebook(nb: dict, timeout: float, *, notebook_timeout: float = DEFAULT_NOTEBOOK_TIMEOUT,
                     memory: int = DEFAULT_MEMORY) -> list[str]:
    """Run the notebook in a fresh, confined kernel (errors allowed, each cell limited to ``timeout`` s, the
    whole run to ``notebook_timeout`` s, after which the kernel and everything it started are killed);
    return notes about the cells that failed."""
    import nbformat

    notes: list[str] = []
    try:
        node = nbformat.reads(json.dumps(nb), as_version=4)      # normalises sources split in lines
        for cell in node.cells:
            if cell.get("cell_type") == "code":
                cell["outputs"] = []
    except Exception as exc:  # noqa: BLE001
        return [f"the notebook could not be executed: {exc}"]
    gib = f"{memory / 2**30:.3g} GiB"
    with Confined(memory) as box:
        client = _errors_only_client(node, km=_kernel_manager(box), timeout=int(max(1, timeout)),
                                     kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
                                     record_timing=False, resources={"metadata": {"path": box.scratch}})
        expired = threading.Event()

        def stop() -> None:
            expired.set()
            box.kill()

        watchdog = threading.Timer(notebook_timeout, stop)
        watchdog.daemon = True
        watchdog.start()
        try:
            client.execute()
        except Exception as exc:  # noqa: BLE001 - a dead kernel still gives a report
            if expired.is_set():
                notes.append(f"the notebook did not finish within {notebook_timeout:g} s (the limit for the whole "
                             "run), so its kernel and every process it started were stopped")
            elif type(exc).__name__ == "DeadKernelError":
                notes.append(f"the kernel died while running the notebook: it may have used more memory than the "
                             f"grader allows ({gib}), or called exit")
            else:
                notes.append(f"running the notebook stopped: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}")
        finally:
            watchdog.cancel()
    for i, cell in enumerate(node.cells):
        if cell.get("cell_type") != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                ename, evalue = out.get("ename", "Error"), out.get("evalue", "")
                if ename == "NotImplementedError":
                    evalue = "not implemented yet"
                if ename == "MemoryError":
                    evalue = f"it used more memory than the grader allows ({gib})"
                first = next((ln.strip() for ln in str(cell.get("source", "")).splitlines() if ln.strip()), "")
                first = first if len(first) <= 40 else first[:37] + "..."
                notes.append(f"cell {i + 1} ({first}) raised {ename}: {evalue}"[:300])
    return notes


def grade_notebook(path: str | Path, *, timeout: float = DEFAULT_TIMEOUT, execute: bool = True,
                   only: list[str] | None = None, lesson: str | None = None,
                   notebook_timeout: float = DEFAULT_NOTEBOOK_TIMEOUT, memory: int = DEFAULT_MEMORY) -> Report:
    """Grade one exercise notebook; never raises for anything about the notebook or the learner's code.

    A file that is missing or is not a notebook is not graded (``report.error``, one line)."""
    path = Path(path)
    nb, problem = read_notebook(path)
    lesson = lesson or lesson_for(path, nb)
    report = Report(notebook=str(path), lesson=lesson)
    if nb is None:
        report.error = problem
        return report
    if lesson is None:
        report.error = (f"{path.name}: cannot tell which lesson this is; name it like exercises/NN_topic.ipynb "
                        f"(lessons: {', '.join(lessons())})")
        return report
    preload_checks()            # every lesson's checks are in memory before the learner's code runs
    notes = execute_notebook(nb, timeout, notebook_timeout=notebook_timeout, memory=memory) if execute else []
    here = path.resolve().parent
    report = grade_cells(lesson, code_cells(nb), time_limit=timeout, only=only, notebook=str(path), memory=memory,
                         hidden=library_dirs(Path.cwd(), here, *here.parents[:2]))   # exercises/zh/ is one deeper
    seen = {m.group(1) for m in (re.match(r"cell (\d+) \(", n) for n in notes) if m}
    report.notes = notes + [n for n in report.notes if n not in notes and not (
        (m := re.match(r"cell (\d+) raised", n)) and m.group(1) in seen)]      # said once, by the kernel run
    return report
