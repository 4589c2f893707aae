"""The legend of shape letters used in comments and docstrings across tinyllm.

Every array in the library carries its shape in a comment, e.g. ``# (B, T, C)``.
The letters always mean:

====  =====================================================================
B     batch size (number of sequences processed together)
T     sequence length (time steps / token positions) of the current input
S     length of the keys/values attended to (cached positions + T)
S_max positions a preallocated KV cache holds (``max_len``)
L     number of transformer blocks (layers)
C     model width (embedding / residual-stream channels), ``d_model``
H     number of attention (query) heads
KV    number of key/value heads (grouped-query attention: H % KV == 0)
D     head dimension, ``C // H`` in GPT, ``head_dim`` in Llama
F     hidden width of the MLP (feed-forward) block
V     vocabulary size
N     number of rows of a flattened batch (``B * T``), or of a data set
IN    input features of a Linear layer
OUT   output features of a Linear layer
G     number of quantisation groups / blocks along a row; in attention code,
      query heads per key/value head (``H // KV``), as the docstring says
====  =====================================================================

Weights follow the math, ``y = x @ W + b`` with ``W`` of shape ``(IN, OUT)``,
unless a docstring says otherwise (GGUF and PyTorch store ``(OUT, IN)``).
"""
from __future__ import annotations

import operator
from typing import Sequence

import numpy as np


def as_shape(shape: Sequence[int] | int) -> tuple[int, ...]:
    """``shape`` (an int or a sequence of ints) as a tuple of non-negative Python ints; TypeError (not ints:
    floats and strings too) or ValueError (a negative size) otherwise."""
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a sequence of ints, got {shape!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must not contain negative sizes, got {shape}")
    return shape
