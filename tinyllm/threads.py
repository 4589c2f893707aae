"""How many BLAS threads NumPy's matrix products use: the CPU's thread policy.

A decode step runs on :func:`decode_threads` threads (by default the cores that other
jobs leave free), a longer input (prefill, perplexity) on all of them.
:func:`limit_blas_threads` applies a limit for a block of code (``threadpoolctl``); GPU
arrays are not affected.
"""
from __future__ import annotations

import contextlib
import os
import time

from tinyllm.errors import ConfigError

_BLAS_CONTROLLER = None
_START = (time.monotonic(), time.process_time())   # for other_jobs(): this process's own share
_AUTO_THREADS = None       # decode_threads()'s choice when TINYLLM_DECODE_THREADS is unset


def decode_threads() -> int:
    """BLAS threads for a decode step: ``TINYLLM_DECODE_THREADS`` if set (0 = no limit: every core),
    else :func:`free_cores` when first asked (decided once per process).

    A decode step is ~120 matrix-vector products (1-113 MB each), bound by memory bandwidth.
    On an idle 2-core machine every core wins (24.2 tok/s on one thread, 37.3 on two,
    ``benchmarks/decode_speed.py``), but when other jobs keep the cores busy a second OpenBLAS
    thread waits for a core the scheduler has given away (17 tok/s on one thread against 2-3 on
    two, on the course's shared machine). So by default a step uses the cores that other jobs
    leave free (:func:`other_jobs`). Prefill is a matrix product and keeps all threads (1.6 s
    against 2.7 s for a 376-token perplexity with two threads against one on the idle machine)."""
    value = os.environ.get("TINYLLM_DECODE_THREADS")
    if value is None:
        global _AUTO_THREADS
        if _AUTO_THREADS is None:
            _AUTO_THREADS = free_cores()
        return _AUTO_THREADS
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"TINYLLM_DECODE_THREADS must be an integer, got {value!r}: set it to a number of "
                          "threads such as 1, 0 for every core, or unset it") from None
    return n


def free_cores(load: float | None = None, cores: int | None = None) -> int:
    """The cores of ``cores`` (default: this process's) that ``load`` other jobs leave free; 0 (no
    limit) when that is every core, at least 1. ``load`` defaults to :func:`other_jobs`."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is None:
        load = other_jobs()
    free = max(1, cores - round(load))
    return 0 if free >= cores else free


def other_jobs() -> float:
    """About how many threads besides this process keep the CPU busy: the 1-minute load average
    less this process's own share (its CPU time over the wall time since tinyllm.threads was
    imported, at most one thread). 0 where there is no load average (Windows).

    Linux's count of runnable threads (``/proc/loadavg``) would leave this process out exactly,
    but in a container it counts only the container's threads, and misses the other jobs."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    wall = time.monotonic() - _START[0]
    own = min(1.0, (time.process_time() - _START[1]) / wall) if wall > 1.0 else 0.0
    return max(0.0, load - own)


def limit_blas_threads(n: int):
    """A context manager limiting BLAS to ``n`` threads (``n <= 0``: no limit).

        with limit_blas_threads(decode_threads()):
            logits = model.forward(ids, cache=cache)
    """
    global _BLAS_CONTROLLER
    if n <= 0:
        return contextlib.nullcontext()
    try:
        if _BLAS_CONTROLLER is None:
            from threadpoolctl import ThreadpoolController

            _BLAS_CONTROLLER = ThreadpoolController()
        return _BLAS_CONTROLLER.limit(limits=n, user_api="blas")
    except Exception:  # noqa: BLE001 - no threadpoolctl or no BLAS found: run as is
        return contextlib.nullcontext()
