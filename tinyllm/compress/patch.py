"""Stand-ins for a weight array inside ``x @ W``: record inputs, or keep W compressed.

Inference code such as :class:`tinyllm.models.llama.Llama` multiplies
activations by weight arrays (``h @ blk.wqkv.data``). An object that defines
NumPy's ``__array_ufunc__`` hook can take the place of such an array: NumPy hands
it ``np.matmul(h, obj)`` and the object decides what to compute. That gives two
tools without touching the model's code:

* :class:`InputRecorder` remembers the inputs ``h`` a weight sees (calibration
  activations for GPTQ, activation statistics for pruning), then multiplies as usual;
* :class:`QuantizedWeight` keeps ``W`` as integer codes plus scales (a
  :class:`~tinyllm.compress.quantize.QuantizedLinear`) and dequantises on the fly,
  so the model really holds 4 or 8 bits a weight between calls.

:func:`replace_weights` swaps such objects into a model and returns the
originals so they can be put back (:func:`restore_weights`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from tinyllm.compress.quantize import QuantizedLinear
from tinyllm.models.llama import BLOCK_MATRICES


class MatmulWeight:
    """Base class: stands for an ``(IN, OUT)`` weight in ``x @ W`` (NumPy only)."""

    shape: tuple[int, int]

    def rmatmul(self, x: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc is np.matmul and method == "__call__" and len(inputs) == 2 and inputs[1] is self and not kwargs:
            return self.rmatmul(inputs[0])
        return NotImplemented

    def __rmatmul__(self, x: Any) -> Any:
        return self.rmatmul(x)


class InputRecorder(MatmulWeight):
    """Wraps a weight ``w (IN, OUT)``; each ``x @ recorder`` records ``x``, then returns ``x @ w``.

    ``keep_inputs=True`` stores the rows ``(N, IN)``; ``False`` keeps only running
    statistics, enough for GPTQ, AWQ, SmoothQuant and importance scores: ``xtx`` (the sum
    of ``x^T x``, float64 ``(IN, IN)``), ``abs_sum`` (sum of ``|x|`` per input), ``abs_max``
    (largest ``|x|`` per input) and ``rows``.
    """

    def __init__(self, w: Any, keep_inputs: bool = True):
        self.w = w
        self.shape = tuple(w.shape)
        self.dtype = w.dtype
        self.keep_inputs = keep_inputs
        self.inputs: list[Any] = []
        self.rows = 0
        self.xtx = np.zeros((w.shape[0], w.shape[0]))                       # (IN, IN)
        self.abs_sum = np.zeros(w.shape[0])                                 # (IN,)
        self.abs_max = np.zeros(w.shape[0], dtype=np.float32)               # (IN,)

    def rmatmul(self, x: Any) -> Any:
        rows = x.reshape(-1, x.shape[-1])                                   # (N, IN)
        if self.keep_inputs:
            self.inputs.append(rows.copy())
        r32 = rows.astype(np.float32)                                       # float32 BLAS, float64 running sums
        self.xtx += r32.T @ r32
        a = np.abs(r32)                                                     # (N, IN)
        self.abs_sum += a.sum(axis=0, dtype=np.float64)
        np.maximum(self.abs_max, a.max(axis=0), out=self.abs_max)
        self.rows += rows.shape[0]
        return x @ self.w

    def hessian(self) -> Any:
        """GPTQ's ``H = 2/N X^T X`` from everything recorded, ``(IN, IN)``."""
        if self.rows == 0:
            raise ValueError("nothing recorded yet: run the model on calibration data first")
        return (2.0 / self.rows) * self.xtx

    def stacked(self) -> Any:
        """All recorded inputs, ``(N, IN)``."""
        return np.concatenate(self.inputs, axis=0)


class QuantizedWeight(MatmulWeight):
    """A quantised ``(IN, OUT)`` weight that dequantises inside ``x @ W`` (see QuantizedLinear's docstring)."""

    def __init__(self, layer: QuantizedLinear):
        self.layer = layer
        self.shape = (layer.in_features, layer.out_features)
        self.dtype = np.dtype(np.float32)

    @property
    def nbytes(self) -> int:
        return self.layer.nbytes

    def rmatmul(self, x: Any) -> Any:
        return self.layer.forward(x)


def linear_weights(model: Any, kinds: Iterable[str] = BLOCK_MATRICES) -> list[tuple[Any, str]]:
    """``(holder, attribute)`` of each block weight of a Llama-like model (``model.blocks[i].<kind>``)."""
    return [(blk, k) for blk in model.blocks for k in kinds]


def replace_weights(targets: list[tuple[Any, str]], make: Callable[[Any], Any]) -> list[Any]:
    """Set ``holder.<attr>.data = make(old)`` for each target; returns the old arrays."""
    old = []
    for holder, attr in targets:
        p = getattr(holder, attr)
        old.append(p.data)
        p.data = make(p.data)
    return old


def restore_weights(targets: list[tuple[Any, str]], old: list[Any]) -> None:
    """Undo :func:`replace_weights`."""
    for (holder, attr), w in zip(targets, old):
        getattr(holder, attr).data = w
