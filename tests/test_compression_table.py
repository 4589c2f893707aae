"""The table that lesson 11 shows (benchmarks/results/compression_quality.md) is what the
benchmark measures: a fresh quick run reproduces its fp32 and round-to-nearest rows."""
from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAVED = ROOT / "benchmarks" / "results" / "compression_quality.md"
ROWS = ("fp32", "RTN 4-bit asym g64")


def parse(text: str) -> dict[str, dict[str, str]]:
    """Rows of a markdown table made by tinyllm.evaluate.format_table, keyed by their first column."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:])}


def test_saved_table_names_its_command_and_has_every_method():
    text = SAVED.read_text(encoding="utf-8")
    assert "`python benchmarks/compression_quality.py" in text.splitlines()[0]
    rows = parse(text)
    for name in (*ROWS, "naive W8A8", "SmoothQuant W8A8 a=0.5"):
        assert name in rows, f"the saved table lacks the row {name!r}"


@pytest.mark.slow
def test_saved_rows_match_a_fresh_quick_run():
    from tinyllm.models.smollm2 import ModelNotInstalledError

    try:
        spec = importlib.util.spec_from_file_location("compression_quality", ROOT / "benchmarks" / "compression_quality.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            bench.main(["--quick", "--only", ROWS[1]])
    except ModelNotInstalledError as exc:  # pragma: no cover - CI installs it
        pytest.skip(str(exc))
    fresh, saved = parse(out.getvalue()), parse(SAVED.read_text(encoding="utf-8"))
    for name in ROWS:
        for col in ("docs ppl", "story ppl"):
            assert float(fresh[name][col]) == pytest.approx(float(saved[name][col]), abs=0.015), (name, col)
        assert fresh[name]["accuracy"] == saved[name]["accuracy"]
        assert fresh[name]["MB"] == saved[name]["MB"]
