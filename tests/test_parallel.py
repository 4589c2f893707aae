"""Data-parallel training over 2 MPI ranks equals one process on the global batch."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_data_parallel.py"


def _mpiexec() -> str | None:
    pytest.importorskip("mpi4py")
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def test_two_ranks_match_one_process_on_the_global_batch(tmp_path):
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec found (pip install mpich)")
    single, parallel = tmp_path / "single.npz", tmp_path / "dp.npz"
    args = [str(SCRIPT), "--steps", "15", "--global-batch", "32"]
    subprocess.run([sys.executable, *args, "--single", "--out", str(single)], check=True, env=_env(), timeout=120)
    subprocess.run([mpiexec, "-n", "2", sys.executable, *args, "--out", str(parallel)],
                   check=True, env=_env(), timeout=180)
    a, b = np.load(single), np.load(parallel)
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-10, atol=1e-12, err_msg=name)
    # training really moved the parameters, so the comparison is not of two untouched initialisations
    start = tmp_path / "start.npz"
    subprocess.run([sys.executable, str(SCRIPT), "--steps", "0", "--single", "--out", str(start)],
                   check=True, env=_env(), timeout=120)
    s = np.load(start)
    assert max(float(np.abs(a[n] - s[n]).max()) for n in a.files) > 1e-2


def test_shard_rejects_uneven_batches():
    pytest.importorskip("mpi4py")
    from tinyllm.parallel import DataParallel

    class FakeComm:
        def Get_rank(self):
            return 1

        def Get_size(self):
            return 2

    dp = DataParallel(comm=FakeComm())
    assert dp.shard(8) == slice(4, 8)
    with pytest.raises(ValueError, match="does not split evenly"):
        dp.shard(7)
