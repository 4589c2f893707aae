"""How many BLAS threads NumPy's matrix products use: the CPU's thread policy.

A decode step runs on :func:`decode_threads` threads (by default the cores that other
jobs leave free), a longer input (prefill, perplexity) on all of them.
:func:`limit_blas_threads` applies a limit for a block of code (``threadpoolctl``); GPU
arrays are not affected. :func:`map_rows` runs large elementwise work (which NumPy does on
one thread) in row blocks on as many threads as BLAS may use.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
import time

import numpy as np

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


def _controller():
    """threadpoolctl's controller of the libraries behind NumPy (found once per process), or None
    without threadpoolctl."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS_CONTROLLER = ThreadpoolController()
        except Exception:  # noqa: BLE001 - no threadpoolctl: threads stay as they are
            _BLAS_CONTROLLER = False
    return _BLAS_CONTROLLER or None


def limit_blas_threads(n: int):
    """A context manager limiting BLAS to ``n`` threads (``n <= 0``: no limit).

        with limit_blas_threads(decode_threads()):
            logits = model.forward(ids, cache=cache)
    """
    if n <= 0 or _controller() is None:
        return contextlib.nullcontext()
    try:
        return _controller().limit(limits=n, user_api="blas")
    except Exception:  # noqa: BLE001 - no BLAS found: run as is
        return contextlib.nullcontext()


# ---- elementwise work on the other cores ------------------------------------------------------------------
# NumPy runs a ufunc or a reduction on one thread, whatever the BLAS setting, but releases the GIL
# inside its loops. So row blocks of a large elementwise computation (GELU, LayerNorm, softmax, AdamW)
# can run on a few Python threads at once. Blocks also keep each operand and temporary in the L2
# cache (~64K float32 = 256 KB), which makes a chain of in-place ufuncs faster even on one thread.
ROW_BLOCK_ELEMENTS = 1 << 16   # elements per row block (rounded to whole rows)
INLINE_ELEMENTS = 1 << 15      # smaller arrays: one call on the calling thread

_ROWS = {"queue": queue.SimpleQueue(), "workers": 0}
_IN_WORKER = threading.local()


def _blas_libraries() -> list:
    """threadpoolctl's controllers of the BLAS libraries behind NumPy (none without threadpoolctl)."""
    c = _controller()
    return [lib for lib in c.lib_controllers if lib.user_api == "blas"] if c is not None else []


def compute_threads() -> int:
    """Threads for elementwise work: the current BLAS limit (``threadpool_limits(1)`` means 1), else 1."""
    return max([1] + [lib.num_threads for lib in _blas_libraries()])


def _start_workers(workers: int):
    """The queue that ``workers`` daemon threads take jobs from (started on first need, kept for the process)."""
    while _ROWS["workers"] < workers:
        threading.Thread(target=_worker, args=(_ROWS["queue"],), name=f"tinyllm-rows-{_ROWS['workers']}",
                         daemon=True).start()
        _ROWS["workers"] += 1
    return _ROWS["queue"]


def _worker(jobs) -> None:
    while True:
        jobs.get().work()


def _forget_workers() -> None:  # a forked child has the queue object but not the threads
    _ROWS["queue"], _ROWS["workers"] = queue.SimpleQueue(), 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


class _Blocks:
    """One :func:`map_rows` call: its blocks, handed out one at a time to whichever thread asks first."""

    def __init__(self, fn, arrays, blocks):
        self.fn, self.arrays, self.blocks = fn, arrays, blocks
        self.claim, self.finish = itertools.count(), itertools.count(1)   # next() is atomic under the GIL
        self.error = None
        self.all_done = threading.Event()

    def work(self) -> None:
        """Run blocks until none is left (a thread that starts late finds none and returns)."""
        _IN_WORKER.active = True
        try:
            for i in self.claim:
                if i >= len(self.blocks):
                    return
                lo, hi = self.blocks[i]
                try:
                    if self.error is None:
                        self.fn(*[a[lo:hi] for a in self.arrays])
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    self.error = exc
                finally:
                    if next(self.finish) == len(self.blocks):
                        self.all_done.set()
        finally:
            _IN_WORKER.active = False


def as_rows(a):
    """``a`` (..., C) as rows (N, C) for :func:`map_rows`: a view of a contiguous array; 0-d and 1-d: one row."""
    return a.reshape(-1, a.shape[-1]) if a.ndim >= 2 else a.reshape(1, -1)


def map_rows(fn, *arrays, threads: int | None = None, one_blas_thread: bool = False,
             block_elements: int = ROW_BLOCK_ELEMENTS) -> None:
    """Call ``fn(*blocks)`` on row blocks of ``arrays`` (all with the same first axis), on
    :func:`compute_threads` threads; ``fn`` writes its results into blocks of output arrays among them.

    Only the first axis is split, so a computation that is elementwise or reduces along other axes
    gives the same bits as ``fn(*arrays)``. Small arrays, GPU arrays and calls from inside a block
    run as that one call. ``one_blas_thread``: the blocks hold matrix products (a batch of small
    ones, as in attention), which then run side by side on one BLAS thread each (a matrix product
    does not split its sums across threads, so the bits stay the same). ``block_elements``: the
    elements of the largest array in one block (``arrays[0].size``: one block per thread).

        def gelu_rows(x, y):                       # (n, F) blocks of x and of the output y
            np.tanh(x, out=y)
        map_rows(gelu_rows, x2, y2)
    """
    rows = arrays[0].shape[0]
    size = max(a.size for a in arrays)
    if (size < INLINE_ELEMENTS or rows < 2 or getattr(_IN_WORKER, "active", False)
            or not all(type(a) is np.ndarray for a in arrays)):
        fn(*arrays)
        return
    if any(a.shape[0] != rows for a in arrays):
        raise ValueError(f"map_rows splits the first axis of every array, so they need the same first axis; got "
                         f"shapes {[tuple(a.shape) for a in arrays]}: pass (N, C) views such as as_rows(a)")
    n = max(1, compute_threads() if threads is None else int(threads))
    per_row = max(1, size // rows)
    step = max(1, min(block_elements // per_row, -(-rows // n)))  # rows per block, >= 1 block per thread
    if n == 1:                                                     # the blocks in order, on this thread
        for lo in range(0, rows, step):
            fn(*[a[lo:lo + step] for a in arrays])
        return
    job = _Blocks(fn, arrays, [(lo, min(lo + step, rows)) for lo in range(0, rows, step)])
    n = min(n, len(job.blocks))
    if n == 1:
        job.work()
    else:
        libs = _blas_libraries() if one_blas_thread else []
        saved = [lib.num_threads for lib in libs]
        try:
            for lib in libs:
                lib.set_num_threads(1)
            jobs = _start_workers(n - 1)
            for _ in range(n - 1):
                jobs.put(job)
            job.work()                  # this thread works too; if the others get no CPU, it does every block
            job.all_done.wait()         # never return while a block still writes
        finally:
            for lib, value in zip(libs, saved):
                lib.set_num_threads(value)
    if job.error is not None:
        raise job.error
