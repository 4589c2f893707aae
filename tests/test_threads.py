"""tinyllm.threads: the BLAS thread policy (decode steps on TINYLLM_DECODE_THREADS, prefill on all)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from tinyllm.errors import ConfigError
from tinyllm.models.llama import Llama, LlamaConfig
from tinyllm import threads
from tinyllm.threads import decode_threads, free_cores, limit_blas_threads


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


needs_blas = pytest.mark.skipif(not _blas_threads(), reason="threadpoolctl finds no BLAS behind NumPy")


@pytest.mark.parametrize("value, expected", [("1", 1), ("3", 3), ("0", 0), (" 2 ", 2)])
def test_decode_threads_reads_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("TINYLLM_DECODE_THREADS", value)
    assert decode_threads() == expected


@pytest.mark.parametrize("load, cores, expected", [(0.0, 2, 0), (0.4, 2, 0), (0.8, 2, 1), (7.5, 2, 1),
                                                   (3.2, 16, 13), (0.0, 1, 0), (2.0, 1, 0)])
def test_free_cores_leaves_the_busy_cores_to_the_other_jobs(load, cores, expected):
    assert free_cores(load, cores) == expected


def test_unset_decode_threads_uses_the_free_cores_once_per_process(monkeypatch):
    monkeypatch.delenv("TINYLLM_DECODE_THREADS", raising=False)
    monkeypatch.setattr(threads, "_AUTO_THREADS", None)
    monkeypatch.setattr(threads, "other_jobs", lambda: 7)
    busy = decode_threads()
    assert busy == free_cores(7)
    monkeypatch.setattr(threads, "other_jobs", lambda: 0)
    assert decode_threads() == busy                     # decided once: a step's own load does not flip it
    monkeypatch.setattr(threads, "_AUTO_THREADS", None)
    assert decode_threads() == 0                        # an idle machine: every core


def test_other_jobs_leaves_out_this_process_share(monkeypatch):
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (3.0, 2.0, 1.0))
    monkeypatch.setattr(threads, "_START", (threads.time.monotonic() - 10.0, threads.time.process_time() - 10.0))
    assert 2.0 <= threads.other_jobs() <= 2.1             # busy all along: one thread of the load is ours
    monkeypatch.setattr(threads, "_START", (threads.time.monotonic() - 100.0, threads.time.process_time()))
    assert 2.9 <= threads.other_jobs() <= 3.0             # idle all along: the load is the others'
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    monkeypatch.setattr(threads, "_START", (threads.time.monotonic() - 10.0, threads.time.process_time() - 10.0))
    assert threads.other_jobs() == 0.0


def test_decode_threads_rejects_a_non_integer(monkeypatch):
    monkeypatch.setenv("TINYLLM_DECODE_THREADS", "two")
    with pytest.raises(ConfigError, match="TINYLLM_DECODE_THREADS must be an integer, got 'two'"):
        decode_threads()


@needs_blas
def test_limit_blas_threads_limits_inside_and_restores_after():
    before = _blas_threads()
    with limit_blas_threads(1):
        assert set(_blas_threads()) == {1}
    assert _blas_threads() == before
    for n in (0, -1):                                   # no limit
        with limit_blas_threads(n):
            assert _blas_threads() == before


@needs_blas
def test_llama_decode_step_runs_on_decode_threads_and_prefill_on_all(monkeypatch):
    monkeypatch.setenv("TINYLLM_DECODE_THREADS", "1")
    cfg = LlamaConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, ffn_dim=24, context_length=16)
    model = Llama(cfg, rng=0)
    seen = []
    real = Llama._forward

    def spy(self, *args, **kwargs):
        seen.append(_blas_threads())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Llama, "_forward", spy)
    all_threads = _blas_threads()
    cache = model.new_cache(1, 8)
    model.forward(np.array([[1, 2, 3]]), cache=cache)   # prefill: a matrix product, every thread
    model.forward(np.array([[4]]), cache=cache)         # decode step: matrix-vector products, one thread
    assert seen == [all_threads, [1] * len(all_threads)]


def test_the_model_does_not_import_the_generation_module():
    code = "import sys, tinyllm.models.llama; print('tinyllm.generate' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
