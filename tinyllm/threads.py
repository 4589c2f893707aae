"""How many BLAS threads NumPy's matrix products use: the CPU's thread policy.

A decode step runs on :func:`decode_threads` threads, a longer input (prefill,
perplexity) on all of them. :func:`limit_blas_threads` applies a limit for a
block of code (``threadpoolctl``); GPU arrays are not affected. :func:`map_rows` runs large
elementwise work (which NumPy does on one thread) in row blocks on as many threads as BLAS may use.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading

import numpy as np

from tinyllm.errors import ConfigError

_BLAS_CONTROLLER = None


def decode_threads() -> int:
    """BLAS threads for a decode step: ``TINYLLM_DECODE_THREADS`` (default 1; 0 = no limit).

    A decode step is ~120 small matrix-vector products (2-7 MB each). Waking a
    second OpenBLAS thread for each costs more than it gains as soon as the
    CPU is shared: measured on the course's 2-core machine with other jobs
    running, 17 tokens/s with one thread against 2-3 with two. Prefill is a
    matrix product and keeps all threads (1.6 s against 2.7 s for a 376-token
    perplexity with two threads against one on the idle machine)."""
    value = os.environ.get("TINYLLM_DECODE_THREADS", "1")
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"TINYLLM_DECODE_THREADS must be an integer, got {value!r}: set it to a number of "
                          "threads such as 1, or unset it") from None
    return n


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


# ---- elementwise work on the other cores ------------------------------------------------------------------
# NumPy runs a ufunc or a reduction on one thread, whatever the BLAS setting, but releases the GIL
# inside its loops. So row blocks of a large elementwise computation (GELU, LayerNorm, softmax, AdamW)
# can run on a few Python threads at once. Blocks also keep each operand and temporary in the L2
# cache (~64K float32 = 256 KB), which makes a chain of in-place ufuncs faster even on one thread.
ROW_BLOCK_ELEMENTS = 1 << 16   # elements per row block (rounded to whole rows)
INLINE_ELEMENTS = 1 << 15      # smaller arrays: one call on the calling thread

_ROWS = {"controller": None, "queue": queue.SimpleQueue(), "workers": 0}
_IN_WORKER = threading.local()


def _blas_libraries() -> list:
    """threadpoolctl's controllers of the BLAS libraries behind NumPy (found once; none without threadpoolctl)."""
    if _ROWS["controller"] is None:
        try:
            from threadpoolctl import ThreadpoolController

            _ROWS["controller"] = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
        except Exception:  # noqa: BLE001 - no threadpoolctl: one thread
            _ROWS["controller"] = []
    return _ROWS["controller"]


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
