"""The child process that runs a learner's functions for the grader.

Run as ``python -I sandbox.py`` (isolated: no PYTHONPATH, no user site, no
script directory on sys.path) in a fresh temporary working directory, confined
by ``jail.py``. This file imports only the standard library and NumPy, never
``tinyllm``: the graded tests, their points and the reference answers stay in
the grader's process, and this process only ever sees the *inputs* of each call.

The learner's code may not use tinyllm either: where Landlock is available the
OS refuses to read tinyllm's folders, and an audit hook refuses imports of
``tinyllm`` and reads of its files, and records the attempt, which the grader
turns into zero points for that function.

Protocol. stdin: framed pickles from the grader (trusted direction), each an 8-byte big-endian length and
the pickle. The first::

    {"chunks": [(cell, code[, notebook]), ...],   # top-level defs/imports, in order (one namespace per notebook)
     "jobs": [{"key": str, "attr": str, "tests": [[(args, kwargs[, {"send_args": True}]), ...], ...]}, ...],
     "time_limit": float, "print_cap": int, "memory": int, "hidden": [folder, ...], "serve": bool}

Output: JSON lines on a private copy of the original stdout (the learner's
prints go to a capped sink, file descriptors 1 and 2 to /dev/null)::

    {"kind": "loaded", "errors": [{"cell": int, "error": str}, ...]}
    {"kind": "start", "key": str}
    {"kind": "done", "key": str, "results": [[encoded, ...], ...], "printed": int, "library": [str, ...]}

With ``"serve": True`` the process stays alive after its jobs and answers further requests, one reply line
each, for the grader's end-to-end tests (the library runs in the grader; only the learner's functions here)::

    {"op": "call", "target": name | handle id, "attr": str | None, "args": tuple, "kwargs": dict, "limit": float}
    {"op": "get", "target": handle id, "attr": str, "limit": float}       # an attribute of a learner's object
    {"op": "value", "target": name, "limit": float}                       # a top-level value of the notebook
    {"op": "names", "limit": float}                                       # top-level functions: name -> is a stub
    -> {"kind": "reply", "value": encoded, "inplace": [[path, encoded], ...], "printed": int,
        "library": [str, ...]}

Each request is pickled inside ``{"arrays": {key: array}, "request": bytes}``: a read-only array of 64 KiB or
more (read-only with every array it views, such as a model's weights) travels once, in ``arrays``, and is
referred to by the persistent id ``("array", key)`` from then on; it stays read-only here.

In replies, a value that has no wire type (an instance of a class the learner wrote, a closure) stays here in a
table and travels as ``{"t": "handle", "id": int, "type": str}``; the grader sends it back as the persistent id
``("handle", id)`` (a bound method as ``("method", id, name)``), and a learner's top-level function as
``("name", name)``. ``inplace`` holds the arrays
and random generators that the call changed in its arguments (an argument, or one inside a list, dict or library
object it got; ``path`` as :func:`_mutables` writes it; a generator as ``{"t": "rng", "state": ...}``), so the
grader can write the change back, as an in-process call would.

A call with ``{"send_args": True}`` that returns comes back as ``{"t": "with_args", "value": ..., "args":
[args after the call]}``, a wire type no returned value can take, so that the grader can see what the
function did to its arguments.

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
MAX_MESSAGE = 256 * 2**20       # characters of one message to the grader (the grader reads no longer line)
LIBRARY_USE: list = []          # what the learner's code tried to use of tinyllm (for the grader's message)
_MEMORY = [0]                   # the address-space limit the grader set, for the MemoryError message
DENIED_EVENTS = {"ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "gc.get_objects", "gc.get_referrers",
                 "gc.get_referents", "sys.settrace", "sys.setprofile"}


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


def _encode(value, depth=0, keep=None):
    """The wire form of ``value``. ``keep`` (serve mode) stores a value that has no wire type and returns its
    handle id; without it such a value travels as ``{"t": "other"}``."""
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
        return {"t": type(value).__name__, "v": [_encode(v, depth + 1, keep) for v in value]}
    if isinstance(value, dict):
        items = []
        for k, v in list(value.items())[:100_000]:
            items.append([_encode(k, depth + 1), _encode(v, depth + 1, keep)])
        return {"t": "dict", "v": items}
    if keep is not None:
        return {"t": "handle", "id": keep(value), "type": type(value).__name__[:100]}
    return {"t": "other", "type": type(value).__name__}


def _encode_array(a):
    import numpy as np

    a = np.array(a, order="C", copy=True)         # keeps 0-d arrays 0-d (ascontiguousarray would not)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def install_guard(hidden):
    """Refuse imports of tinyllm, reads of its files, and the ways around an audit hook (ctypes, the
    garbage collector's object lists, tracing), from now on, in this process."""
    prefixes = tuple(os.path.realpath(h).rstrip(os.sep) + os.sep for h in hidden)
    used, denied = LIBRARY_USE, frozenset(DENIED_EVENTS)

    def guard(event, args):
        if event == "import":
            name = args[0] if isinstance(args[0], str) else ""
            if name == "tinyllm" or name.startswith("tinyllm."):
                used.append(f"import {name}")
                raise ImportError("graded code may not use tinyllm: write the function yourself")
        elif event == "open" and prefixes and isinstance(args[0], (str, bytes)):
            path = os.fsdecode(args[0])
            if os.path.realpath(path).startswith(prefixes):
                used.append(f"reads {os.path.basename(path)} from tinyllm's folder")
                raise PermissionError("graded code may not read tinyllm's files")
        elif event in denied or (event == "object.__setattr__" and args[0] is guard):
            raise RuntimeError(f"{event} is not allowed in graded code")

    sys.addaudithook(guard)


def _error(exc):
    tb = traceback.extract_tb(exc.__traceback__)
    where = ""
    for frame in reversed(tb):
        if frame.filename.startswith("<cell"):
            where = f"{frame.filename[1:-1]}, line {frame.lineno}"
            break
    if isinstance(exc, _TimeLimit):
        return {"t": "error", "type": "TimeLimit", "message": "", "where": where}
    if isinstance(exc, MemoryError) and _MEMORY[0]:
        return {"t": "error", "type": "MemoryError", "where": where,
                "message": f"used more memory than the grader allows ({_MEMORY[0] / 2**30:.3g} GiB)"}
    return {"t": "error", "type": type(exc).__name__, "message": str(exc)[:500], "where": where}


def main():
    import numpy  # noqa: F401 - imported before the guard, which forbids nothing NumPy needs

    out = os.fdopen(os.dup(1), "w", buffering=1)
    inp = os.fdopen(os.dup(0), "rb")
    devnull = os.open(os.devnull, os.O_RDWR)
    payload = pickle.loads(read_frame(inp))
    _MEMORY[0] = int(payload.get("memory") or 0)
    install_guard(payload.get("hidden") or [])
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sink = _CappedSink()
    sys.stdout = sys.stderr = sink
    signal.signal(signal.SIGALRM, _on_alarm)
    limit = float(payload["time_limit"])

    def send(msg):
        text = json.dumps(msg)
        if len(text) > MAX_MESSAGE:
            text = json.dumps({"kind": msg["kind"], "key": msg.get("key"), "results": None, "printed": msg.get("printed"),
                               "problem": f"the return values are too large to send back (over {MAX_MESSAGE // 2**20} MB)"})
        out.write(text + "\n")
        out.flush()

    def timed(seconds, fn, *args, **kwargs):
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    spaces: dict = {}             # one namespace per notebook (a chunk's optional third item names it)
    errors = []
    for cell, source, *group in payload["chunks"]:
        group = group[0] if group else None
        space, known = spaces.setdefault(group, ({"__name__": "__student__", "__builtins__": __builtins__}, Known()))
        where = f"<cell {cell}>" if group is None else f"<cell {cell} of {group}>"
        try:
            timed(limit, run_definitions, ast.parse(clean_source(source)), where, space, known)
        except BaseException as exc:  # noqa: BLE001 - anything the learner's code raises is a grading result
            errors.append({"cell": cell, **({} if group is None else {"group": group}), **_error(exc)})
    namespace = {}
    for space, _ in spaces.values():              # a later notebook's definition of a name wins
        namespace.update(space)
    LIBRARY_USE.clear()
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
                    row[-1] = {"t": "with_args", "value": row[-1], "args": after}
            results.append(row)
        library, LIBRARY_USE[:] = sorted(set(LIBRARY_USE)), []
        try:
            send({"kind": "done", "key": job["key"], "results": results, "printed": sink.count - before,
                  "library": library})
        except (TypeError, ValueError) as exc:
            send({"kind": "done", "key": job["key"], "results": None, "printed": sink.count - before,
                  "problem": f"could not send the results back: {exc}"})
    if payload.get("serve"):
        serve(namespace, inp, send, timed, sink)
    out.close()
    os._exit(0)


def is_stub(fn) -> bool:
    """Whether ``fn`` is still an exercise's stub: its own code raises NotImplementedError."""
    code = getattr(fn, "__code__", None)
    return code is not None and "NotImplementedError" in code.co_names


def _mutables(value, path, arrays, rngs, depth=0):
    """Collect what a call can change in an argument: (path, array) of the writable arrays, and (path, generator)
    of the NumPy random generators, in the argument itself or inside the lists, tuples, dicts and namespaces (the
    library's objects) it holds, up to 3 levels down. A path is the argument's index or keyword, then
    ["i", index or key] / ["a", attribute] steps."""
    import types

    import numpy as np

    if isinstance(value, np.ndarray):
        if value.flags.writeable:
            arrays.append((path, value))
        return
    if isinstance(value, np.random.Generator):
        rngs.append((path, value))
        return
    if depth >= 3:
        return
    if isinstance(value, (list, tuple)):
        steps = [(["i", i], v) for i, v in enumerate(value[:1000])]
    elif isinstance(value, dict):
        steps = [(["i", k], v) for k, v in list(value.items())[:1000] if isinstance(k, (str, int))]
    elif type(value) is types.SimpleNamespace:
        steps = [(["a", k], v) for k, v in vars(value).items()]
    else:
        return
    for step, v in steps:
        _mutables(v, path + [step], arrays, rngs, depth + 1)


def _plain(x):
    """A random generator's state as JSON (its arrays as {"ndarray": list, "dtype": str})."""
    import numpy as np

    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return {"ndarray": x.tolist(), "dtype": x.dtype.str}
    return x.item() if isinstance(x, np.generic) else x


def read_frame(inp):
    """One framed message from the grader (8-byte big-endian length, then the bytes); None at the end."""
    head = inp.read(8)
    if len(head) < 8:
        return None
    n = int.from_bytes(head, "big")
    body = inp.read(n)
    return body if len(body) == n else None


def serve(namespace, inp, send, timed, sink):
    """Answer the grader's end-to-end requests (see the module's docstring) until it closes the channel."""
    import io

    import numpy as np

    table = {}
    frozen = {}                   # read-only arrays the grader sent once (a model's weights), by key

    def keep(value):
        table[len(table) + 1] = value
        return len(table)

    class Request(pickle.Unpickler):
        def persistent_load(self, pid):
            if isinstance(pid, tuple) and len(pid) == 2:
                if pid[0] == "array" and pid[1] in frozen:
                    return frozen[pid[1]]
                if pid[0] == "handle" and pid[1] in table:
                    return table[pid[1]]
                if pid[0] == "name" and pid[1] in namespace:
                    return namespace[pid[1]]
            if isinstance(pid, tuple) and len(pid) == 3 and pid[0] == "method" and pid[1] in table:
                return getattr(table[pid[1]], pid[2])
            raise pickle.UnpicklingError(f"no object {pid!r} in this process")

    while True:
        frame = read_frame(inp)
        if frame is None:
            return
        before, mark = sink.count, len(LIBRARY_USE)
        inplace = []
        try:
            outer = pickle.loads(frame)
            for key, a in outer["arrays"].items():  # read-only in the grader: read-only here too, and a view of
                frozen[key] = np.frombuffer(a.tobytes(), a.dtype).reshape(a.shape)   # bytes: setflags cannot undo it
            req = Request(io.BytesIO(outer["request"])).load()
        except BaseException as exc:  # noqa: BLE001
            value = {"t": "error", "type": "ArgumentError", "message": str(exc)[:500], "where": ""}
            del LIBRARY_USE[mark:]                  # what unpickling tried is not the learner's doing
            send({"kind": "reply", "value": value, "inplace": [], "printed": 0, "library": []})
            continue
        del LIBRARY_USE[mark:]
        op, target, attr = req.get("op"), req.get("target"), req.get("attr")
        try:
            obj = namespace.get(target) if isinstance(target, str) else table.get(target)
            if op == "names":                      # the learner's top-level functions: name -> still a stub
                value = _encode({k: is_stub(v) for k, v in namespace.items() if callable(v) and not k.startswith("__")})
            elif op == "value":
                value = timed(req["limit"], _encode, obj, 0, keep) if target in namespace else {"t": "missing"}
            elif op == "get":
                got = timed(req["limit"], getattr, obj, attr)
                if callable(got) and getattr(got, "__self__", None) is obj:       # a bound method: call it there
                    value = {"t": "method", "of": target, "name": attr, "type": type(obj).__name__[:100]}
                else:
                    value = timed(req["limit"], _encode, got, 0, keep)
            else:
                fn = timed(req["limit"], getattr, obj, attr) if attr and obj is not None else obj
                if not callable(fn):
                    value = ({"t": "missing"} if isinstance(target, str) else
                             {"t": "error", "type": "TypeError", "where": "",
                              "message": f"'{type(fn).__name__}' object is not callable"})
                else:
                    args, kwargs = req.get("args", ()), req.get("kwargs", {})
                    watched, rngs = [], []
                    for key, a in [*enumerate(args), *kwargs.items()]:
                        _mutables(a, [key], watched, rngs)
                    copies = [a.copy() for _, a in watched]
                    states = [_plain(g.bit_generator.state) for _, g in rngs]

                    def run():
                        return _encode(fn(*args, **kwargs), 0, keep)

                    value = timed(req["limit"], run)
                    for (path, a), old in zip(watched, copies):
                        if a.shape != old.shape or not np.array_equal(a, old, equal_nan=a.dtype.kind in "fc"):
                            inplace.append([path, _encode(a)])
                    for (path, g), old in zip(rngs, states):
                        state = _plain(g.bit_generator.state)
                        if state != old:
                            inplace.append([path, {"t": "rng", "state": state}])
        except BaseException as exc:  # noqa: BLE001 - anything the learner's code raises is a result
            value = _error(exc)
        library, LIBRARY_USE[:] = sorted(set(LIBRARY_USE)), []
        try:
            send({"kind": "reply", "value": value, "inplace": inplace, "printed": sink.count - before,
                  "library": library})
        except (TypeError, ValueError) as exc:
            send({"kind": "reply", "value": {"t": "error", "type": "BadResult", "message":
                  f"the result could not be sent back: {exc}", "where": ""}, "inplace": [],
                  "printed": sink.count - before, "library": library})


def clean_source(source: str) -> str:
    """Blank out IPython magics and shell escapes (``%matplotlib``, ``!pip``) so the cell parses as Python,
    keeping line numbers."""
    lines = source.splitlines()
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)


# Top-level statements the grader runs: definitions, imports (not of tinyllm), and assignments whose value
# only calls these modules and builtins (constants such as ``EPS = np.float32(1e-5)``). Calls of the learner's
# own functions, prints, asserts and training loops at top level are not run.
SAFE_MODULES = {"numpy", "math", "cmath", "struct", "collections", "itertools", "functools", "operator", "string",
                "re", "typing", "dataclasses", "enum", "fractions", "decimal", "json", "statistics", "ml_dtypes"}
SAFE_BUILTINS = {"abs", "all", "any", "bool", "bytearray", "bytes", "chr", "complex", "dict", "divmod", "enumerate",
                 "filter", "float", "format", "frozenset", "int", "isinstance", "len", "list", "map", "max", "min",
                 "ord", "pow", "range", "repr", "reversed", "round", "set", "slice", "sorted", "str", "sum", "tuple",
                 "zip"}


class Known:
    """What the kept top-level statements so far have bound: module aliases (``np`` -> ``numpy``), names of
    values made by safe assignments, and names whose binding statement was not run."""

    def __init__(self):
        self.modules: dict[str, str] = {}
        self.values: set[str] = set()
        self.dropped: set[str] = set()


def _bound(node) -> set[str]:
    """Names a statement binds at top level."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return {n.id for t in targets if t is not None for n in ast.walk(t) if isinstance(n, ast.Name)}


def _call_root(func):
    while isinstance(func, (ast.Attribute, ast.Subscript)):
        func = func.value
    return func


def _safe_value(node, known: Known) -> bool:
    """Whether evaluating ``node`` only calls safe modules, builtins, and methods of safe values."""
    for sub in ast.walk(node):
        if isinstance(sub, (ast.Await, ast.Yield, ast.YieldFrom)):
            return False
        if isinstance(sub, ast.Call):
            root = _call_root(sub.func)
            if isinstance(root, ast.Name):
                name = root.id
                if root is sub.func and name in SAFE_BUILTINS and name not in known.values:
                    continue
                if known.modules.get(name) in SAFE_MODULES or (root is not sub.func and name in known.values):
                    continue
                return False
            if not isinstance(root, (ast.Call, ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.BinOp)):
                return False
    return True


def _keep(node, known: Known):
    """The statement as the grader runs it, or None to skip it."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node
    if isinstance(node, ast.Import):
        if any(a.name.split(".")[0] == "tinyllm" for a in node.names):
            return None
        for a in node.names:
            known.modules[a.asname or a.name.split(".")[0]] = a.name.split(".")[0]
        return node
    if isinstance(node, ast.ImportFrom):
        root = (node.module or "").split(".")[0]
        if root == "tinyllm" or node.level != 0:
            return None
        for a in node.names:
            known.modules[a.asname or a.name] = root
        return node
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        if node.value is not None and _safe_value(node.value, known):
            known.values |= {n for n in _bound(node)}
            return node
        return None
    if isinstance(node, (ast.If, ast.Try)):
        if isinstance(node, ast.If) and not _safe_value(node.test, known):
            return None
        node = copy.copy(node)
        for field in ("body", "orelse", "finalbody"):
            if hasattr(node, field):
                setattr(node, field, [k for k in (_keep(n, known) for n in getattr(node, field)) if k is not None])
        if isinstance(node, ast.Try):
            node.handlers = [copy.copy(h) for h in node.handlers]
            for h in node.handlers:
                h.body = [k for k in (_keep(n, known) for n in h.body) if k is not None] or [ast.Pass()]
        node.body = node.body or [ast.Pass()]
        return node
    return None


def run_definitions(tree, filename: str, namespace: dict, known: Known) -> None:
    """Run the kept statements of one cell in order, as the notebook would. A kept statement that fails
    with a NameError for a name that the grader did not bind (its statement was skipped) is skipped too;
    any other error stops the cell, as it would in the notebook."""
    for node in tree.body:
        kept = _keep(node, known)
        if kept is None:
            known.dropped |= _bound(node)
            continue
        module = ast.Module(body=[kept], type_ignores=[])
        ast.fix_missing_locations(module)
        try:
            exec(compile(module, filename, "exec"), namespace)
        except NameError as exc:
            if getattr(exc, "name", None) in known.dropped:
                known.dropped |= _bound(node)
                continue
            raise


if __name__ == "__main__":
    main()
