"""Property-based fuzzing of every file reader (hypothesis drives the mutations of scripts/fuzz_readers.py).

Each example mutates a file made by the project's own writer (bit flips, byte insertions and
deletions, truncation, edits of the JSON inside with wrong types, deep nesting and huge numbers,
extreme integer fields in GGUF) and asserts that the reader either raises the project's own error
and changes nothing, or loads exactly what the reference reads: the ``safetensors`` package, the
``gguf`` package, the original tensors, or the file's JSON. A bounded number of examples runs here;
``python scripts/fuzz_readers.py --n 10000`` is the long run.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("safetensors")
pytest.importorskip("gguf")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.reference

_spec = importlib.util.spec_from_file_location("fuzz_readers", Path(__file__).parents[1] / "scripts" / "fuzz_readers.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

EXAMPLES = 200  # per format
ALLOWED_STRICTER = {"dtype we do not support", "entry with extra keys", "duplicate JSON key", "lone surrogate"}


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    return {name: cls(tmp_path_factory.mktemp(name)) for name, cls in fuzz.FORMATS.items()}


@pytest.mark.parametrize("name", list(fuzz.FORMATS))
def test_base_file_loads(formats, name):
    fmt = formats[name]
    assert fmt.check(fmt.base) == "loaded"


@pytest.mark.parametrize("name", list(fuzz.FORMATS))
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_files_load_exactly_or_fail_cleanly(formats, name, data):
    fmt = formats[name]
    mutated = fmt.mutate(lambda k: data.draw(st.integers(0, k - 1)))
    outcome = fmt.check(mutated)
    if outcome.startswith("stricter: "):  # we refuse what the safetensors package reads: only for these reasons
        assert outcome[len("stricter: "):] in ALLOWED_STRICTER, outcome
    else:
        assert outcome in ("loaded", "rejected"), outcome
