"""Token embedding: a lookup table, row idx of a (V, C) matrix."""
from __future__ import annotations

from typing import Any

import numpy as np

from tinyllm import init
from tinyllm.backend import get_array_module
from tinyllm.nn.module import Module, Parameter


class Embedding(Module):
    """forward(idx (B, T) ints) -> weight[idx] (B, T, C); weight ~ N(0, std^2) as in GPT-2.

    Backward: the lookup is a one-hot matrix product, y = onehot(idx) @ W, so
    dL/dW = onehot(idx)^T dY: row v of dW is the sum of dY at every position
    holding token v. It is computed as a scatter-add (``xp.add.at``), never as a
    (N, V) one-hot matrix.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *,
                 rng: np.random.Generator | int | None = None, std: float = 0.02, dtype: Any = np.float32):
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(f"num_embeddings and embedding_dim must be >= 1, got ({num_embeddings}, {embedding_dim})")
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.weight = Parameter(init.normal((num_embeddings, embedding_dim), 0.0, std, rng=rng, dtype=dtype))  # (V, C)
        self._idx = None

    def forward(self, idx):
        xp = get_array_module(self.weight.data)
        idx = xp.asarray(idx)
        if not np.issubdtype(np.dtype(idx.dtype), np.integer):
            raise TypeError(f"idx must be an integer array of token ids, got dtype {idx.dtype}")
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.num_embeddings):
            raise ValueError(f"idx must hold token ids in [0, {self.num_embeddings}), "
                             f"got values in [{int(idx.min())}, {int(idx.max())}]")
        self._idx = idx  # (B, T)
        return self.weight.data[idx]  # (B, T, C)

    def backward(self, dy):
        if self._idx is None:
            raise RuntimeError("Embedding.backward called before forward")
        xp = get_array_module(dy)
        # scatter-add each position's gradient into its token's row, straight into .grad
        xp.add.at(self.weight.grad, self._idx.reshape(-1), dy.reshape(-1, self.embedding_dim))  # (V, C) += (N, C)
        return None  # token ids have no gradient

    def __repr__(self) -> str:
        return f"Embedding({self.num_embeddings}, {self.embedding_dim})"
