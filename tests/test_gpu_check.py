"""On a machine without a GPU, the GPU check script and benchmark say so and stop cleanly."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tinyllm import backend

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(backend.gpu_available(), reason="a GPU is usable: scripts/gpu_check.sh runs for real")


def _env():
    env = dict(os.environ, PYTHON=sys.executable)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_gpu_bench_exits_2_with_the_reason():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--quick"],
                         capture_output=True, text=True, env=_env(), timeout=120)
    assert out.returncode == 2
    assert "no usable GPU" in out.stderr and backend.gpu_problem() in out.stderr
    assert "cpu_threads.py" in out.stderr


def test_gpu_check_script_detects_no_gpu_and_runs_nothing():
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                         env=_env(), timeout=120)
    assert out.returncode == 2
    assert "no usable GPU on this machine" in out.stdout
    assert "nothing was run" in out.stdout
    assert "summary" not in out.stdout
