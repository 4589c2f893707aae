"""How many BLAS threads NumPy's matrix products use: the CPU's thread policy.

A decode step runs on :func:`decode_threads` threads, a longer input (prefill,
perplexity) on all of them. :func:`limit_blas_threads` applies a limit for a
block of code (``threadpoolctl``); GPU arrays are not affected.
"""
from __future__ import annotations

import contextlib
import os

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
