"""Lesson 06's atomic save, graded alone (one learner per sandbox, as in real grading): a save that empties the
target before it can fail loses the end-to-end point (its old file no longer loads); an atomic one keeps it."""
from __future__ import annotations

import json
from pathlib import Path

from tinyllm.grading.runner import grade_source

ROOT = Path(__file__).resolve().parents[1]


def _solution_source() -> str:
    nb = json.loads((ROOT / "solutions" / "06_parameter_storage.ipynb").read_text())
    return "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"
                       and c["metadata"]["nbgrader"]["grade_id"] in ("setup", "safetensors_bytes", "load_safetensors"))


TRUNCATING = '''
def save_safetensors(tensors, path, metadata=None):
    with open(path, "wb") as f:                    # empties the old file before anything can fail
        f.write(safetensors_bytes(tensors, metadata).tobytes())
'''
ATOMIC = '''
def save_safetensors(tensors, path, metadata=None):
    tmp = path + ".partial"
    try:
        with open(tmp, "wb") as f:
            f.write(safetensors_bytes(tensors, metadata).tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
'''


def _save_result(body: str):
    report = grade_source("06_parameter_storage", _solution_source() + "\n" + body, time_limit=20)
    assert report.error is None
    return next(e for e in report.exercises if e.function.endswith("save_safetensors"))


def test_a_save_that_empties_the_old_file_first_loses_the_point():
    ex = _save_result(TRUNCATING)
    text = " ".join([ex.message] + [t.feedback for t in ex.tests])
    assert ex.score < ex.max_score and "load_safetensors` raised ValueError: 0 bytes" in text, text


def test_an_atomic_save_written_another_way_keeps_full_marks():
    ex = _save_result(ATOMIC)
    assert ex.score == ex.max_score, [t.feedback for t in ex.tests]
