"""Ways to earn points without doing the work, each refused: patching the library's reference functions or
NumPy, returning objects that compare equal to anything, and hard-coding the visible examples.

The toy checks grade ``rms_norm`` with a hidden unit test (random inputs, a non-default ``eps``) and an
end-to-end test (a tiny Llama on the learner's function, compared with the library's logits).
"""
from __future__ import annotations

import textwrap

import numpy as np
import nbformat
import pytest

from tinyllm.grading import runner
from tinyllm.grading.runner import grade_notebook, grade_source, use_checks

CHECKS = '''
import numpy as np

from tinyllm import kernels, plug
from tinyllm.grading.core import Exercise, array, call, close
from tinyllm.models.llama import Llama, LlamaConfig

CFG = LlamaConfig(vocab_size=48, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=8, ffn_dim=32,
                  context_length=32)
MODEL = Llama(CFG, rng=0)
IDS = np.random.default_rng(1).integers(0, CFG.vocab_size, (1, 6))
REF = MODEL.forward(IDS)
X = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
W = np.random.default_rng(3).standard_normal(16).astype(np.float32)
WANT = kernels.rms_norm(X, W, 1e-3)

ex = Exercise("rms_norm", "RMSNorm")
ex.test("hidden inputs, eps=1e-3", 2, [call(X, W, 1e-3)],
        lambda r: close(array(r[0], "rms_norm(x, w, 1e-3)", X.shape), WANT, "rms_norm(x, w, 1e-3)"))


def _logits(learner):
    with plug.use(rms_norm=learner.rms_norm):
        logits = MODEL.forward(IDS)
    close(logits, REF, "the tiny Llama's logits with your rms_norm", atol=1e-4)


ex.end_to_end("a tiny Llama runs on your rms_norm", 3, _logits)
EXERCISES = [ex]
'''

# the visible example of the (imagined) exercise notebook, and its answer
VISIBLE_X = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
VISIBLE_W = np.ones(4, np.float32)

WRONG = "def rms_norm(x, w, eps=1e-5):\n    return x * w                 # no normalisation at all\n"


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_CHECKS", runner._CHECKS)       # restored after the test
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "99_toy.py").write_text(CHECKS)
    use_checks(str(tmp_path / "checks"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _score(report) -> float:
    assert report.error is None, report.error
    return report.score


@pytest.mark.parametrize("patch", [
    # the library's reference, replaced by the learner's wrong function (so "reference == learner")
    "import tinyllm.kernels\ntinyllm.kernels.rms_norm = rms_norm\n",
    "from tinyllm import kernels, plug\nkernels.rms_norm = rms_norm\nplug._POINTS['rms_norm'] = rms_norm\n",
    # NumPy's comparisons, made to pass anything
    "import numpy as np\nnp.allclose = lambda *a, **k: True\nnp.testing.assert_allclose = lambda *a, **k: None\n",
    "import numpy as np\nnp.abs = lambda x: np.zeros_like(x)\nnp.isfinite = lambda x: np.ones(np.shape(x), bool)\n",
])
def test_patching_the_library_or_numpy_in_the_notebook_earns_nothing(toy, patch):
    # the patch at top level of a cell, and again inside the graded function, which runs in the sandbox
    inside = WRONG.replace("    return", "    " + "\n    ".join(patch.strip().splitlines()) + "\n    return")
    for source in (WRONG + patch, inside):
        report = grade_source("99_toy", source)
        assert _score(report) == 0, [(t.name, t.feedback) for e in report.exercises for t in e.tests]


def test_patches_made_while_the_notebook_runs_in_its_kernel_do_not_reach_the_grader(toy):
    patch = ("import tinyllm.kernels, numpy as np\nfrom tinyllm import plug\n"
             "tinyllm.kernels.rms_norm = rms_norm\nplug._POINTS['rms_norm'] = rms_norm\nnp.allclose = lambda *a, **k: True\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(WRONG), nbformat.v4.new_code_cell(patch)])
    path = toy / "99_toy.ipynb"
    nbformat.write(nb, path)
    report = grade_notebook(path, execute=True, timeout=60)
    assert _score(report) == 0 and report.max_score == 5
    assert "the tiny Llama's logits with your rms_norm is off by" in report.exercises[0].tests[1].feedback


@pytest.mark.parametrize("cheat", [
    "class Anything:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n        return False\n"
    "    def __array__(self, dtype=None, copy=None):\n        raise TypeError\n\n"
    "def rms_norm(x, w, eps=1e-5):\n    return Anything()\n",
    # an ndarray subclass whose comparisons say True: it arrives as a plain array of its (wrong) values
    "import numpy as np\nclass Yes(np.ndarray):\n    def __eq__(self, other):\n        return True\n"
    "    def __array_ufunc__(self, *a, **k):\n        return True\n\n"
    "def rms_norm(x, w, eps=1e-5):\n    return np.zeros_like(x).view(Yes)\n",
    # a float that equals everything: it arrives as a plain float
    "class Eq(float):\n    def __eq__(self, other):\n        return True\n\n"
    "def rms_norm(x, w, eps=1e-5):\n    return Eq(0.0)\n",
])
def test_objects_that_compare_equal_to_anything_earn_nothing(toy, cheat):
    report = grade_source("99_toy", textwrap.dedent(cheat))
    assert _score(report) == 0, [(t.name, t.feedback) for e in report.exercises for t in e.tests]


def test_hard_coding_the_visible_example_fails_the_hidden_tests(toy):
    answer = VISIBLE_X / np.sqrt((VISIBLE_X ** 2).mean(-1, keepdims=True) + 1e-5) * VISIBLE_W
    cheat = (f"import numpy as np\nEXAMPLE = np.array({VISIBLE_X.tolist()}, np.float32)\n"
             f"ANSWER = np.array({answer.tolist()}, np.float32)\n\n"
             "def rms_norm(x, w, eps=1e-5):\n"
             "    if x.shape == EXAMPLE.shape and np.allclose(x, EXAMPLE):\n"
             "        return ANSWER.copy()\n"
             "    return np.zeros_like(x)\n")
    ns = {}
    exec(cheat, ns)
    np.testing.assert_allclose(ns["rms_norm"](VISIBLE_X, VISIBLE_W), answer)      # the visible assert passes
    report = grade_source("99_toy", cheat)
    assert _score(report) == 0
    assert all(not t.passed for t in report.exercises[0].tests)
