"""End-to-end checks: the library runs in the grader's process, only the learner's functions in the sandbox.

A toy checks module (loaded through ``use_checks``, as ``--checks-from`` does) plugs the learner's
``rms_norm`` into ``kernels.rms_norm`` and runs a tiny random Llama; another exercise returns an object of
the learner's own class, used through a remote handle.
"""
from __future__ import annotations

import io
import textwrap

import numpy as np
import pytest

from tinyllm.grading import remote, runner
from tinyllm.grading.core import Fail
from tinyllm.grading.runner import grade_source, use_checks

TOY_CHECKS = '''
import numpy as np

from tinyllm import kernels, plug
from tinyllm.grading.core import Exercise, Fail, array, call, close
from tinyllm.models.llama import Llama, LlamaConfig

CFG = LlamaConfig(vocab_size=48, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=8, ffn_dim=32,
                  context_length=32)
MODEL = Llama(CFG, rng=0)
IDS = np.random.default_rng(1).integers(0, CFG.vocab_size, (1, 6))
REF = MODEL.forward(IDS)
X = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
W = np.random.default_rng(3).standard_normal(16).astype(np.float32)

norm = Exercise("rms_norm", "RMSNorm")
norm.test("values", 1, [call(X, W, 1e-3)],
          lambda r: close(array(r[0], "rms_norm(x, w, 1e-3)", X.shape), kernels.rms_norm(X, W, 1e-3), "rms_norm(x, w, 1e-3)"))


def _logits(learner):
    with plug.use(rms_norm=learner.rms_norm):
        logits = MODEL.forward(IDS)
    close(logits, REF, "the tiny Llama's logits with your rms_norm", atol=1e-4)


norm.end_to_end("a tiny Llama runs on your rms_norm", 2, _logits)

cls = Exercise("make_norm", "an RMSNorm object")


def _object(learner):
    layer = learner.make_norm(1e-5)
    if hasattr(layer, "no_such_attribute") or not hasattr(layer, "calls"):
        raise Fail("hasattr does not work on handles")
    if abs(layer.eps - 1e-5) > 1e-12:
        raise Fail(f"make_norm(1e-5).eps is {layer.eps}, expected 1e-05")
    with plug.use(rms_norm=layer.apply):
        logits = MODEL.forward(IDS)
    close(logits, REF, "the tiny Llama's logits with your object's apply", atol=1e-4)
    close(layer.calls, 2 * CFG.n_layers + 1, "the number of calls your object counted")
    again = learner.make_norm(1e-5)
    close(learner.count_calls(again), 0.0, "count_calls(a fresh object)")
    close(learner.count_calls(layer), 2 * CFG.n_layers + 1, "count_calls(the object used above)")


cls.end_to_end("a tiny Llama runs on your object", 3, _object)

fill = Exercise("fill", "writes into a buffer")


def _fill(learner):
    buf = np.zeros(4, np.float32)
    out = learner.fill(buf, 2.5)
    if out is not None:
        raise Fail("fill returned a value, expected None")
    close(buf, np.full(4, 2.5), "the buffer after fill(buf, 2.5)")


fill.end_to_end("fills the buffer in place", 1, _fill)

store = Exercise("store", "writes into a library object's arrays")


def _store(learner):
    cache = MODEL.new_cache(1, 8)                 # a tinyllm KVCache: it travels as a namespace of its attributes
    k = np.ones((1, CFG.n_kv_heads, 2, CFG.head_dim), np.float32)
    extra, more = [np.zeros(3, np.float32)], {"b": np.zeros(2, np.float32)}
    learner.store(cache, 1, k, extra, more)
    close(cache.k[1, :, :, :2], k, "cache.k[1] after store(cache, 1, k)")
    close(extra[0], np.ones(3), "the array in a list after store")
    close(more["b"], np.full(2, 2.0), "the array in a dict after store")
    close(cache.k[0], np.zeros_like(cache.k[0]), "cache.k[0], which store must not change")


store.end_to_end("writes into the cache in place", 1, _store)

draw = Exercise("draw", "draws from the generator it gets")


def _draw(learner):
    for rng in (np.random.default_rng(5), np.random.Generator(np.random.MT19937(5))):
        mine = [learner.draw(rng) for _ in range(3)] + [float(rng.random())]    # the generator advances here too
        twin = np.random.Generator(type(rng.bit_generator)(5))
        close(mine, [float(twin.random()) for _ in range(4)], "three draws through draw(rng), then one here")


draw.end_to_end("the generator advances as in-process", 1, _draw)

total = Exercise("total", "sums a big constant array")
BIG = np.arange(2**15, dtype=np.float32).reshape(128, 256)


def _total(learner):
    from tinyllm.grading.core import freeze

    big = freeze([BIG.copy()])[0]
    for _ in range(3):                       # sent once, then by reference: still the same values
        close(learner.total(big), float(BIG.sum()), "total(big)")
    if learner.try_write(big) != "read-only":
        raise Fail("a read-only array arrived writable")


total.end_to_end("sums a read-only array", 1, _total)

scale = Exercise("scale", "scales a read-only input")


def _scale(learner):
    from tinyllm.grading.core import freeze

    small, big = freeze([np.ones(4, np.float32), BIG.copy()], 0)   # small travels by value, big once by reference
    close(learner.scale(small, big, 2.0), np.full(4, 2.0), "scale(small, big, 2)")


scale.end_to_end("scales without changing its inputs", 1, _scale)

EXERCISES = [norm, cls, fill, total, store, draw, scale]
'''

RIGHT = '''
import numpy as np

def rms_norm(x, w, eps=1e-5):
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(ms + eps) * w).astype(x.dtype)

class Norm:
    def __init__(self, eps):
        self.eps = eps
        self.calls = 0

    def apply(self, x, w, eps=1e-5):
        self.calls += 1
        return rms_norm(x, w, eps)

def make_norm(eps):
    return Norm(eps)

def count_calls(norm):
    return norm.calls

def fill(buf, value):
    buf[...] = value

def total(a):
    return float(a.sum())

def draw(rng):
    return float(rng.random())

def store(cache, layer, k, extra, more):
    cache.k[layer, :, :, :k.shape[2]] = k
    extra[0][:] = 1
    more["b"][:] = 2

def scale(a, big, f):
    return a * f

def try_write(a):
    try:
        a[0, 0] = 1
    except ValueError:
        return "read-only"
    return "written"
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_CHECKS", runner._CHECKS)       # restored after the test
    folder = tmp_path / "checks"
    folder.mkdir()
    (folder / "99_toy.py").write_text(TOY_CHECKS)
    use_checks(str(folder))
    monkeypatch.chdir(tmp_path)

    def grade(source: str, **kw):
        report = grade_source("99_toy", textwrap.dedent(source), **kw)
        return {e.function: e for e in report.exercises}
    return grade


def feedback(ex) -> str:
    return " ".join([ex.message] + [t.feedback for t in ex.tests])


def with_norm(body: str) -> str:
    """RIGHT with its rms_norm replaced by ``body``."""
    start, end = RIGHT.index("def rms_norm"), RIGHT.index("class Norm")
    return RIGHT[:start] + textwrap.dedent(body).strip() + "\n\n" + RIGHT[end:]


def test_a_right_function_and_class_score_full_marks(toy):
    got = toy(RIGHT)
    for name in ("rms_norm", "make_norm", "fill", "total", "store", "draw", "scale"):
        assert got[name].passed, feedback(got[name])


def test_a_wrong_function_fails_with_the_named_feedback(toy):
    got = toy(with_norm('''
        def rms_norm(x, w, eps=1e-5):
            return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)      # forgets w
    '''))
    e2e = got["rms_norm"].tests[1]
    assert not e2e.passed and e2e.points == 0
    assert "the tiny Llama's logits with your rms_norm is off by" in e2e.feedback


def test_a_raising_function_is_named(toy):
    got = toy(with_norm('''
        def rms_norm(x, w, eps=1e-5):
            raise ValueError("my bug")
    '''))
    assert got["rms_norm"].score == 0
    assert "your `rms_norm` raised ValueError: my bug (cell 1, line" in feedback(got["rms_norm"])
    # the class's apply calls the same broken function: named through the handle's method
    assert "your `Norm.apply` raised ValueError: my bug" in feedback(got["make_norm"])


def test_an_infinite_loop_fails_within_the_time_limit_and_the_rest_is_graded(toy):
    got = toy(with_norm('''
        def rms_norm(x, w, eps=1e-5):
            while True:
                pass
    '''), time_limit=2)
    assert got["rms_norm"].score == 0
    assert "your `rms_norm` did not finish within the time limit (2 s)" in feedback(got["rms_norm"])
    assert got["fill"].passed, feedback(got["fill"])


def test_a_loop_that_ignores_the_interrupt_is_killed_and_the_next_test_gets_a_fresh_sandbox(toy):
    got = toy(with_norm('''
        import time
        def rms_norm(x, w, eps=1e-5):
            if x.shape[-1] != 16 or x.ndim == 2:
                return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w).astype(x.dtype)
            while True:
                try:
                    time.sleep(10)
                except BaseException:
                    pass
    '''), time_limit=2)
    ex = got["rms_norm"]
    assert ex.tests[0].passed                        # the 2-D unit test does not hang
    assert "your `rms_norm` did not finish within the time limit (2 s), even when interrupted" in ex.tests[1].feedback
    assert got["fill"].passed, feedback(got["fill"])


def test_a_function_that_kills_the_process_fails_and_later_tests_get_a_fresh_sandbox(toy):
    got = toy(with_norm('''
        import os
        def rms_norm(x, w, eps=1e-5):
            if x.ndim == 3:
                os._exit(3)
            return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w).astype(x.dtype)
    '''))
    assert got["rms_norm"].tests[0].passed
    assert "your `rms_norm` ended the grading process (exit code 3)" in got["rms_norm"].tests[1].feedback
    assert "ended the grading process" in feedback(got["make_norm"])     # it calls rms_norm on 3-D input too
    assert got["fill"].passed, feedback(got["fill"])


def test_a_stub_scores_zero_in_end_to_end_tests(toy):
    stub = RIGHT.replace("    buf[...] = value", "    raise NotImplementedError('implement fill')")
    got = toy(stub)
    assert got["fill"].score == 0
    assert "not implemented yet" in feedback(got["fill"])


def test_a_stub_scores_zero_even_when_the_check_swallows_the_failure(toy, tmp_path):
    (tmp_path / "checks" / "98_swallow.py").write_text(textwrap.dedent('''
        from tinyllm.grading.core import Exercise, Fail

        ex = Exercise("f", "a function")


        def _run(learner):
            try:
                learner.f(1)
            except Fail:
                pass


        ex.end_to_end("calls f", 1, _run)
        EXERCISES = [ex]
    '''))
    report = grade_source("98_swallow", "def f(x):\n    raise NotImplementedError('implement f')\n")
    assert report.score == 0 and "not implemented yet" in report.exercises[0].message
    report = grade_source("98_swallow", "def f(x):\n    return x\n")
    assert report.score == 1


def test_library_use_scores_zero_in_end_to_end_tests(toy):
    got = toy(RIGHT.replace("def fill(buf, value):\n", "def fill(buf, value):\n    import tinyllm\n"))
    assert got["fill"].score == 0
    assert "uses tinyllm" in feedback(got["fill"])
    # through a helper it calls at run time, hidden from the source check: refused by the sandbox
    sneaky = RIGHT.replace("def fill(buf, value):\n", "def fill(buf, value):\n    __import__('tiny' + 'llm')\n")
    got = toy(sneaky)
    assert got["fill"].score == 0 and "uses tinyllm" in feedback(got["fill"])


def test_implementations_map_end_to_end_calls_to_another_name(toy):
    source = RIGHT + '''
def rms_norm_no_w(x, w, eps=1e-5):
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)).astype(x.dtype)
'''
    report = grade_source("99_toy", source, implementations={"rms_norm": "rms_norm", "rms_norm_no_w": "rms_norm"})
    by = {e.function: e for e in report.exercises}
    assert by["rms_norm"].passed
    assert not by["rms_norm@rms_norm_no_w"].tests[1].passed


def test_learner_proxies_need_a_running_test_and_arguments_that_can_travel(tmp_path, monkeypatch):
    from tinyllm import kernels
    from tinyllm.grading.core import Exercise, Fail
    from tinyllm.models.llama import LlamaConfig

    monkeypatch.chdir(tmp_path)
    seen = {}

    def run(learner):
        seen["f"] = learner.f
        with pytest.raises(Fail, match="could not send the arguments"):
            learner.f(lambda: 0)
        with pytest.raises(Fail, match="rms_norm' is part of tinyllm"):
            learner.f(kernels.rms_norm)
        assert learner.f(np.zeros)((2,)).shape == (2,)    # NumPy's functions travel by name
        assert learner.f(LlamaConfig()).dim == 576         # a tinyllm object travels as its attributes

    ex = Exercise("f", "f")
    ex.end_to_end("e2e", 1, run)
    monkeypatch.setattr(runner, "load_exercises", lambda lesson: [ex])
    report = runner.grade_source("00_any", "def f(x):\n    return x\n")
    assert report.exercises[0].passed, report.exercises[0].tests[0].feedback
    with pytest.raises(Fail, match="only be called during an end-to-end test"):
        seen["f"](1)


def test_a_read_only_input_changed_in_place_fails_and_is_not_written_back(toy):
    got = toy(RIGHT.replace("    return a * f", "    a *= f\n    return a"))["scale"]
    assert not got.passed and "changed its input argument 1 in place" in feedback(got), feedback(got)
    got = toy(RIGHT.replace("    return a * f", "    big.setflags(write=True)\n    big[0, 0] = 5\n    return a * f"))
    assert not got["scale"].passed and "WRITEABLE" in feedback(got["scale"]), feedback(got["scale"])


def _session_replying(monkeypatch, inplace):
    """An EndToEndSession whose sandbox answers every call with ``inplace`` (what a forged reply could say)."""
    session = remote.EndToEndSession.__new__(remote.EndToEndSession)
    session.current = remote._TestRun(10.0, 1e18)

    def request(req, what, **kw):
        pickler = remote._ArgPickler(io.BytesIO(), session)
        session.sent_arrays = {}
        pickler.dump(req)
        return None, inplace, pickler.sent
    monkeypatch.setattr(session, "request", request)
    return session


def test_write_back_goes_only_into_the_writable_arrays_of_the_call(monkeypatch):
    big = np.zeros(8)
    view, other = big[:2], np.zeros(2)                    # view travels as its own data; big itself does not
    enc = runner_encode(np.ones(2))
    session = _session_replying(monkeypatch, [[[0], enc], [[0, ["a", "base"]], runner_encode(np.ones(8))],
                                              [["other"], enc]])
    session.call("f", None, (view,), {}, "your `f`")
    assert view.tolist() == [1, 1] and big[2:].tolist() == [0] * 6 and other.tolist() == [0, 0]
    frozen = np.zeros(2)
    frozen.setflags(write=False)
    session = _session_replying(monkeypatch, [[[1], enc], [[0], enc]])
    with pytest.raises(Fail, match="changed its input argument 2 in place"):
        session.call("f", None, (view := np.zeros(2), frozen), {}, "your `f`")
    assert frozen.tolist() == [0, 0] and view.tolist() == [0, 0]          # nothing written when one change fails


def runner_encode(a):
    from tinyllm.grading.sandbox import _encode
    return _encode(a)
