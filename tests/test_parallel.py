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


@pytest.mark.parametrize("R,N", [(1, 5), (2, 6), (3, 7), (4, 10), (5, 3), (8, 64)])
def test_ring_allreduce_sums_exactly_in_2_r_minus_1_steps_and_counts_the_bytes(R, N):
    from tinyllm.parallel import ring_allreduce

    g = np.random.default_rng(R * N).integers(-99, 99, (R, N)).astype(np.float32)   # integers: exact in any order
    before = g.copy()
    out, steps, sent = ring_allreduce(g)
    assert out.dtype == np.float32 and np.array_equal(out, np.broadcast_to(g.sum(axis=0), g.shape))
    assert np.array_equal(g, before) and steps == 2 * (R - 1)
    sizes = [len(c) for c in np.array_split(np.arange(N), R)]
    assert sent.tolist() == [4 * (2 * N - sizes[(r + 1) % R] - sizes[(r + 2) % R]) if R > 1 else 0 for r in range(R)]
    assert sent.sum() == 2 * (R - 1) * N * 4                         # every chunk travels R - 1 hops, twice
    if N % R == 0:
        assert (sent == 2 * (R - 1) * N // R * 4).all()              # the lesson's 2 (R-1)/R N numbers per rank
