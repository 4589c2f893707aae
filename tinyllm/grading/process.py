"""The sandbox process: starting it confined (:mod:`jail`), talking to it, stopping it, and decoding its replies.

The learner's top-level definitions run in a separate Python process (``sandbox.py``) that cannot read tinyllm;
:func:`_run_jobs` runs the graded calls there and returns the raw replies, :func:`decode` turns a reply's
values back into NumPy and Python values."""
from __future__ import annotations

import base64
import json
import os
import pickle
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import tinyllm
from tinyllm.grading import jail
from tinyllm.grading.core import ArgsAfter, CallError
if TYPE_CHECKING:
    from tinyllm.grading.notebook import Cell


# Read once, when the grader starts: code run later (a notebook in its kernel) cannot change what runs.
SANDBOX_SOURCE = Path(__file__).with_name("sandbox.py").read_text(encoding="utf-8")
JAIL_SOURCE = Path(jail.__file__).read_text(encoding="utf-8")
LIBRARY_DIR = Path(tinyllm.__file__).resolve().parent
DEFAULT_MEMORY = 4 * 2**30         # bytes of address space for the kernel and for the sandbox
MAX_MESSAGE = 256 * 2**20      # the longest line read from the sandbox (as its MAX_MESSAGE)
KILL_GRACE = 2.0             # seconds past the time limit before a function that ignores the alarm is killed
PRINT_CAP = 1_000_000          # characters a graded function may print before it scores zero
STARTUP_GRACE = 30.0           # seconds for the sandbox to start (NumPy import on a busy machine)


# ---------------------------------------------------------------------------------------------
# the sandbox process
# ---------------------------------------------------------------------------------------------

def _chunks(cells: list[Cell]) -> list[tuple]:
    """What the sandbox runs: (cell number, source[, notebook]) of the cells that parse."""
    return [(c.number, c.source) if c.notebook is None else (c.number, c.source, c.notebook)
            for c in cells if c.syntax_error is None]


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


def _run_jobs(box: Confined, cells: list[Cell], jobs: list[dict], time_limit: float, *, memory: int,
              hidden: list[str], serve: bool = False) -> tuple[list[dict], dict[str, dict], str | None, _Child | None]:
    """Run ``jobs`` (``{"key", "attr", "tests"}``) against the definitions in ``cells`` in child processes of
    ``box``: (errors while loading the cells, results by job key, a message when loading failed as a whole, the
    child). A job whose child hangs or dies is recorded as such and the rest go to a fresh child. With
    ``serve``, the last child, alive after the jobs, is returned to answer end-to-end requests (None when it
    did not survive)."""
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
# decoding the sandbox's replies
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
