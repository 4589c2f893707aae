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
import dataclasses
import importlib
import importlib.util
import io
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
import types
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
CAPSTONE = "capstone"              # exercises/capstone.ipynb, graded on the functions of the exercise notebooks
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

    def has_capstone(self) -> bool:
        return (self.folder / f"{CAPSTONE}.py").is_file()

    def load(self, lesson: str) -> list[Exercise]:
        if lesson not in self.loaded:
            if lesson not in self.lessons() and not (lesson == CAPSTONE and self.has_capstone()):
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
        for lesson in self.lessons() + ([CAPSTONE] if self.has_capstone() else []):
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


def has_capstone() -> bool:
    """Whether the checks grade the capstone (``capstone.py`` next to the lessons' checks)."""
    return _CHECKS.has_capstone()


def lesson_for(path: str | Path, nb: dict | None = None) -> str | None:
    """Which lesson a notebook belongs to: its metadata ``tinyllm.lesson``, else the ``NN_`` of its file name
    (``capstone.ipynb``: the capstone)."""
    known = lessons() + ([CAPSTONE] if has_capstone() else [])
    if isinstance(nb, dict):
        meta = nb.get("metadata")
        lesson = meta.get("tinyllm", {}).get("lesson") if isinstance(meta, dict) and isinstance(meta.get("tinyllm"), dict) else None
        if isinstance(lesson, str) and lesson in known:
            return lesson
    if Path(path).stem == CAPSTONE and CAPSTONE in known:
        return CAPSTONE
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
    notebook: str | None = None      # for the capstone: the exercise notebook the cell comes from


def _chunks(cells: list[Cell]) -> list[tuple]:
    """What the sandbox runs: (cell number, source[, notebook]) of the cells that parse."""
    return [(c.number, c.source) if c.notebook is None else (c.number, c.source, c.notebook)
            for c in cells if c.syntax_error is None]


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


def capstone_cells(folder: str | Path) -> list[Cell]:
    """The code cells of the graded exercise notebooks in ``folder`` (``NN_topic.ipynb`` of every lesson), in
    lesson order, each marked with its notebook: the learner's code that the capstone grades."""
    cells = []
    for lesson in lessons():
        nb, _ = read_notebook(Path(folder) / f"{lesson}.ipynb")
        if nb is not None:
            cells += [dataclasses.replace(c, notebook=lesson) for c in code_cells(nb)]
    return cells


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


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


class _Child:
    """One sandbox process: a thread feeds it framed messages, another reads its reply lines into a queue."""

    def __init__(self, box: Confined, payload: bytes):
        self.box = box
        self.proc = subprocess.Popen(box.command([sys.executable, "-I", "-c", SANDBOX_SOURCE]), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=box.scratch,
                                     env=box.env(_sandbox_env()), start_new_session=True)
        box.sessions.append(self.proc.pid)
        self.lines: queue.Queue = queue.Queue()
        self.outbox: queue.Queue = queue.Queue()
        self.outbox.put(_frame(payload))
        threading.Thread(target=self._feed, daemon=True).start()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _feed(self) -> None:
        try:
            while True:
                data = self.outbox.get()
                if data is None:
                    break
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass

    def _read(self) -> None:
        try:
            while True:
                line = self.proc.stdout.readline(MAX_MESSAGE + 2)
                if not line:
                    break
                self.lines.put(line if line.endswith(b"\n") else b"not a message\n")   # cut: garbled
        except (OSError, ValueError):
            pass
        self.lines.put(None)

    def send(self, data: bytes) -> None:
        self.outbox.put(_frame(data))

    def receive(self, timeout: float) -> dict | str:
        """The next message, or why there is none: "timeout", "eof" (the process ended) or "garbled"."""
        try:
            line = self.lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return "timeout"
        if line is None:
            return "eof"
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            return "garbled"
        return msg if isinstance(msg, dict) else "garbled"

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        self.outbox.put(None)
        _kill(self.proc, self.box, self.reader)


def _payload(chunks: list, jobs: list[dict], time_limit: float, memory: int, hidden: list[str], serve: bool) -> bytes:
    return pickle.dumps({"chunks": chunks, "jobs": jobs, "time_limit": time_limit, "print_cap": PRINT_CAP,
                         "memory": memory, "hidden": hidden, "serve": serve}, protocol=4)


def run_sandbox(cells: list[Cell], jobs: list[dict], time_limit: float, *, memory: int = DEFAULT_MEMORY,
                hidden: list[str] | None = None) -> tuple[list[dict], dict[str, dict], str | None]:
    """Run ``jobs`` (``{"key", "attr", "tests"}``) against the definitions in ``cells`` in child processes.

    Returns (errors while loading the cells, results by job key, a message when loading failed as a whole).
    A job whose child hangs or dies is recorded as such and the rest go to a fresh child.
    """
    hidden = library_dirs(Path.cwd()) if hidden is None else hidden
    with Confined(memory, hidden) as box:
        return _run_jobs(box, cells, jobs, time_limit, memory=memory, hidden=hidden)[:3]


def _run_jobs(box: Confined, cells: list[Cell], jobs: list[dict], time_limit: float, *, memory: int,
              hidden: list[str], serve: bool = False) -> tuple[list[dict], dict[str, dict], str | None, _Child | None]:
    """:func:`run_sandbox` in ``box``; with ``serve``, the last child, alive after the jobs, is returned to
    answer end-to-end requests (None when it did not survive)."""
    chunks = _chunks(cells)
    remaining = list(jobs)
    results: dict[str, dict] = {}
    load_errors: list[dict] = []
    while remaining or serve:
        try:
            child = _Child(box, _payload(chunks, remaining, time_limit, memory, hidden, serve))
        except OSError as exc:
            return load_errors, results, f"could not start the grading process: {exc}", None
        current: str | None = None
        loaded = False
        deadline = time.monotonic() + STARTUP_GRACE + time_limit * max(1, len(chunks))
        outcome = "complete"
        while not loaded or any(j["key"] not in results for j in remaining):
            msg = child.receive(deadline - time.monotonic())
            if isinstance(msg, str):
                outcome = msg
                break
            kind = msg.get("kind")
            if kind == "loaded":
                loaded = True
                if not load_errors:
                    load_errors = [e for e in msg.get("errors", []) if isinstance(e, dict)]
            elif kind == "start":
                current = msg.get("key")
            elif kind == "done":
                results[msg.get("key")] = msg
                current = None
            deadline = time.monotonic() + time_limit + KILL_GRACE
        if outcome == "complete" and serve:
            return load_errors, results, None, child
        child.kill()
        remaining = [j for j in remaining if j["key"] not in results]
        if not remaining:
            return load_errors, results, None, None
        if not loaded:
            why = {"timeout": f"did not finish within {time_limit:g} s",
                   "eof": f"ended the process (exit code {child.returncode})",
                   "garbled": "wrote into the grader's result channel"}[outcome]
            return load_errors, results, f"loading your code {why}", None
        if current is None or current not in {j["key"] for j in remaining}:
            # the child stopped between jobs: blame nothing, but make sure we progress
            current = remaining[0]["key"]
        why = {"timeout": "TimeLimit", "eof": "ProcessEnded", "garbled": "Garbled"}[outcome]
        results[current] = {"kind": "done", "key": current, "results": None, "fatal": why,
                            "returncode": child.returncode}
        remaining = [j for j in remaining if j["key"] != current]
        serve = serve and bool(remaining)      # a fresh child for end-to-end tests starts when one is needed
    return load_errors, results, None, None


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

def decode(obj: Any, limit: float | None = None, remote: Any = None) -> Any:
    """A value from the sandbox's JSON. ``remote`` (an end-to-end session) turns handles into
    :class:`RemoteObject` s; without it they are opaque."""
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
        return [decode(v, limit, remote) for v in obj.get("v", [])]
    if t == "tuple":
        return tuple(decode(v, limit, remote) for v in obj.get("v", []))
    if t == "with_args":                 # only the sandbox's call loop writes this type, never _encode
        return ArgsAfter(decode(obj.get("value"), limit, remote), decode(obj.get("args"), limit, remote))
    if t == "dict":
        out = {}
        for k, v in obj.get("v", []):
            k = decode(k, limit, remote)
            if isinstance(k, list):
                k = tuple(k)
            try:
                out[k] = decode(v, limit, remote)
            except TypeError:
                return _Opaque("dict with unhashable keys")
        return out
    if t == "error":
        return CallError(str(obj.get("type")), str(obj.get("message", "")), str(obj.get("where", "")), limit)
    if t == "missing":
        return CallError("Missing")
    if t in ("handle", "method") and remote is not None:
        return remote.handle(obj)
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


# ---------------------------------------------------------------------------------------------
# end-to-end tests: the library runs here, only the learner's functions run in the sandbox
# ---------------------------------------------------------------------------------------------

def _is_tinyllm(module: Any) -> bool:
    return isinstance(module, str) and (module == "tinyllm" or module.startswith("tinyllm."))


class _ArgPickler(pickle.Pickler):
    """Pickles the arguments of a learner call. Remote handles and learner functions travel as references to
    the sandbox's objects; tinyllm objects (a model's layer) as a ``SimpleNamespace`` of their attributes,
    since the sandbox cannot import tinyllm; tinyllm's functions and classes cannot travel at all."""

    def __init__(self, file: Any, session: "EndToEndSession"):
        super().__init__(file, protocol=4)
        self.session = session
        self.new_arrays: dict[int, np.ndarray] = {}
        self.sent: dict[int, Any] = {}            # id -> every array and generator that travels: the only
                                                  # objects a call's in-place changes may be written back into

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, (np.ndarray, np.random.Generator)):
            self.sent[id(obj)] = obj
        if isinstance(obj, np.ndarray) and obj.nbytes >= CACHED_ARRAY_BYTES and _frozen(obj):
            key = (obj.__array_interface__["data"][0], obj.shape, obj.strides, obj.dtype.str)
            sent = self.session.sent_arrays
            if key not in sent:                  # kept alive here, so no other array can take its address
                sent[key] = (len(sent) + 1, obj)
                self.new_arrays[sent[key][0]] = obj
            return ("array", sent[key][0])
        if isinstance(obj, (RemoteObject, RemoteMethod)):
            self.session.check_alive(obj)
            return ("handle", obj._id) if isinstance(obj, RemoteObject) else ("method", obj._of, obj._name)
        if isinstance(obj, LearnerFunction):
            return ("name", obj._attr)
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type, types.ModuleType)):
            if _is_tinyllm(getattr(obj, "__module__", None)) or _is_tinyllm(getattr(obj, "__name__", None)):
                raise pickle.PicklingError(f"{getattr(obj, '__qualname__', obj)!r} is part of tinyllm, which the "
                                           "learner's code cannot use")
            return NotImplemented
        if _is_tinyllm(type(obj).__module__):
            state = getattr(obj, "__dict__", None)
            if state is None:
                slots = [n for c in type(obj).__mro__ for n in getattr(c, "__slots__", ())]
                state = {n: getattr(obj, n) for n in slots if hasattr(obj, n)}
            return (types.SimpleNamespace, (), dict(state))
        return NotImplemented


CACHED_ARRAY_BYTES = 2**16     # a read-only array this large travels to a sandbox once, then by reference


def _frozen(a: np.ndarray) -> bool:
    """Whether ``a`` and every array it views are read-only, so that its values cannot change."""
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        a = a.base
    return True


def _unplain(x: Any) -> Any:
    """The inverse of the sandbox's ``_plain``: a random generator's state from JSON."""
    if isinstance(x, dict):
        if set(x) == {"ndarray", "dtype"}:
            return np.asarray(x["ndarray"], dtype=np.dtype(x["dtype"]))
        return {k: _unplain(v) for k, v in x.items()}
    return x


def _path_name(path: Any) -> str:
    """A readable name of an argument path (the sandbox's ``_mutables``): ``argument 2``, ``w['wq']``..."""
    if not isinstance(path, list) or not path:
        return "an argument"
    key, *steps = path
    out = f"argument {key + 1}" if isinstance(key, int) else f"`{key}`"
    for step in steps:
        kind, k = step if isinstance(step, list) and len(step) == 2 else ("i", "?")
        out += f".{k}" if kind == "a" else f"[{k!r}]"
    return out


def _follow(args: tuple, kwargs: dict, path: Any) -> Any:
    """The object at ``path`` (the sandbox's ``_mutables``) in a call's arguments, or None."""
    if not isinstance(path, list) or not path:
        return None
    key, *steps = path
    obj = args[key] if isinstance(key, int) and 0 <= key < len(args) else kwargs.get(key) if isinstance(key, str) else None
    for step in steps:
        try:
            kind, k = step
            obj = getattr(obj, k) if kind == "a" and isinstance(k, str) else obj[k]
        except Exception:  # noqa: BLE001 - a path that does not lead anywhere changes nothing
            return None
    return obj


class Learner:
    """What an end-to-end test's ``run`` receives: ``learner.NAME(*args, **kwargs)`` calls the learner's
    top-level ``NAME`` in the sandbox; ``learner.NAME`` can be passed to ``plug.use``; ``learner._value(NAME)``
    reads a top-level value (a constant the notebook defines)."""

    def __init__(self, session: "EndToEndSession", aliases: dict[str, str] | None = None):
        self._session, self._aliases = session, dict(aliases or {})

    def __getattr__(self, name: str) -> "LearnerFunction":
        if name.startswith("__"):
            raise AttributeError(name)
        return LearnerFunction(self._session, name, self._aliases.get(name, name))

    def _value(self, name: str) -> Any:
        attr = self._aliases.get(name, name)
        return self._session.request({"op": "value", "target": attr}, f"`{name}`", names=(attr,),
                                     runs_code=False)[0]

    def _functions(self) -> dict[str, bool]:
        """The notebook's top-level functions and classes: name -> whether it is still a stub (its own code
        raises NotImplementedError). Names mapped by ``implementations`` appear under their exercise's name."""
        found = self._session.request({"op": "names"}, "your notebook's functions", runs_code=False)[0]
        back = {attr: name for name, attr in self._aliases.items()}
        return {back.get(k, k): v for k, v in found.items()}


class LearnerFunction:
    """The learner's function ``name`` (defined in the notebook as ``attr``): calling it runs it in the sandbox."""

    def __init__(self, session: "EndToEndSession", name: str, attr: str):
        self._session, self._name, self._attr = session, name, attr

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._session.call(self._attr, None, args, kwargs, f"your `{self._name}`", names=(self._attr,))

    def __repr__(self) -> str:
        return f"<the learner's {self._name}>"


class RemoteObject:
    """A value the learner's code returned that has no wire type (an instance of a class the learner wrote):
    it stays in the sandbox. ``h.method(...)`` calls its method there, ``h.attr`` reads an attribute (decoded,
    or another handle), ``h(...)`` calls it."""

    __slots__ = ("_session", "_id", "_type", "_generation")

    def __init__(self, session: "EndToEndSession", id: int, type_name: str):
        self._session, self._id, self._type, self._generation = session, id, type_name, session.generation

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._session.request({"op": "get", "target": self._id, "attr": name},
                                     f"your {self._type}'s `{name}`", handle=self, missing_attribute=name)[0]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._session.call(self._id, None, args, kwargs, f"your {self._type} object", handle=self)

    def __repr__(self) -> str:
        return f"<the learner's {self._type} object>"


class RemoteMethod:
    """A bound method of a :class:`RemoteObject` (``h.forward``), called in the sandbox."""

    __slots__ = ("_session", "_of", "_name", "_type", "_generation")

    def __init__(self, session: "EndToEndSession", of: int, name: str, type_name: str):
        self._session, self._of, self._name, self._type = session, of, name, type_name
        self._generation = session.generation

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._session.call(self._of, self._name, args, kwargs, f"your `{self._type}.{self._name}`", handle=self)

    def __repr__(self) -> str:
        return f"<the learner's {self._type}.{self._name}>"


@dataclass
class _TestRun:
    """What happened during one end-to-end test."""

    budget: float
    deadline: float
    failure: str | None = None          # the first learner call that failed: the test's feedback
    not_implemented: bool = False
    calls_ok: int = 0
    printed: int = 0
    names: set = field(default_factory=set)


class EndToEndSession:
    """A sandbox that answers the end-to-end tests' calls of the learner's code, one at a time. A sandbox that
    dies or hangs fails the test that was running, and the next test gets a fresh one."""

    def __init__(self, box: Confined, cells: list[Cell], time_limit: float, *, memory: int, hidden: list[str],
                 child: _Child | None = None):
        self.box, self.time_limit, self.memory, self.hidden = box, time_limit, memory, hidden
        self.chunks = _chunks(cells)
        self.child, self.generation = child, 1
        self.sent_arrays: dict[tuple, tuple[int, np.ndarray]] = {}   # read-only arrays the sandbox holds
        self.current: _TestRun | None = None
        self.lock = threading.RLock()

    def handle(self, obj: dict) -> Any:
        if obj.get("t") == "method":
            return RemoteMethod(self, int(obj.get("of", 0)), str(obj.get("name")), str(obj.get("type", "object")))
        return RemoteObject(self, int(obj.get("id", 0)), str(obj.get("type", "object")))

    def check_alive(self, handle: Any) -> None:
        if handle._session is not self or handle._generation != self.generation or self.child is None:
            raise Fail(f"{handle!r} belongs to a run of your code that has ended (the grading process was "
                       "restarted after an earlier failure), so it cannot be used any more")

    def _fail(self, run: _TestRun, message: str) -> None:
        run.failure = run.failure or message
        raise Fail(message)

    def _start(self, run: _TestRun) -> None:
        self.generation += 1
        self.sent_arrays = {}
        try:
            child = _Child(self.box, _payload(self.chunks, [], self.time_limit, self.memory, self.hidden, True))
        except OSError as exc:
            self._fail(run, f"could not start the grading process: {exc}")
        msg = child.receive(STARTUP_GRACE + self.time_limit * max(1, len(self.chunks)))
        if not isinstance(msg, dict) or msg.get("kind") != "loaded":
            child.kill()
            rc = child.returncode
            why = {"timeout": f"did not finish within {self.time_limit:g} s",
                   "eof": f"ended the process (exit code {rc})"}.get(msg, "wrote into the grader's result channel")
            self._fail(run, f"loading your code {why}")
        self.child = child

    def request(self, req: dict, what: str, *, handle: Any = None, names: tuple = (),
                missing_attribute: str | None = None, runs_code: bool = True) -> tuple[Any, list]:
        """Send one request; (the decoded value, the changed array arguments). Fail when the call failed, except
        that reading an attribute the object does not have raises AttributeError here (``hasattr`` works)."""
        with self.lock:
            run = self.current
            if run is None:
                raise Fail(f"{what} can only be called during an end-to-end test")
            if run.failure:
                raise Fail(run.failure)                    # after a failure nothing more of the learner's runs
            run.names.update(names)
            if handle is not None:
                self.check_alive(handle)
            left = run.deadline - time.monotonic()
            if left <= 0:
                self._fail(run, f"this test did not finish within its time budget ({run.budget:g} s): your code is "
                                "too slow (look for Python loops over elements where an array operation would do)")
            limit = min(self.time_limit, left)
            if self.child is None:
                self._start(run)
            buf = io.BytesIO()
            pickler = _ArgPickler(buf, self)
            try:
                pickler.dump({**req, "limit": max(limit, 0.01)})
                data = pickle.dumps({"arrays": pickler.new_arrays, "request": buf.getvalue()}, protocol=5)
            except Fail:
                raise
            except Exception as exc:  # noqa: BLE001 - a check passed something that cannot travel
                for key in [k for k, (i, _) in self.sent_arrays.items() if i in pickler.new_arrays]:
                    del self.sent_arrays[key]
                raise Fail(f"the grader could not send the arguments of {what} to your code "
                           f"({type(exc).__name__}: {exc})") from None
            child = self.child
            child.send(data)
            msg = child.receive(limit + KILL_GRACE)
            if not isinstance(msg, dict) or msg.get("kind") != "reply":
                child.kill()
                rc, self.child = child.returncode, None
                self._fail(run, {
                    "timeout": f"{what} did not finish within the time limit ({limit:g} s), even when interrupted: "
                               "look for an infinite loop",
                    "eof": f"{what} ended the grading process (exit code {rc}): do not call exit(), and keep memory "
                           "use within the grader's limit"}.get(msg, f"{what} wrote into the grader's result channel"))
            run.printed += int(msg.get("printed") or 0)
            library = msg.get("library") or []
            if library:
                self._fail(run, f"{what} uses tinyllm ({', '.join(map(str, library))}): a graded function must be "
                                "your own code, not the library's reference implementation, so it gets 0 points")
            if run.printed > PRINT_CAP:
                self._fail(run, f"{what} printed {run.printed / 1e6:.1f} million characters (the limit is "
                                f"{PRINT_CAP / 1e6:.0f} million): remove the debugging prints")
            value = decode(msg.get("value") if isinstance(msg.get("value"), dict) else
                           {"t": "error", "type": "BadResult", "message": str(msg.get("problem", "no value"))},
                           limit, self)
            if isinstance(value, CallError):
                if value.type == "AttributeError" and missing_attribute is not None:
                    raise AttributeError(f"{handle!r} has no attribute {missing_attribute!r}")
                if value.type == "NotImplementedError":
                    run.not_implemented = True
                    message = f"{what} is not implemented yet: replace `raise NotImplementedError(...)` with your code"
                elif value.type == "Missing":
                    message = f"{what} is not defined: write it in its exercise cell (names are case-sensitive)"
                elif value.type == "TimeLimit" and limit < self.time_limit:
                    message = (f"{what} ran past this test's time budget ({run.budget:g} s): look for an infinite "
                               "loop, or a Python loop over elements where an array operation would do")
                else:
                    message = value.describe(what)
                self._fail(run, message)
            if isinstance(value, _Opaque):
                self._fail(run, f"{what} returned {type(value).__name__}, which cannot be sent back to the grader")
            run.calls_ok += runs_code
            return value, msg.get("inplace") or [], pickler.sent

    def call(self, target: str | int, attr: str | None, args: tuple, kwargs: dict, what: str, *,
             handle: Any = None, names: tuple = ()) -> Any:
        """Call the learner's function (or a handle's method); arrays and random generators in the arguments
        that the call changed in place are changed here too, as they would be by an in-process call."""
        value, inplace, sent = self.request({"op": "call", "target": target, "attr": attr, "args": tuple(args),
                                             "kwargs": dict(kwargs)}, what, handle=handle, names=names)
        changes = []
        for path, enc in inplace:
            orig = _follow(args, kwargs, path)
            if orig is None or sent.get(id(orig)) is not orig:           # not an argument of this call: ignored
                continue
            if isinstance(enc, dict) and enc.get("t") == "rng":         # a random generator the call advanced
                if isinstance(orig, np.random.Generator):
                    changes.append((orig, enc))
                continue
            if not isinstance(orig, np.ndarray):
                continue
            if not orig.flags.writeable:
                self._fail(self.current, f"{what} changed its input {_path_name(path)} in place; that input is "
                                         "read-only: compute into a new array instead of writing into it")
            new = decode(enc)
            if isinstance(new, np.ndarray) and new.shape == orig.shape:
                changes.append((orig, new))
        for orig, new in changes:                                       # only once every change is allowed
            if isinstance(orig, np.random.Generator):
                try:
                    orig.bit_generator.state = _unplain(new.get("state"))
                except Exception:  # noqa: BLE001 - a state NumPy refuses leaves the generator as it was
                    pass
            else:
                orig[...] = new
        return value

    def run_test(self, test: Any, *, aliases: dict[str, str], cells: list[Cell]) -> tuple[TestResult, bool]:
        """Run one end-to-end test; (its result, whether a learner call raised NotImplementedError)."""
        budget = float(test.budget) if test.budget else 2 * self.time_limit
        run = self.current = _TestRun(budget, time.monotonic() + budget)
        outcome = None
        try:
            test.run(Learner(self, aliases))
        except Fail as exc:
            outcome = str(exc)
        except Exception as exc:  # noqa: BLE001 - the library stopped on what the learner's code returned
            outcome = (f"the library stopped with {type(exc).__name__}: {str(exc)[:300]} while running your code; "
                       "check what your function returns (type, shape, dtype) against its docstring")
        finally:
            self.current = None
        if run.failure:
            outcome = run.failure                      # the learner's call that failed, even if `run` caught it
        elif outcome is None and run.calls_ok == 0:
            outcome = "this test never got to run your code"
        used = next((u for n in sorted(run.names) if (u := library_use(cells, n))), None)
        if used:
            outcome = (f"your code uses tinyllm ({used}): a graded function must be your own code, not the "
                       "library's reference implementation, so it gets 0 points")
        points = float(test.points)
        return TestResult(test.name, points if outcome is None else 0.0, points, outcome is None, outcome or ""), \
            run.not_implemented

    def close(self) -> None:
        if self.child is not None:
            self.child.kill()
            self.child = None


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
                   fatal: str | None, time_limit: float, attr: str | None = None,
                   session: EndToEndSession | None = None) -> ExerciseResult:
    """Score one exercise from the sandbox's message (or the reason there is none); its end-to-end tests run
    in ``session``."""
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
    first = next((row[0] for row in rows if row), None)
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
    stub = False
    for test, row in zip(ex.tests, rows):
        if test.run is not None:
            if session is None:
                res.tests.append(TestResult(test.name, 0.0, float(test.points), False, "end-to-end tests were not run"))
                continue
            result, raised_not_implemented = session.run_test(test, aliases={ex.function: attr}, cells=cells)
            res.tests.append(result)
            stub = stub or raised_not_implemented
            continue
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
    if (not_impl or stub) and not any(t.passed for t in res.tests):
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
    end_to_end = any(t.run is not None for ex, _ in pairs for t in ex.tests)
    hidden = library_dirs(Path.cwd()) if hidden is None else hidden
    box = session = None
    try:
        box = Confined(memory, hidden)
        load_errors, results, fatal, child = _run_jobs(box, cells, jobs, time_limit, memory=memory, hidden=hidden,
                                                       serve=end_to_end)
        if end_to_end and not fatal:
            session = EndToEndSession(box, cells, time_limit, memory=memory, hidden=hidden, child=child)
    except Exception as exc:  # noqa: BLE001 - the grader always finishes its report
        load_errors, results, fatal = [], {}, f"the grader could not run your code: {type(exc).__name__}: {exc}"
    try:
        for e in load_errors:
            of = f" of {e['group']}" if e.get("group") else ""
            report.notes.append(f"cell {e.get('cell')}{of} raised {e.get('type')}: {e.get('message', '')}".rstrip(": "))
        for (ex, attr), job in zip(pairs, jobs):
            r = judge_exercise(ex, results.get(job["key"]), cells=cells, load_errors=load_errors, fatal=fatal,
                               time_limit=time_limit, attr=attr, session=session)
            if attr != ex.function:
                r.function = f"{ex.function}@{attr}"
            report.exercises.append(r)
    finally:
        if session is not None:
            session.close()
        if box is not None:
            box.close()
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
    cells = capstone_cells(path.parent) if lesson == CAPSTONE else code_cells(nb)
    report = grade_cells(lesson, cells, time_limit=timeout, only=only, notebook=str(path), memory=memory,
                         hidden=library_dirs(Path.cwd(), here, *here.parents[:2]))   # exercises/zh/ is one deeper
    seen = {m.group(1) for m in (re.match(r"cell (\d+) \(", n) for n in notes) if m}
    report.notes = notes + [n for n in report.notes if n not in notes and not (
        (m := re.match(r"cell (\d+) raised", n)) and m.group(1) in seen)]      # said once, by the kernel run
    return report
