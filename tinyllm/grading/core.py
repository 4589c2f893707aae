"""The vocabulary of graded checks: exercises, tests, failures with feedback.

A checks module (``tinyllm/grading/checks/NN_topic.py``) builds a list
``EXERCISES`` of :class:`Exercise`. Each exercise names the function the learner
writes and holds :class:`Test` s. A test is a list of calls (the inputs, made
here in the grader's process from fixed seeds) and a ``judge`` that receives the
learner's return values, one per call, and raises :class:`Fail` with feedback
when something is wrong. The learner's code never sees the references, the
judges or the points: only the inputs of each call travel to the sandbox.

Return values arrive as plain Python/NumPy values; a call that raised arrives as
a :class:`CallError`, which the helpers below turn into a readable message.

An *end-to-end* test (:meth:`Exercise.end_to_end`) instead runs the library here, in the grader's process,
with the learner's functions plugged in: ``run(learner)`` gets a proxy whose ``learner.NAME(*args)`` calls the
learner's top-level ``NAME`` in the sandbox (arguments travel by pickle, results come back decoded) and can be
passed to ``plug.use``; a learner call that raises, or runs out of time, raises :class:`Fail` naming the
function. A returned instance of a class the learner wrote comes back as a remote handle (``h.method(...)``
calls it there, ``h.attr`` reads an attribute). ``run`` raises :class:`Fail` to fail the test.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


class Fail(Exception):
    """A test did not pass; the message is the feedback the learner reads."""


@dataclass(frozen=True)
class CallError:
    """The learner's function raised (or ran out of time, or is not defined)."""

    type: str
    message: str = ""
    where: str = ""
    limit: float | None = None

    def describe(self, what: str) -> str:
        if self.type == "NotImplementedError":
            return "not implemented yet: replace `raise NotImplementedError(...)` with your code"
        if self.type == "Missing":
            return "function not defined"
        if self.type == "TimeLimit":
            lim = f" ({self.limit:g} s)" if self.limit else ""
            return (f"{what} did not finish within the time limit{lim}: look for an infinite loop, "
                    f"or a Python loop over elements where an array operation would do")
        where = f" ({self.where})" if self.where else ""
        msg = f": {self.message}" if self.message else ""
        return f"{what} raised {self.type}{msg}{where}"


def call(*args: Any, **kwargs: Any) -> tuple[tuple, dict]:
    """One call of the learner's function: ``call(x, axis=-1)``."""
    return args, kwargs


@dataclass
class Test:
    name: str
    points: float
    calls: list[tuple[tuple, dict]]
    judge: Callable[[list[Any]], None] | None
    run: Callable[[Any], None] | None = None     # an end-to-end test: run(learner) in the grader's process
    budget: float | None = None                  # seconds for the whole end-to-end test (None: twice the time limit)


@dataclass
class Exercise:
    """A function the learner writes, with the tests that grade it."""

    function: str
    title: str
    tests: list[Test] = field(default_factory=list)

    def test(self, name: str, points: float, calls: list[tuple[tuple, dict]], judge: Callable[[list[Any]], None]) -> None:
        self.tests.append(Test(name, points, calls, judge))

    def end_to_end(self, name: str, points: float, run: Callable[[Any], None], *, budget: float | None = None) -> None:
        """A test that runs the library here with the learner's functions in it: ``run(learner)`` raises
        :class:`Fail` to fail. ``learner.NAME(...)`` calls the learner's ``NAME`` in the sandbox, each call
        within the grader's time limit, the whole test within ``budget`` seconds (default: twice the limit).
        The test scores zero when a learner call raised (also NotImplementedError), even if ``run`` caught it,
        and when it never called the learner's code."""
        self.tests.append(Test(name, points, [], None, run=run, budget=budget))

    @property
    def max_points(self) -> float:
        return float(sum(t.points for t in self.tests))


def freeze(obj: Any, min_bytes: int = 2**16) -> Any:
    """Make the NumPy arrays of ``min_bytes`` or more that ``obj`` holds (through attributes, lists, tuples and
    dicts) read-only, and return ``obj``. An end-to-end test sends a read-only array to the sandbox once and
    then by reference, so freeze a model whose weights travel to the learner's functions (a Llama's forward
    pass does not write its weights; a write would now raise)."""
    seen: set[int] = set()
    todo = [obj]
    while todo:
        x = todo.pop()
        if id(x) in seen or isinstance(x, (type, str, bytes, int, float)) or callable(x) and not hasattr(x, "__dict__"):
            continue
        seen.add(id(x))
        if isinstance(x, np.ndarray):
            if x.nbytes >= min_bytes:
                x.setflags(write=False)
        elif isinstance(x, (list, tuple)):
            todo += list(x)
        elif isinstance(x, dict):
            todo += list(x.values())
        elif hasattr(x, "__dict__") and not isinstance(x, type(np)):
            todo += list(vars(x).values())
    return obj


# ---------------------------------------------------------------------------------------------
# helpers for judges
# ---------------------------------------------------------------------------------------------

def value(r: Any, what: str) -> Any:
    """The return value, or Fail with a readable message when the call raised."""
    if isinstance(r, CallError):
        raise Fail(r.describe(what))
    return r


def array(r: Any, what: str, shape: tuple | None = None, dtype: Any = None, *, floating: bool = False) -> np.ndarray:
    """Unwrap a returned array and check its type, shape and dtype."""
    r = value(r, what)
    if isinstance(r, (list, tuple)) and not isinstance(r, np.ndarray):
        raise Fail(f"{what} returned a {type(r).__name__}, expected a NumPy array"
                   + (f" of shape {shape}" if shape is not None else ""))
    if not isinstance(r, np.ndarray):
        if isinstance(r, (float, int, np.generic)) and shape == ():
            r = np.asarray(r)
        else:
            raise Fail(f"{what} returned {_kind(r)}, expected a NumPy array" + (f" of shape {shape}" if shape is not None else ""))
    if shape is not None and tuple(r.shape) != tuple(shape):
        raise Fail(f"{what} has shape {tuple(r.shape)}, expected {tuple(shape)}")
    if dtype is not None and r.dtype != np.dtype(dtype):
        raise Fail(f"{what} has dtype {r.dtype}, expected {np.dtype(dtype)}"
                   + (": float64 crept in, keep float32 (use np.float32 constants or .astype(np.float32))"
                      if r.dtype == np.float64 and np.dtype(dtype) == np.float32 else ""))
    if floating and not np.issubdtype(r.dtype, np.floating):
        raise Fail(f"{what} has dtype {r.dtype}, expected a floating-point array")
    return r


def number(r: Any, what: str) -> float:
    """Unwrap a returned scalar (Python or NumPy number, or a 0-d array)."""
    r = value(r, what)
    if isinstance(r, np.ndarray) and r.size == 1:
        return float(r.reshape(()))
    if isinstance(r, (bool, np.bool_)) or not isinstance(r, (int, float, np.integer, np.floating)):
        raise Fail(f"{what} returned {_kind(r)}, expected a number")
    return float(r)


def close(got: np.ndarray, want: np.ndarray, what: str, *, rtol: float = 1e-5, atol: float = 1e-6,
          hint: str = "") -> None:
    """Fail unless ``got`` matches ``want`` elementwise, naming where and by how much."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise Fail(f"{what} has shape {got.shape}, expected {want.shape}")
    if not np.isfinite(got).all() and np.isfinite(want).all():
        raise Fail(f"{what} contains NaN or inf" + (f": {hint}" if hint else ""))
    if not np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
        err = np.abs(got - want)
        err = np.where(np.isnan(err), np.inf, err)
        idx = np.unravel_index(int(np.argmax(err)), err.shape) if err.ndim else ()
        at = f" at index {tuple(int(i) for i in idx)}" if err.ndim else ""
        raise Fail(f"{what} is off by up to {float(err[idx]):.3g}{at} (got {float(got[idx]):.6g}, "
                   f"expected {float(want[idx]):.6g})" + (f": {hint}" if hint else ""))


def _kind(r: Any) -> str:
    if r is None:
        return "None (did you forget `return`?)"
    return f"a {type(r).__name__}"


# ---------------------------------------------------------------------------------------------
# side effects and diagnoses
# ---------------------------------------------------------------------------------------------

def call_seeing_args(*args: Any, **kwargs: Any) -> tuple:
    """A call whose positional arguments come back as they are after it (see :func:`with_args`), to judge
    side effects: an input that must stay unchanged, or a buffer that must be written in place."""
    return args, kwargs, {"send_args": True}


@dataclass(frozen=True)
class ArgsAfter:
    """A :func:`call_seeing_args` result: the returned value and the positional arguments after the call.
    It has its own wire type, so no value a learner returns can pass for it."""

    value: Any
    args: Any


def with_args(r: Any) -> tuple[Any, list | None]:
    """(the returned value, the positional arguments after the call) of a :func:`call_seeing_args` call;
    the arguments are None when the call raised (the value is then its :class:`CallError`)."""
    if isinstance(r, ArgsAfter):
        return r.value, (list(r.args) if isinstance(r.args, (list, tuple)) else None)
    return r, None


def unchanged(after: Any, before: Any, what: str, fix: str = "work on a copy") -> None:
    """Fail when the call changed an input that the exercise says it returns new values for."""
    if after is None:
        return
    if isinstance(before, np.ndarray):
        same = (isinstance(after, np.ndarray) and after.shape == before.shape
                and np.array_equal(after, before, equal_nan=np.issubdtype(before.dtype, np.floating)))
    else:
        same = after == before
    if not same:
        raise Fail(f"the call changed its input {what}: return a new result and leave the input as it was ({fix})")


def matches(got: Any, want: Any, *, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    """Whether ``got`` equals ``want`` within tolerance (same shape; NaN matches NaN, inf matches inf)."""
    try:
        g = np.asarray(got, dtype=np.float64)
        w = np.asarray(want, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return g.shape == w.shape and bool(np.allclose(g, w, rtol=rtol, atol=atol, equal_nan=True))


def diagnose(got: Any, want: Any, variants: list[tuple[str, Any]], *, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Fail with the message of the first typical mistake whose result ``got`` reproduces, when ``got``
    is not the right answer and that mistake's result differs from it: evidence, not a guess."""
    if matches(got, want, rtol=rtol, atol=atol):
        return
    for message, wrong in variants:
        if not matches(wrong, want, rtol=rtol, atol=atol) and matches(got, wrong, rtol=rtol, atol=atol):
            raise Fail(message)


def diagnose_cases(gots: list, wants: list, variants: list[tuple[str, list]], *, what: str = "",
                   rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Like :func:`diagnose` over several calls: a mistake is named only when the learner's results equal that
    mistake's results on every call (``variants``: message, one wrong result per call) and differ from the
    right ones somewhere. ``what`` (the first failing call) starts the message."""
    if all(matches(g, w, rtol=rtol, atol=atol) for g, w in zip(gots, wants)):
        return
    for message, wrongs in variants:
        if (any(not matches(x, w, rtol=rtol, atol=atol) for x, w in zip(wrongs, wants))
                and all(matches(g, x, rtol=rtol, atol=atol) for g, x in zip(gots, wrongs))):
            raise Fail(f"{what}: {message}" if what else message)
