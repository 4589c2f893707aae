"""Data-parallel training on an existing distributed engine: MPI (mpi4py) or NCCL (CuPy).

Data parallelism (e.g. Li et al., 2020, "PyTorch Distributed") keeps a full copy of
the model on every rank. Each rank computes gradients on its own slice of the
global batch, then all ranks *all-reduce* the gradients (sum, then divide by the
number of ranks) so every copy takes the identical optimiser step:

    g = (1/R) * sum_r g_r      where g_r = grad of the mean loss over rank r's slice

With equal slice sizes this is exactly the gradient of the mean loss over the
global batch, so R ranks training on B/R examples each follow the same path as one
process training on B examples (up to floating-point summation order).

Launch with ``mpirun -n 2 python scripts/train_data_parallel.py`` (see that script).
The communicator is never created at import time, so importing this module costs
nothing and works without MPI installed. :func:`ring_allreduce` simulates, in one
process, the ring algorithm that NCCL and MPI libraries use for large buffers, and
counts what it sends.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from tinyllm import plug
from tinyllm.backend import get_array_module, is_gpu_array
from tinyllm.nn.module import Parameter


def _mpi():
    try:
        from mpi4py import MPI  # noqa: PLC0415 - lazy: MPI is an optional extra
    except ImportError as exc:
        raise ImportError(
            "data-parallel training needs mpi4py and an MPI library: pip install mpi4py mpich"
        ) from exc
    return MPI


class DataParallel:
    """All-reduce gradients and broadcast parameters across ranks.

    ``backend="mpi"`` uses mpi4py (CPU arrays; GPU arrays are staged through the host).
    ``backend="nccl"`` uses NCCL through CuPy for GPU arrays, one GPU per rank; the
    NCCL id is shared over MPI, which still launches the processes.
    """

    def __init__(self, comm: Any = None, backend: str = "mpi"):
        if backend not in ("mpi", "nccl"):
            raise ValueError(f"backend must be 'mpi' or 'nccl', got {backend!r}")
        self.comm = comm if comm is not None else _mpi().COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.world_size = self.comm.Get_size()
        self.backend = backend
        self._nccl = None
        if backend == "nccl":
            import cupy  # noqa: PLC0415
            from cupy.cuda import nccl  # noqa: PLC0415

            cupy.cuda.Device(self.rank % cupy.cuda.runtime.getDeviceCount()).use()
            uid = nccl.get_unique_id() if self.rank == 0 else None
            uid = self.comm.bcast(uid, root=0)
            self._nccl = nccl.NcclCommunicator(self.world_size, uid, self.rank)

    def shard(self, n: int) -> slice:
        """This rank's contiguous slice of ``n`` examples; ``n`` must divide evenly."""
        if n % self.world_size:
            raise ValueError(f"global batch {n} does not split evenly over {self.world_size} ranks")
        per = n // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def broadcast_parameters(self, params: Sequence[Parameter], root: int = 0) -> None:
        """Make every rank start from rank ``root``'s parameters."""
        for p in params:
            host = _to_host(p.data)
            self.comm.Bcast(host, root=root)
            if host is not p.data:  # a GPU array, or a host copy that was made for contiguity
                p.data[...] = get_array_module(p.data).asarray(host)

    def allreduce_gradients(self, params: Iterable[Parameter]) -> None:
        """Replace each gradient by its mean over all ranks (one flat buffer, one collective)."""
        params = list(params)
        if not params or self.world_size == 1:
            return
        xp = get_array_module(params[0].grad)
        flat = xp.concatenate([p.grad.ravel() for p in params])      # (P,) all gradients in one buffer
        if self._nccl is not None:
            import cupy  # noqa: PLC0415
            from cupy.cuda import nccl  # noqa: PLC0415

            dtype = {np.float32: nccl.NCCL_FLOAT32, np.float64: nccl.NCCL_FLOAT64}[flat.dtype.type]
            self._nccl.allReduce(flat.data.ptr, flat.data.ptr, flat.size, dtype, nccl.NCCL_SUM,
                                 cupy.cuda.Stream.null.ptr)
        else:
            host = _to_host(flat)
            self.comm.Allreduce(_mpi().IN_PLACE, host, op=_mpi().SUM)
            flat = xp.asarray(host)
        flat /= self.world_size
        offset = 0
        for p in params:
            p.grad[...] = flat[offset:offset + p.grad.size].reshape(p.grad.shape)
            offset += p.grad.size


@plug.point("ring_allreduce")
def ring_allreduce(buffers):
    """Ring all-reduce (Patarasuk & Yuan, 2009) over R simulated ranks; row r of ``buffers`` (R, N) is rank r's.

    The N numbers are cut into R chunks as ``np.array_split`` does (the first N mod R chunks are one
    longer). In every step each rank r sends one chunk to rank (r + 1) mod R, all ranks at once:

    - reduce-scatter, steps s = 0 .. R-2: rank r sends chunk (r - s) mod R and the receiver adds it to
      its own copy; afterwards rank r holds the complete sum of chunk (r + 1) mod R;
    - all-gather, steps s = 0 .. R-2: rank r sends chunk (r + 1 - s) mod R and the receiver overwrites
      its copy with it.

    Returns ``(out, steps, bytes_sent)``: ``out`` (R, N), the sum on every rank, in the input's dtype
    and array module; ``steps`` = 2 (R - 1); ``bytes_sent`` (R,) int64, what each rank sent: every
    chunk but one in each phase, 2 (R - 1) N / R numbers when R divides N."""
    xp = get_array_module(buffers)
    buf = xp.array(buffers, copy=True)                                   # (R, N), the ranks' own copies
    if buf.ndim != 2 or buf.shape[0] < 1:
        raise ValueError(f"buffers must have shape (R, N) with R >= 1 ranks, got {tuple(buf.shape)}")
    R, N = buf.shape
    size, extra = divmod(N, R)
    edges = [c * size + min(c, extra) for c in range(R + 1)]             # chunk c is [edges[c], edges[c+1])
    sent = np.zeros(R, dtype=np.int64)
    for phase in ("reduce-scatter", "all-gather"):
        for s in range(R - 1):
            chunks = [(r - s) % R if phase == "reduce-scatter" else (r + 1 - s) % R for r in range(R)]
            msgs = [buf[r, edges[c]:edges[c + 1]].copy() for r, c in enumerate(chunks)]   # all sent at once
            for r, (c, msg) in enumerate(zip(chunks, msgs)):
                dst = buf[(r + 1) % R, edges[c]:edges[c + 1]]
                if phase == "reduce-scatter":
                    dst += msg
                else:
                    dst[...] = msg
                sent[r] += msg.nbytes
    return buf, 2 * (R - 1), sent


def _to_host(x: Any) -> np.ndarray:
    return np.ascontiguousarray(x.get() if is_gpu_array(x) else x)
