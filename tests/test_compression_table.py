"""The table that lesson 11 shows (benchmarks/results/compression_quality.md) is what the
benchmark measures: a fresh quick run reproduces its fp32 and round-to-nearest rows."""
from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compression_quality", ROOT / "benchmarks" / "compression_quality.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
ROWS = ("fp32", "RTN 4-bit asym g64")


def _by_method(text: str) -> dict[str, dict[str, str]]:
    return {r["method"]: r for r in bench.parse_table(text)}


def test_saved_table_names_its_command_and_has_every_method():
    text = bench.RESULTS.read_text(encoding="utf-8")
    assert "`python benchmarks/compression_quality.py" in text.splitlines()[0]
    rows = _by_method(text)
    for name in (*ROWS, "naive W8A8", "SmoothQuant W8A8 a=0.5", "GPTQ sequential", "GPTQ (old: float inputs)",
                 "AWQ (RTN after scaling)"):
        assert name in rows, f"the saved table lacks the row {name!r}"
    assert list(rows["fp32"]) == bench.COLUMNS


@pytest.mark.slow
def test_saved_rows_match_a_fresh_quick_run():
    from tinyllm.models.smollm2 import ModelNotInstalledError

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            bench.main(["--quick", "--only", ",".join(ROWS)])
    except ModelNotInstalledError as exc:  # pragma: no cover - CI installs it
        pytest.skip(str(exc))
    fresh, saved = _by_method(out.getvalue()), _by_method(bench.RESULTS.read_text(encoding="utf-8"))
    for name in ROWS:
        for col in ("docs ppl", "story ppl"):
            assert float(fresh[name][col]) == pytest.approx(float(saved[name][col]), abs=0.015), (name, col)
        assert fresh[name]["choice acc"] == saved[name]["choice acc"]
        assert fresh[name]["MB"] == saved[name]["MB"]
