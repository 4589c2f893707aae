"""The child process that runs a learner's functions for the grader.

Run as ``python -I sandbox.py`` (isolated: no PYTHONPATH, no user site, no
script directory on sys.path) in a fresh temporary working directory. This file
imports only the standard library and NumPy, never ``tinyllm``: the graded
tests, their points and the reference answers stay in the grader's process, and
this process only ever sees the *inputs* of each call.

Protocol. stdin: one pickle from the grader (trusted direction)::

    {"chunks": [(cell, code), ...],          # top-level defs/imports of the notebook, in order
     "jobs": [{"key": str, "attr": str, "tests": [[(args, kwargs[, {"send_args": True}]), ...], ...]}, ...],
     "time_limit": float, "print_cap": int}

Output: JSON lines on a private copy of the original stdout (the learner's
prints go to a capped sink, file descriptors 1 and 2 to /dev/null)::

    {"kind": "loaded", "errors": [{"cell": int, "error": str}, ...]}
    {"kind": "start", "key": str}
    {"kind": "done", "key": str, "results": [[encoded, ...], ...], "printed": int}

A call with ``{"send_args": True}`` that returns comes back as the tuple ``(ARGS_MARK, value, [args after
the call])``, so that the grader can see what the function did to its arguments.

Values travel back as JSON (arrays as dtype/shape/base64), never as pickles, so
a learner's return value cannot run code in the grader.
"""
from __future__ import annotations

import ast
import base64
import copy
import json
import os
import pickle
import signal
import sys
import time
import traceback

MAX_ARRAY_BYTES = 64 * 2**20
ARGS_MARK = "__tinyllm_args_after_call__"   # tags a result sent with the arguments after the call


class _TimeLimit(BaseException):
    """Raised by the alarm when a call runs past its time limit."""


def _on_alarm(signum, frame):
    raise _TimeLimit()


class _CappedSink:
    """Stands in for sys.stdout/sys.stderr: counts what is printed, keeps nothing."""

    def __init__(self):
        self.count = 0

    def write(self, s):
        try:
            self.count += len(s)
        except TypeError:
            pass
        return len(s) if isinstance(s, str) else 0

    def flush(self):
        pass

    def isatty(self):
        return False


def _encode(value, depth=0):
    import numpy as np

    if depth > 6:
        return {"t": "other", "type": "deeply nested value"}
    if value is None or isinstance(value, (bool, str)):
        return {"t": "py", "v": value}
    if isinstance(value, int):
        return {"t": "py", "v": value} if abs(value) < 2**62 else {"t": "float", "v": repr(float(value))}
    if isinstance(value, float):
        return {"t": "float", "v": repr(float(value))}   # np.float64 is a float whose repr is "np.float64(...)"
    if isinstance(value, np.generic) and not isinstance(value, np.object_):
        value = np.asarray(value)
        return {"t": "scalar", **_encode_array(value)}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject or value.dtype.names is not None:
            return {"t": "other", "type": f"ndarray of dtype {value.dtype}"}
        if value.nbytes > MAX_ARRAY_BYTES:
            return {"t": "other", "type": f"array of {value.nbytes / 2**20:.0f} MB (too large)"}
        return {"t": "array", **_encode_array(value)}
    if isinstance(value, (list, tuple)):
        if len(value) > 100_000:
            return {"t": "other", "type": f"{type(value).__name__} of {len(value)} items (too long)"}
        return {"t": type(value).__name__, "v": [_encode(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        items = []
        for k, v in list(value.items())[:100_000]:
            items.append([_encode(k, depth + 1), _encode(v, depth + 1)])
        return {"t": "dict", "v": items}
    return {"t": "other", "type": type(value).__name__}


def _encode_array(a):
    import numpy as np

    a = np.array(a, order="C", copy=True)         # keeps 0-d arrays 0-d (ascontiguousarray would not)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def _error(exc):
    tb = traceback.extract_tb(exc.__traceback__)
    where = ""
    for frame in reversed(tb):
        if frame.filename.startswith("<cell"):
            where = f"{frame.filename[1:-1]}, line {frame.lineno}"
            break
    if isinstance(exc, _TimeLimit):
        return {"t": "error", "type": "TimeLimit", "message": "", "where": where}
    return {"t": "error", "type": type(exc).__name__, "message": str(exc)[:500], "where": where}


def main():
    out = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_RDWR)
    payload = pickle.load(sys.stdin.buffer)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sink = _CappedSink()
    sys.stdout = sys.stderr = sink
    signal.signal(signal.SIGALRM, _on_alarm)
    limit = float(payload["time_limit"])

    def send(msg):
        out.write(json.dumps(msg) + "\n")
        out.flush()

    def timed(seconds, fn, *args, **kwargs):
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    namespace = {"__name__": "__student__", "__builtins__": __builtins__}
    errors = []
    for cell, source in payload["chunks"]:
        try:
            tree = keep_definitions(ast.parse(clean_source(source)))
            timed(limit, exec, compile(tree, f"<cell {cell}>", "exec"), namespace)
        except BaseException as exc:  # noqa: BLE001 - anything the learner's code raises is a grading result
            errors.append({"cell": cell, **_error(exc)})
    send({"kind": "loaded", "errors": errors})

    for job in payload["jobs"]:
        send({"kind": "start", "key": job["key"]})
        before = sink.count
        fn = namespace.get(job["attr"])
        results = []
        deadline = time.monotonic() + limit            # one time budget for all calls of a function
        for calls in job["tests"]:
            row = []
            for args, kwargs, *opts in calls:
                if not callable(fn):
                    row.append({"t": "missing"})
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    row.append({"t": "error", "type": "TimeLimit", "message": "", "where": ""})
                    continue
                try:
                    args, kwargs = copy.deepcopy((args, kwargs))  # calls never share mutable inputs
                    value = timed(left, fn, *args, **kwargs)
                    row.append(_encode(value))
                except BaseException as exc:  # noqa: BLE001
                    row.append(_error(exc))
                    continue
                if opts and opts[0].get("send_args"):          # a returned value travels with the arguments
                    try:                                        # as they are after the call (side effects)
                        after = _encode(list(args))
                    except BaseException:  # noqa: BLE001
                        after = {"t": "other", "type": "arguments that cannot be sent back"}
                    row[-1] = {"t": "tuple", "v": [{"t": "py", "v": ARGS_MARK}, row[-1], after]}
            results.append(row)
        try:
            send({"kind": "done", "key": job["key"], "results": results, "printed": sink.count - before})
        except (TypeError, ValueError) as exc:
            send({"kind": "done", "key": job["key"], "results": None, "printed": sink.count - before,
                  "problem": f"could not send the results back: {exc}"})
    out.close()
    os._exit(0)


def clean_source(source: str) -> str:
    """Blank out IPython magics and shell escapes (``%matplotlib``, ``!pip``) so the cell parses as Python,
    keeping line numbers."""
    lines = source.splitlines()
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)


def _literal(node) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def keep_definitions(tree):
    """Keep only what defines things: imports (not of tinyllm), functions, classes and assignments of
    literal constants. Top-level calls, prints, asserts and training loops are dropped."""
    kept = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            kept.append(node)
        elif isinstance(node, ast.Import):
            if not any(a.name.split(".")[0] == "tinyllm" for a in node.names):
                kept.append(node)
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] != "tinyllm" and node.level == 0:
                kept.append(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and _literal(node.value):
            kept.append(node)
    tree.body = kept
    return tree


if __name__ == "__main__":
    main()
