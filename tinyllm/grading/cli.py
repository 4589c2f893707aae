"""``tinyllm grade``: grade exercise notebooks with points and feedback.

    tinyllm grade exercises/03_backpropagation.ipynb            # a table per exercise
    tinyllm grade exercises/03_backpropagation.ipynb --json     # the same as JSON, for an LMS
    tinyllm grade exercises/03_backpropagation.ipynb --only softmax --no-execute
    tinyllm grade --all                                          # course progress over exercises/

    tinyllm grade --checks-from tinyllm.grading.checks exercises/...  # refuse checks from the graded repo

Exit codes: 0 full marks (every graded notebook, every exercise selected);
1 graded, but not full marks; 2 nothing could be graded (no such file, not a
notebook, a notebook of no known lesson, bad arguments, untrusted checks).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tinyllm.grading.notebook import DEFAULT_NOTEBOOK_TIMEOUT
from tinyllm.grading.process import DEFAULT_MEMORY
from tinyllm.grading.report import Report
from tinyllm.grading.runner import (CAPSTONE, DEFAULT_TIMEOUT, ChecksSourceError,
                                    grade_notebook, lesson_for, lessons, use_checks)

EXIT_FULL, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser, command: str = "grade") -> None:
    parser.epilog = ("exit status: 0 full marks, 1 graded but not full marks, 2 nothing could be graded "
                     "(no such file, not a notebook, unknown lesson, bad arguments, untrusted checks)")
    parser.add_argument("notebooks", nargs="*", metavar="NOTEBOOK", help="exercise notebooks to grade (exercises/NN_topic.ipynb)")
    parser.add_argument("--all", action="store_true", help="grade every exercise notebook in --dir and print a progress table")
    parser.add_argument("--dir", default="exercises", help="folder searched by --all (default: exercises)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (for an LMS or an autograder)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"time limit in seconds for each notebook cell and for the tests of each function (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--notebook-timeout", type=float, default=DEFAULT_NOTEBOOK_TIMEOUT, metavar="S",
                        help=f"time limit in seconds for running the whole notebook (default {DEFAULT_NOTEBOOK_TIMEOUT:g})")
    parser.add_argument("--memory", type=float, default=DEFAULT_MEMORY / 2**30, metavar="GIB",
                        help=f"memory limit in GiB for the notebook's kernel and for the graded code (default {DEFAULT_MEMORY / 2**30:g})")
    parser.add_argument("--checks-from", metavar="SOURCE",
                        help="take the checks from SOURCE, a package (tinyllm.grading.checks) or a folder of NN_topic.py "
                             "files, and refuse to grade if they or tinyllm lie inside the current folder or the notebook's "
                             "repository (for grading in a learner's repository; see the README)")
    parser.add_argument("--no-execute", dest="execute", action="store_false",
                        help="skip running the notebook in a kernel; only run the graded tests (faster)")
    parser.add_argument("--only", action="append", metavar="FUNCTION",
                        help="grade only this exercise (repeatable); exit 0 only if it has full marks")


def _repository(path: Path) -> Path:
    """The folder of the repository that holds ``path``: the nearest with .git or pyproject.toml, else its folder."""
    path = path.resolve()
    for folder in path.parents:
        if (folder / ".git").exists() or (folder / "pyproject.toml").exists():
            return folder
    return path.parent


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0 or args.notebook_timeout <= 0 or args.memory <= 0:
        print("tinyllm grade: --timeout, --notebook-timeout and --memory must be > 0", file=sys.stderr)
        return EXIT_ERROR
    paths = [Path(p) for p in args.notebooks]
    if args.checks_from:
        try:
            use_checks(args.checks_from, untrusted=[Path.cwd(), *{_repository(p) for p in paths},
                                                     *([Path(args.dir)] if args.all else [])])
        except ChecksSourceError as exc:
            print(f"tinyllm grade: {exc}", file=sys.stderr)
            return EXIT_ERROR
    if args.all:
        folder = Path(args.dir)
        if not folder.is_dir():
            print(f"tinyllm grade: no folder {folder} (run from the course's root, or pass --dir)", file=sys.stderr)
            return EXIT_ERROR
        paths += sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if lesson_for(p) is not None)
        paths += [p for p in [folder / f"{CAPSTONE}.ipynb"] if p.is_file() and lesson_for(p) is not None]
    if not paths:
        print("tinyllm grade: give a notebook (exercises/NN_topic.ipynb) or --all", file=sys.stderr)
        return EXIT_ERROR
    if args.only and len(paths) > 1:
        print("tinyllm grade: --only works with one notebook", file=sys.stderr)
        return EXIT_ERROR
    reports = []
    for i, path in enumerate(paths):
        if not args.json and len(paths) > 1:
            print(f"[{i + 1}/{len(paths)}] grading {path} ...", file=sys.stderr, flush=True)
        reports.append(grade_notebook(path, timeout=args.timeout, execute=args.execute, only=args.only,
                                      notebook_timeout=args.notebook_timeout, memory=int(args.memory * 2**30)))
    if args.json:
        print(json.dumps(to_json(reports, args.all), indent=2))
    else:
        for r in reports:
            print(format_report(r))
        if args.all or len(reports) > 1:
            print(format_progress(reports))
    if any(r.error for r in reports) and not any(r.exercises for r in reports):
        return EXIT_ERROR
    return EXIT_FULL if all(r.full_marks for r in reports) else EXIT_PARTIAL


def to_json(reports: list[Report], progress: bool = False) -> dict:
    score = sum(r.score for r in reports)
    max_score = sum(r.max_score for r in reports)
    if len(reports) == 1 and not progress:
        return reports[0].to_dict()
    return {"score": score, "max_score": max_score, "full_marks": all(r.full_marks for r in reports),
            "notebooks": [r.to_dict() for r in reports]}


def _pts(x: float) -> str:
    return f"{x:g}"


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def format_report(r: Report) -> str:
    """A table per exercise: each test with its points, PASS/FAIL and the feedback."""
    if r.error:
        return f"cannot grade {r.error}" if r.error.startswith(r.notebook) else f"cannot grade {r.notebook}: {r.error}"
    lines = [f"{r.notebook}  ({r.lesson or 'unknown lesson'})"]
    name_w = max([len(t.name) for e in r.exercises for t in e.tests] + [20])
    for e in r.exercises:
        lines.append("")
        lines.append(f"  {e.function}: {e.title}   {_pts(e.score)}/{_pts(e.max_score)}")
        if e.message:
            for k, part in enumerate(_wrap(e.message, 96)):
                lines.append(f"    {'!! ' if k == 0 else '   '}{part}")
        for t in e.tests:
            mark = "PASS" if t.passed else "FAIL"
            lines.append(f"    {mark}  {t.name:<{name_w}}  {_pts(t.points):>4}/{_pts(t.max_points):<4}")
            if t.feedback:
                for part in _wrap(t.feedback, 90):
                    lines.append(f"            {part}")
    if r.notes:
        lines.append("")
        lines.append("  notes (these do not change the points):")
        for n in r.notes[:20]:
            lines.append(f"    - {n}")
        if len(r.notes) > 20:
            lines.append(f"    ... and {len(r.notes) - 20} more")
    pct = 100.0 * r.score / r.max_score if r.max_score else 0.0
    lines.append("")
    lines.append(f"  total: {_pts(r.score)}/{_pts(r.max_score)} points ({pct:.0f}%)"
                 + ("  full marks" if r.full_marks else ""))
    return "\n".join(lines) + "\n"


def format_progress(reports: list[Report]) -> str:
    """The course progress table: one row a lesson."""
    rows = [("lesson", "functions done", "points", "progress")]
    tot, tot_max, done, n = 0.0, 0.0, 0, 0
    for r in reports:
        d = sum(1 for e in r.exercises if e.passed)
        tot, tot_max, done, n = tot + r.score, tot_max + r.max_score, done + d, n + len(r.exercises)
        frac = r.score / r.max_score if r.max_score else 0.0
        bar = "#" * round(20 * frac) + "." * (20 - round(20 * frac))
        label = r.lesson or Path(r.notebook).stem
        if r.error:
            rows.append((label, "-", "-", "cannot grade"))
        else:
            rows.append((label, f"{d}/{len(r.exercises)}", f"{_pts(r.score)}/{_pts(r.max_score)}", f"{bar} {100 * frac:3.0f}%"))
    frac = tot / tot_max if tot_max else 0.0
    rows.append(("total", f"{done}/{n}", f"{_pts(tot)}/{_pts(tot_max)}", f"{'':20} {100 * frac:3.0f}%"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    out = ["", "Course progress"]
    for k, row in enumerate(rows):
        out.append("  " + "  ".join([row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2]), row[3]]))
        if k == 0 or k == len(rows) - 2:
            out.append("  " + "  ".join("-" * w for w in widths))
    missing = [l for l in lessons() if l not in {r.lesson for r in reports}]
    if missing:
        out.append(f"  not found: {', '.join(m + '.ipynb' for m in missing)}  (run `tinyllm make-exercises`)")
    return "\n".join(out) + "\n"
