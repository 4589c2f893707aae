"""Cross-entropy loss fused with softmax."""
from __future__ import annotations

from tinyllm.nn import functional as F
from tinyllm.nn.module import Module


class CrossEntropyLoss(Module):
    """L = mean over kept positions n of  -log softmax(z_n)[t_n],  for logits z (N, V) or (B, T, V).

    Positions whose target equals ``ignore_index`` (padding, prompt tokens) count
    neither in the sum nor in the mean. Softmax and the log are fused through
    log-sum-exp, log softmax(z)_t = z_t - m - log sum_j exp(z_j - m) with m = max z,
    so nothing overflows; and the fused gradient is simply

        dL/dz_n = (softmax(z_n) - onehot(t_n)) / count    (0 for ignored positions)

    ``forward`` returns the mean loss as a Python float; ``backward()`` returns dL/dlogits.
    """

    def __init__(self, ignore_index: int = -100):
        self.ignore_index = ignore_index
        self._cache = None

    def forward(self, logits, targets) -> float:
        loss, probs, t, keep, count = F.cross_entropy_parts(logits, targets, self.ignore_index)
        self._cache = (probs, t, keep, count, logits.shape)
        return float(loss)

    def backward(self, dloss: float = 1.0):
        """dL/dlogits, same shape and dtype as the logits; ``dloss`` scales it (default 1)."""
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward called before forward")
        probs, t, keep, count, shape = self._cache
        dz = probs  # (N, V), reused in place: forward's probabilities are not needed again
        self._cache = None
        rows = keep.nonzero()[0]  # indices of the kept positions
        dz[rows, t[rows]] -= 1.0
        scale = float(dloss) / max(count, 1)
        dz *= (keep * scale).astype(dz.dtype)[:, None]  # (N, 1): 1/count for kept rows, 0 for ignored ones
        return dz.reshape(shape)  # (..., V)

    def __repr__(self) -> str:
        return f"CrossEntropyLoss(ignore_index={self.ignore_index})"
