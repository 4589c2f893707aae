"""The grader never crashes: broken, hostile or endless code scores zero with a clear message.

Most cases are graded through the sandbox directly (no kernel); two end-to-end runs go
through ``tinyllm grade`` with a real Jupyter kernel.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinyllm.grading import runner
from tinyllm.grading.notebook import code_cells
from tinyllm.grading.runner import grade_cells, grade_notebook, grade_source, load_exercises, use_checks

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def plain_checks(monkeypatch):
    """Grade lessons 02 and 03 with tests/fixtures/plain_checks: plain functions (softmax, gd_step, ...) that the
    tests below attack, independent of how the course's assignments evolve."""
    monkeypatch.setattr(runner, "_CHECKS", runner._CHECKS)       # restored after the test
    use_checks(str(ROOT / "tests" / "fixtures" / "plain_checks"))


def notebook(*sources: str, lesson: str | None = None) -> dict:
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
          "cells": [{"cell_type": "code", "source": s, "metadata": {}, "outputs": [], "execution_count": None}
                    for s in sources]}
    if lesson:
        nb["metadata"]["tinyllm"] = {"lesson": lesson}
    return nb


def by_function(report):
    return {e.function: e for e in report.exercises}


def feedback(ex) -> str:
    return " ".join([ex.message] + [t.feedback for t in ex.tests])


SOFTMAX_OK = """
def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
"""


def test_broken_cells_each_zero_one_exercise_and_the_rest_is_graded(tmp_path, monkeypatch, plain_checks):
    monkeypatch.chdir(tmp_path)
    nb = notebook(
        "import numpy as np\n%matplotlib inline\n",
        SOFTMAX_OK,
        # a syntax error sinks only the function of this cell
        "def linear_backward(x, W, dy):\n    return dy @ W.T, x.T @ dy, dy.sum(0\n",
        # an infinite loop that even swallows the interrupt: the process is killed
        "import time\ndef relu_backward(x, dy):\n    while True:\n        try:\n            time.sleep(10)\n        except BaseException:\n            pass\n",
        # printing megabytes
        "def cross_entropy(logits, targets):\n    for _ in range(30000):\n        print('x' * 100)\n    return 0.0\n",
        # the wrong name (a typo): the graded function is missing
        "def cross_entropy_backwards(logits, targets):\n    return logits\n",
        # top-level code that would hang or crash is not run by the grader
        "while True:\n    pass\n",
        "raise RuntimeError('boom')\n",
    )
    report = grade_cells("03_backpropagation", code_cells(nb), time_limit=2)
    ex = by_function(report)
    assert ex["softmax"].score == ex["softmax"].max_score
    assert "SyntaxError in cell 3, line 2" in ex["linear_backward"].message
    assert "is not defined" in ex["linear_backward"].message and ex["linear_backward"].score == 0
    assert "did not finish within the time limit (2 s), even when interrupted" in feedback(ex["relu_backward"])
    assert ex["relu_backward"].score == 0
    assert "printed 12.1 million characters (the limit is 1 million)" in ex["cross_entropy"].message and ex["cross_entropy"].score == 0
    assert "function `cross_entropy_backward` is not defined" in ex["cross_entropy_backward"].message
    assert report.score == ex["softmax"].max_score
    assert list(tmp_path.iterdir()) == []


def test_an_endless_loop_is_interrupted_at_the_time_limit(plain_checks):
    from tinyllm.grading.runner import grade_source

    report = grade_source("03_backpropagation", "def softmax(x):\n    while True:\n        pass\n", time_limit=1)
    ex = by_function(report)["softmax"]
    assert ex.score == 0 and "did not finish within the time limit (1 s): look for an infinite loop" in feedback(ex)
    assert by_function(report)["relu_backward"].message.startswith("function `relu_backward` is not defined")


def test_exception_at_import_wrong_shape_exit_and_file_writes(tmp_path, monkeypatch, plain_checks):
    monkeypatch.chdir(tmp_path)
    nb = notebook(
        "import numpy as np\n",
        "import a_module_that_does_not_exist\ndef gd_step(theta, grad, lr):\n    return theta - lr * grad\n",
        "def mse_loss(w, b, x, y):\n    open('written_by_student.txt', 'w').write('hi')\n    return np.array([1.0, 2.0])\n",
        "def mse_grad(w, b, x, y):\n    raise ZeroDivisionError('oops')\n",
        "def sgd_momentum_step(param, grad, velocity, lr, momentum):\n    return param.sum(), velocity\n",
        "def adam_step(*args, **kwargs):\n    import os\n    os._exit(3)\n",
    )
    report = grade_cells("02_gradient_descent", code_cells(nb), time_limit=5)
    ex = by_function(report)
    assert "cell 2 raised ModuleNotFoundError" in ex["gd_step"].message and ex["gd_step"].score == 0
    assert "mse_loss(w, b, x, y) returned a ndarray, expected a number" in feedback(ex["mse_loss"])
    assert "mse_grad(w, b, x, y) raised ZeroDivisionError: oops (cell 4, line 2)" in feedback(ex["mse_grad"])
    assert "the new param returned a float32, expected a NumPy array of shape (6,)" in feedback(ex["sgd_momentum_step"])
    assert "ended the grading process (exit code 3)" in ex["adam_step"].message
    assert report.score == 0
    assert list(tmp_path.iterdir()) == []          # the learner's code ran in a temporary directory


def test_student_code_cannot_change_tests_points_or_references(plain_checks):
    nb = notebook(
        "import numpy as np\nimport numpy\n",
        # patch NumPy in the sandbox and shadow the grader's names: the judging happens elsewhere
        "EXERCISES = []\nPOINTS = 1000\n"
        "def close(*args, **kwargs):\n    return None\n"
        "def softmax(x):\n    numpy.allclose = lambda *a, **k: True\n    numpy.isfinite = lambda a: numpy.ones(numpy.shape(a), bool)\n"
        "    return numpy.zeros_like(x)\n",
        "from tinyllm.grading.checks import *\nimport tinyllm.grading.core as core\n"
        "def relu_backward(x, dy):\n    core.Fail = Exception\n    return dy\n",
    )
    report = grade_cells("03_backpropagation", code_cells(nb), time_limit=5)
    ex = by_function(report)
    assert ex["softmax"].score == 0 and ex["relu_backward"].score == 0
    assert "uses tinyllm (`core` from `import tinyllm.grading.core` in `relu_backward`)" in ex["relu_backward"].message
    assert not any("tinyllm" in n for n in report.notes)
    assert report.max_score == 17 and report.score == 0


def test_missing_files_non_notebooks_and_unknown_lessons_give_one_line_and_exit_2(tmp_path, capsys):
    from tinyllm.cli import main

    def grade(*args):
        code = main(["grade", *args])
        return code, capsys.readouterr().out.strip()

    bad = tmp_path / "05_transformer.ipynb"
    bad.write_text('{"cells": [ {"cell_type": "code", ')
    report = grade_notebook(bad, execute=True)
    assert report.error.endswith("not a valid notebook: invalid JSON at line 1, column 35 (Expecting property name "
                                 "enclosed in double quotes); restore it from the last working version or regenerate it")
    assert report.exercises == [] and report.lesson == "05_transformer"
    code, out = grade(str(bad))
    assert code == 2 and out == f"cannot grade {report.error}"
    code, out = grade(str(bad), "--json")
    assert code == 2 and json.loads(out)["error"] == report.error

    code, out = grade("/nonexistent.ipynb")
    assert (code, out) == (2, "cannot grade /nonexistent.ipynb: no such file")
    code, out = grade(str(ROOT / "README.md"))
    assert code == 2 and out == f"cannot grade {ROOT / 'README.md'}: not a notebook; grade a .ipynb file such as exercises/NN_topic.ipynb"
    text = tmp_path / "05_transformer.txt"
    text.write_text("def causal_mask(T):\n    pass\n")
    code, out = grade(str(text))
    assert code == 2 and out.count("\n") == 0 and out.endswith("05_transformer.txt: not a notebook; grade a .ipynb file such as exercises/NN_topic.ipynb")

    other = tmp_path / "scratch.ipynb"
    other.write_text(json.dumps(notebook("x = 1")))
    code, out = grade(str(other))
    assert code == 2 and "cannot tell which lesson" in out
    assert grade(str(tmp_path / "03_backpropagation.ipynb")) == (2, f"cannot grade {tmp_path / '03_backpropagation.ipynb'}: no such file")
    assert main(["grade"]) == 2


def test_only_and_all_on_a_folder(tmp_path, capsys):
    from tinyllm.cli import main

    for lesson in ("04_tokenization", "05_transformer"):
        (tmp_path / f"{lesson}.ipynb").write_text((ROOT / "solutions" / f"{lesson}.ipynb").read_text())
    assert main(["grade", "--all", "--dir", str(tmp_path), "--no-execute"]) == 0
    out = capsys.readouterr().out
    assert "Course progress" in out and "total" in out and "39/39" in out and "not found: 01_parameters" in out
    exercise = ROOT / "exercises" / "04_tokenization.ipynb"
    assert main(["grade", str(exercise), "--no-execute", "--only", "bpe_merge", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [e["function"] for e in data["exercises"]] == ["bpe_merge"] and data["score"] == 0
    assert main(["grade", str(exercise), "--no-execute", "--only", "nope"]) == 2


def _cli(*args, timeout=240):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tinyllm.cli", "grade", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


@pytest.mark.slow
def test_end_to_end_in_a_kernel_a_solution_and_a_broken_notebook(tmp_path):
    """One ``tinyllm grade`` run over two notebooks, each executed in its own kernel."""
    nb = json.loads((ROOT / "solutions" / "05_transformer.ipynb").read_text())
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if "def attention_forward" in src:                         # the mask lets position t see t + 1
            cell["source"] = src.replace("np.triu(np.ones((T, T), dtype=bool), k=1)", "np.triu(np.ones((T, T), dtype=bool), k=2)")
    nb["cells"].insert(2, {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                           "source": "import time\nwhile True:\n    time.sleep(0.05)\n"})
    broken = tmp_path / "05_transformer.ipynb"
    broken.write_text(json.dumps(nb))
    r = _cli("solutions/04_tokenization.ipynb", str(broken), "--json", "--timeout", "5")
    assert r.returncode == 1, r.stdout + r.stderr
    good, bad = json.loads(r.stdout)["notebooks"]
    assert good["full_marks"] and good["score"] == good["max_score"] == 12 and good["notes"] == []
    assert bad["score"] == 6 and bad["max_score"] == 27 and not bad["full_marks"]   # attention_backward but its e2e
    attention = {e["function"]: e for e in bad["exercises"]}["attention_forward"]
    assert attention["score"] == 0
    assert any("attention lets position 5 see position 6" in t["feedback"] for t in attention["tests"])
    assert bad["notes"][0].startswith("cell 3 (import time) raised KeyboardInterrupt")      # the endless cell was interrupted, the rest ran
    assert any("raised AssertionError" in n for n in bad["notes"])   # the example test below it saw the bug


def test_table_output(capsys):
    from tinyllm.cli import main

    assert main(["grade", str(ROOT / "exercises" / "11_compression.ipynb"), "--no-execute"]) == 1
    out = capsys.readouterr().out
    assert "quantize_q4_1: GGML's Q4_1 quantiser, byte for byte   0/7" in out
    assert "!! not implemented yet" in out and "FAIL  groups along the inputs (axis 0, the default)" in out
    total = round(sum(e.max_points for e in load_exercises("11_compression")))
    assert f"total: 0/{total} points (0%)" in out


def test_calling_the_library_scores_zero_and_says_why_however_it_is_reached(plain_checks):
    root = str(ROOT)
    nb = notebook(
        "import numpy as np\nimport sys, importlib\nimport tinyllm.nn.functional as F\nimport tinyllm\n",
        # in the body, from-import, and a module attribute chain through a top-level import
        "def softmax(x):\n    import tinyllm.nn.functional\n    return tinyllm.nn.functional.softmax(x)\n",
        "def relu_backward(x, dy):\n    from tinyllm.nn.functional import relu_backward as r\n    return r(x, dy)\n",
        "def cross_entropy(logits, targets):\n    return F.cross_entropy(logits, targets)\n",
        # hidden from the source: __import__ / importlib of a computed name, after sys.path tricks, in a helper
        f"def _helper(name):\n    sys.path.insert(0, {root!r})\n    return importlib.import_module(name)\n"
        "def cross_entropy_backward(logits, targets):\n"
        "    return _helper('tiny' + 'llm.nn.functional').cross_entropy_backward(logits, targets)\n",
        "def linear_backward(x, W, dy):\n"
        f"    ns = {{}}\n    exec(open({root!r} + '/tiny' + 'llm/nn/functional.py').read(), ns)\n"
        "    return ns['linear_backward'](x, W, dy)\n",
    )
    report = grade_cells("03_backpropagation", code_cells(nb), time_limit=10)
    ex = by_function(report)
    assert report.score == 0
    for name in ex:
        assert ex[name].message.startswith(f"`{name}` uses tinyllm (") and ex[name].message.endswith(
            "a graded function must be your own code, not the library's reference implementation, so it gets 0 points"), name
    assert "`import tinyllm.nn.functional` in `softmax`" in ex["softmax"].message
    assert "`F` from `import tinyllm.nn.functional` in `cross_entropy`" in ex["cross_entropy"].message
    assert "from tinyllm's folder" in ex["cross_entropy_backward"].message   # seen at run time, not in the source
    assert "reads functional.py from tinyllm's folder" in ex["linear_backward"].message


def test_a_notebook_may_use_tinyllm_outside_the_graded_functions():
    sol = json.loads((ROOT / "solutions" / "05_transformer.ipynb").read_text())
    cells = [c for c in sol["cells"] if c["cell_type"] == "code"]
    extra = "from tinyllm.nn.attention import causal_attention as reference\nimport tinyllm\nprint(tinyllm.__version__)\n"
    report = grade_cells("05_transformer", code_cells(notebook(extra, *("".join(c["source"]) for c in cells))), time_limit=10)
    assert report.full_marks and report.notes == [], report.notes


def test_top_level_constants_are_kept_and_top_level_calls_are_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rms_norm = (
        "import numpy as np\nfrom math import sqrt\nEPS = np.float32(1e-5)\nHALF: float = sqrt(0.25)\nSHIFT = np.zeros(1, np.float32)\n"
        "SHIFT += 0\nTABLE = {'eps': EPS}\n"
        "def rms_norm(x, w, eps=None):\n"
        "    eps = TABLE['eps'] if eps is None else eps\n"
        "    ms = (x * x).mean(-1, keepdims=True) * (HALF * 2) + SHIFT\n"
        "    return (x / np.sqrt(ms + eps) * w).astype(x.dtype)\n"
    )
    side_effects = (
        "x = np.ones(3)\ny = rms_norm(x, 1, 0)\nprint(y)\n"              # a call of the learner's function: not run
        "z = open('written_at_top_level.txt', 'w')\n"                   # a call of something else: not run
        "w = y.sum()\nx[0] = 2\n"                                       # depend on what was not run: skipped quietly
        "import time\nt = time.sleep(100)\n"
    )
    report = grade_source("08_llama_block", rms_norm + side_effects, time_limit=10, only=["rms_norm"])
    ex = by_function(report)["rms_norm"]
    assert ex.score == ex.max_score and report.notes == [], (ex.message, report.notes)
    assert list(tmp_path.iterdir()) == []
    # the shipped solution with `block = np.zeros(...)` then `block[:2] = ...` no longer gets a false note
    sol = grade_notebook(ROOT / "solutions" / "07_loading_a_real_model.ipynb", execute=False)
    assert sol.full_marks and sol.notes == []
    # an error of its own still stops the cell, as in the notebook
    report = grade_source("05_transformer", "import numpy as np\nEPS = np.float32('x')\n"
                          "def attention_forward(x, w_qkv, b_qkv, w_o, b_o, n_head):\n    return 1\n",
                          time_limit=10, only=["attention_forward"])
    assert "cell 1 raised ValueError" in by_function(report)["attention_forward"].message


def _survivors(token: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(entry.name)
        except OSError:
            pass
    return found


def _fingerprint(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sweep reads /proc")
def test_the_sweep_kills_orphans_that_left_the_session_and_cleared_their_environment():
    """Outside any confinement (which as root forbids new processes altogether): a run's grandchild that
    starts a new session with an empty environment is adopted by the grader (a subreaper) and killed."""
    from tinyllm.grading import jail

    prev = jail.set_subreaper(True)
    since = jail.boot_ticks()
    try:
        code = ("import os, subprocess\nif os.fork() == 0:\n    os.setsid()\n"
                "    subprocess.Popen(['sleep', '985.75'], env={}, start_new_session=True)\n    os._exit(0)\n")
        subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **{jail.MARKER: "t0k3n"}), timeout=60)
        for _ in range(100):
            if _survivors("985.75"):
                break
            time.sleep(0.05)
        assert _survivors("985.75")
        assert jail.sweep("t0k3n", children_since=since) >= 1
        assert not _survivors("985.75")
    finally:
        jail.set_subreaper(prev)


def _writes_confined() -> bool:
    from tinyllm.grading import jail
    from tinyllm.grading.process import _grading_uid

    return sys.platform.startswith("linux") and (jail.landlock_abi() > 0 or _grading_uid() is not None)


needs_confinement = pytest.mark.skipif(not _writes_confined(), reason="writes are confined only on Linux with Landlock "
                                       "(or as root, by a user switch): see the README")


@needs_confinement
def test_graded_code_cannot_write_outside_its_scratch_folder_nor_leave_processes(tmp_path, monkeypatch, plain_checks):
    from tinyllm.grading import jail

    monkeypatch.chdir(tmp_path)
    protected = [ROOT / "tinyllm" / "grading" / "checks", ROOT / "tests"]
    before = _fingerprint(*protected)
    src = (
        "import numpy as np, os, subprocess, time, glob\n"
        f"ROOT = {str(ROOT)!r}\n"
        "def write(paths):\n"
        "    for p in paths:\n"
        "        try:\n            open(p, 'a').write('EXERCISES = []\\n')\n        except OSError:\n            pass\n"
        "def softmax(x):\n"      # write into the tests (refused), then answer right
        "    write([ROOT + '/tests/test_grading.py', ROOT + '/tests/new.py', ROOT + '/new.py'])\n"
        "    e = np.exp(x - x.max(axis=-1, keepdims=True))\n    return e / e.sum(axis=-1, keepdims=True)\n"
        "def relu_backward(x, dy):\n"   # write into the checks, leave a daemon (new session, no environment), fork bomb
        "    write([ROOT + '/tinyllm/grading/checks/03_backpropagation.py', ROOT + '/tinyllm/grading/checks/new.py'])\n"
        "    if os.fork() == 0:\n        os.setsid()\n"
        "        subprocess.Popen(['sleep', '987.25'], env={}, start_new_session=True)\n        os._exit(0)\n"
        "    n = 0\n"
        "    while n < 5000:\n"
        "        try:\n            pid = os.fork()\n        except OSError:\n            break\n"
        "        if pid == 0:\n            time.sleep(600)\n            os._exit(0)\n"
        "        n += 1\n"
        "    return n\n"
        "def cross_entropy(logits, targets):\n    return np.ones(10**10)\n"          # more memory than allowed
        "class Always:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
        "class Sub(np.ndarray):\n    def __eq__(self, other):\n        return np.ones(self.shape, bool)\n"
        "def cross_entropy_backward(logits, targets):\n    return Always()\n"
        "def linear_backward(x, W, dy):\n    z = np.zeros((x.shape[0], W.shape[0])).view(Sub)\n    return z, W.view(Sub), np.zeros(W.shape[1]).view(Sub)\n"
    )
    report = grade_source("03_backpropagation", src, time_limit=10)
    ex = by_function(report)
    assert _fingerprint(*protected) == before
    assert not _survivors("987.25") and not _survivors(str(tmp_path))
    assert ex["softmax"].score == ex["softmax"].max_score                 # its writes failed, its answer is right
    assert ex["relu_backward"].score == 0 and report.score == ex["softmax"].max_score, [(e.function, e.score) for e in report.exercises]
    assert "from tinyllm's folder" in ex["relu_backward"].message       # touching tinyllm's files is using it
    assert not (ROOT / "new.py").exists()
    assert "used more memory than the grader allows (4 GiB)" in feedback(ex["cross_entropy"])
    assert "returned a Always" in feedback(ex["cross_entropy_backward"])
    assert ex["linear_backward"].score == 0
    assert list(tmp_path.iterdir()) == []
    # what the confinement is, measured from inside
    from tinyllm.grading.process import Confined

    with Confined(2**31, [str(ROOT / "tinyllm")]) as box:
        probe = ("import os, resource\nprint(resource.getrlimit(resource.RLIMIT_AS)[0], resource.getrlimit(resource.RLIMIT_NPROC)[0])\n"
                 f"for p in [{str(ROOT / 'tests' / 'x')!r}, os.environ['HOME'] + '/x']:\n"
                 "    try:\n        open(p, 'w').close(); print('wrote', p == os.environ['HOME'] + '/x')\n"
                 "    except OSError:\n        print('denied')\n"
                 f"try:\n    open({str(ROOT / 'tinyllm' / '__init__.py')!r}).read(); print('read')\nexcept OSError:\n    print('denied')\n")
        out = subprocess.run(box.command([sys.executable, "-c", probe]), env=box.env(), cwd=box.scratch,
                             capture_output=True, text=True, timeout=60).stdout.split()
    assert out[0] == str(2**31) and int(out[1]) < 100_000
    assert out[2:4] == ["denied", "wrote"] and out[4] == "True"
    assert out[5] == ("denied" if jail.landlock_abi() else "read")


@pytest.mark.slow
@needs_confinement
def test_a_hostile_notebook_in_its_kernel_changes_nothing_and_is_stopped(tmp_path):
    """One notebook tries, in its kernel, to rewrite the next lesson's checks and the tests, to patch tinyllm,
    to leave a daemon, to exhaust memory, to print megabytes and to ignore interrupts forever; the next
    notebook is an untouched exercise and must still score zero."""
    protected = [ROOT / "tinyllm", ROOT / "tests"]
    before = _fingerprint(*protected)
    nb = json.loads((ROOT / "solutions" / "04_tokenization.ipynb").read_text())
    checks = ROOT / "tinyllm" / "grading" / "checks"
    hostile = [
        f"for p in [{str(checks / '05_transformer.py')!r}, {str(checks / 'new.py')!r}, {str(ROOT / 'tests' / 'conftest.py')!r}]:\n"
        "    try:\n        open(p, 'w').write('from tinyllm.grading.core import *\\nEXERCISES = []\\n')\n"
        "    except OSError as exc:\n        print('refused', p, exc)\n",
        "import tinyllm.grading.core as core\ncore.Fail = Exception\nimport tinyllm.nn.attention as A\nA.causal_mask = lambda T: None\n",
        "import subprocess\nsubprocess.Popen(['sleep', '986.5'], start_new_session=True, env={})\n",
        "hog = bytearray(6 * 2**30)\n",
        "for _ in range(3000):\n    print('y' * 1000)\n",
        "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except KeyboardInterrupt:\n        pass\n",
    ]
    for i, src in enumerate(hostile):
        nb["cells"].insert(2 + i, {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": src})
    (tmp_path / "04_tokenization.ipynb").write_text(json.dumps(nb))
    (tmp_path / "05_transformer.ipynb").write_text((ROOT / "exercises" / "05_transformer.ipynb").read_text())
    r = _cli("--all", "--dir", str(tmp_path), "--json", "--timeout", "3", "--notebook-timeout", "20", "--memory", "3")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "without encryption" not in r.stderr and "Traceback" not in r.stderr
    reports = {n["lesson"]: n for n in json.loads(r.stdout)["notebooks"]}
    hostile_nb, exercise = reports["04_tokenization"], reports["05_transformer"]
    assert hostile_nb["full_marks"] and exercise["score"] == 0 and exercise["max_score"] == 27
    notes = hostile_nb["notes"]
    assert "cell 6 (hog = bytearray(6 * 2**30)) raised MemoryError: it used more memory than the grader allows (3 GiB)" in notes
    assert notes[0] == ("the notebook did not finish within 20 s (the limit for the whole run), so its kernel and every "
                        "process it started were stopped")
    assert _fingerprint(*protected) == before
    assert not _survivors("986.5")


def test_checks_from_a_source_the_learner_does_not_control(tmp_path, monkeypatch, capsys):
    import shutil

    from tinyllm.cli import main
    from tinyllm.grading import runner

    monkeypatch.setattr(runner, "_CHECKS", runner._CHECKS)       # restored after the test
    solution = ROOT / "solutions" / "09_inference.ipynb"
    # graded inside the repository that holds the checks: refused
    monkeypatch.chdir(ROOT)
    assert main(["grade", str(solution), "--no-execute", "--checks-from", "tinyllm.grading.checks"]) == 2
    assert "inside the graded folder" in capsys.readouterr().err
    # a learner's repository with its own (edited) checks: the installed package's checks are used
    repo = tmp_path / "learner"
    (repo / "exercises").mkdir(parents=True)
    (repo / ".git").mkdir()
    (repo / "exercises" / "09_inference.ipynb").write_text((ROOT / "exercises" / "09_inference.ipynb").read_text())
    fake = repo / "my_checks"
    fake.mkdir()
    (fake / "09_inference.py").write_text("EXERCISES = []\n")
    monkeypatch.chdir(repo)
    assert main(["grade", "exercises/09_inference.ipynb", "--no-execute", "--checks-from", str(fake)]) == 2
    assert "the checks would come from" in capsys.readouterr().err
    assert main(["grade", "exercises/09_inference.ipynb", "--no-execute", "--checks-from", "tinyllm.grading.checks",
                 "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["max_score"] == sum(e.max_points for e in load_exercises("09_inference"))
    # a folder of checks kept by the instructor
    private = tmp_path / "instructor" / "checks"
    shutil.copytree(ROOT / "tinyllm" / "grading" / "checks", private)
    (repo / "exercises" / "09_inference.ipynb").write_text(solution.read_text())
    assert main(["grade", "exercises/09_inference.ipynb", "--no-execute", "--checks-from", str(private)]) == 0
    total = round(sum(e.max_points for e in load_exercises("09_inference")))
    assert f"total: {total}/{total} points (100%)  full marks" in capsys.readouterr().out
    assert main(["grade", "exercises/09_inference.ipynb", "--checks-from", str(tmp_path / "nowhere")]) == 2


def test_a_returned_value_cannot_pass_for_the_arguments_after_the_call():
    """In-place checks read the arguments after the call from a wire type of their own: a learner who
    returns what looks like them (an untouched copy written "in place") still loses the in-place points."""
    source = '''
import numpy as np

def cached_attention(q, k_new, v_new, cache_k, cache_v, pos):
    T = q.shape[2]
    if pos < 0 or pos + T > cache_k.shape[2]:
        raise ValueError("too long")
    k, v = cache_k.copy(), cache_v.copy()        # new arrays: the caller's cache is never written
    k[:, :, pos:pos + T] = k_new
    v[:, :, pos:pos + T] = v_new
    s = q @ k[:, :, :pos + T].swapaxes(-1, -2) / np.float32(np.sqrt(q.shape[-1]))
    s = np.where(np.arange(pos + T)[None, :] <= pos + np.arange(T)[:, None], s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    y = (w / w.sum(-1, keepdims=True) @ v[:, :, :pos + T]).astype(np.float32)
    return ("__tinyllm_args_after_call__", y, [q, k_new, v_new, k, v, pos])
'''
    report = grade_source("09_inference", source, time_limit=20)
    ex = {e.function: e for e in report.exercises}["cached_attention"]
    assert ex.score < ex.max_score
