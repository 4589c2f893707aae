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

Step 1-2 live in :mod:`~tinyllm.grading.notebook`, the sandbox process of step 3 in
:mod:`~tinyllm.grading.process`, the end-to-end tests' calls of the learner's code in
:mod:`~tinyllm.grading.remote`, the results in :mod:`~tinyllm.grading.report`; this module loads the checks,
judges and grades.

The checks (and the tinyllm modules they use) are loaded into this process before
any learner code runs. The kernel and the sandbox run confined (:mod:`jail`): a
scratch folder as working directory and home, a memory limit, no writes elsewhere
where the OS allows it, and every process they start is killed when they end.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
from pathlib import Path


from tinyllm.grading.core import Exercise, Fail
from tinyllm.grading.notebook import (DEFAULT_NOTEBOOK_TIMEOUT, Cell, code_cells, execute_notebook, library_use,
                                      read_notebook, source_cells)
from tinyllm.grading.process import DEFAULT_MEMORY, LIBRARY_DIR, PRINT_CAP, Confined, _run_jobs, decode, library_dirs
from tinyllm.grading.remote import EndToEndSession
from tinyllm.grading.report import ExerciseResult, Report, TestResult


DEFAULT_CHECKS = "tinyllm.grading.checks"
CAPSTONE = "capstone"              # exercises/capstone.ipynb, graded on the functions of the exercise notebooks
DEFAULT_TIMEOUT = 30.0


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


def capstone_cells(folder: str | Path) -> list[Cell]:
    """The code cells of the graded exercise notebooks in ``folder`` (``NN_topic.ipynb`` of every lesson), in
    lesson order, each marked with its notebook: the learner's code that the capstone grades."""
    cells = []
    for lesson in lessons():
        nb, _ = read_notebook(Path(folder) / f"{lesson}.ipynb")
        if nb is not None:
            cells += [dataclasses.replace(c, notebook=lesson) for c in code_cells(nb)]
    return cells


# ---------------------------------------------------------------------------------------------
# judging and grading
# ---------------------------------------------------------------------------------------------

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
