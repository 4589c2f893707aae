"""End-to-end tests: the library runs in the grader's process, only the learner's functions run in the sandbox.

A check's ``run(learner)`` receives a :class:`Learner`; ``learner.NAME(...)`` is a :class:`LearnerFunction`
that sends the call to the :class:`EndToEndSession`'s sandbox (arguments by pickle, :class:`_ArgPickler`) and
decodes the reply; objects of the learner's classes stay there as :class:`RemoteObject` handles."""
from __future__ import annotations

import io
import pickle
import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinyllm.grading.core import CallError, Fail
from tinyllm.grading.notebook import Cell, library_use
from tinyllm.grading.process import (KILL_GRACE, PRINT_CAP, STARTUP_GRACE, Confined, _Child, _chunks, _Opaque,
                                     _payload, decode)
from tinyllm.grading.report import TestResult


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
