"""Measure a language model: quality (perplexity, accuracy), speed, memory and size.

Every function takes the model as a plain callable, ``logits_fn(idx (B, T)) ->
logits (B, T, V)``, so the same harness measures a tinyllm GPT, the SmolLM2 engine
or any compressed variant of either.

* Perplexity ``exp(mean NLL)`` of held-out text, with a sliding window so a text
  longer than the context is scored with as much context as the window allows
  (each token is predicted once, from up to ``window - 1`` tokens before it).
  The text that ships with tinyllm (:func:`heldout_text`) was written for this
  project and is in no training set of the course.
* Accuracy on a small multiple-choice set written for this project
  (:func:`choice_items`): each choice is scored by its log-likelihood after the
  context, the highest wins (the way lm-eval-harness scores such sets).
* Speed: prefill and decode tokens/s as medians over repeats after warm-up, and
  decode latency percentiles. Timings vary from run to run: compare ratios
  measured in one run, never absolute numbers across machines.
* Peak memory allocated during a call (``tracemalloc``: NumPy reports its
  allocations to it) and model bytes.

:func:`evaluate_model` returns all of it as one table row, :func:`format_table`
prints rows, :func:`plot_pareto` draws size against perplexity.
"""
from __future__ import annotations

import json
import math
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tinyllm.backend import get_array_module, synchronize

_DATA = Path(__file__).resolve().parent / "evaldata"


# ---------------------------------------------------------------------------
# Data that ships with tinyllm
# ---------------------------------------------------------------------------
def heldout_text() -> str:
    """A short English text (about 1.8 KB, ~400 tokens) written for tinyllm's evaluations."""
    return (_DATA / "heldout.txt").read_text(encoding="utf-8")


def choice_items() -> list[dict[str, Any]]:
    """The labelled multiple-choice set: dicts with ``context``, ``choices`` and ``answer`` (an index)."""
    return json.loads((_DATA / "choices.json").read_text(encoding="utf-8"))["items"]


# ---------------------------------------------------------------------------
# Quality
# ---------------------------------------------------------------------------
def _log_softmax(z: Any) -> Any:
    xp = get_array_module(z)
    z = z - z.max(axis=-1, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))


def sliding_window_nll(logits_fn: Callable, tokens: Sequence[int] | Any, window: int, stride: int | None = None
                       ) -> tuple[float, int]:
    """Total negative log-likelihood (nats) of ``tokens[1:]`` and the number of tokens scored.

    Windows of ``window`` tokens start every ``stride`` tokens (default ``window // 2``).
    Each window scores only the tokens no earlier window scored, so every token from
    the second on is predicted exactly once, with at least ``window - stride`` tokens
    of context once the first window is passed.
    """
    toks = np.asarray(tokens, dtype=np.int64).ravel()                       # (N,)
    N = toks.shape[0]
    if N < 2:
        raise ValueError(f"tokens must hold at least 2 tokens to score, got {N}")
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    stride = stride or max(window // 2, 1)
    if not 1 <= stride <= window - 1:
        raise ValueError(f"stride must be in 1..window-1={window - 1}, got {stride}")
    total, count, scored_to = 0.0, 0, 1                                     # tokens[:scored_to] are done
    begin = 0
    while scored_to < N:
        end = min(begin + window, N)
        x = toks[begin:end][None, :]                                        # (1, T)
        first = max(scored_to, begin + 1)                                   # first target position
        logits = logits_fn(x)[0, first - begin - 1: end - begin - 1]        # (t, V) predicts toks[first:end]
        xp = get_array_module(logits)
        logp = _log_softmax(logits.astype(xp.float32))
        tgt = xp.asarray(toks[first:end])
        total -= float(xp.take_along_axis(logp, tgt[:, None], axis=1).sum())
        count += end - first
        scored_to = end
        begin += stride
    return total, count


def sliding_window_perplexity(logits_fn: Callable, tokens: Sequence[int] | Any, window: int,
                              stride: int | None = None) -> float:
    """``exp(mean NLL)`` of ``tokens`` with :func:`sliding_window_nll`."""
    nll, n = sliding_window_nll(logits_fn, tokens, window, stride)
    return math.exp(nll / n)


def choice_logprobs(logits_fn: Callable, encode: Callable[[str], list[int]], context: str,
                    choices: Sequence[str]) -> list[float]:
    """Log-likelihood of each choice's tokens after the context's (encoded separately, then joined)."""
    ctx = list(encode(context))
    if not ctx:
        raise ValueError("context must encode to at least one token")
    out = []
    for choice in choices:
        ch = list(encode(choice))
        if not ch:
            raise ValueError(f"choice {choice!r} encodes to no tokens")
        x = np.asarray(ctx + ch, dtype=np.int64)[None, :]                  # (1, T)
        logits = logits_fn(x[:, :-1])[0, len(ctx) - 1:]                     # (len(ch), V)
        xp = get_array_module(logits)
        logp = _log_softmax(logits.astype(xp.float32))
        out.append(float(xp.take_along_axis(logp, xp.asarray(ch)[:, None], axis=1).sum()))
    return out


def choice_accuracy(logits_fn: Callable, encode: Callable[[str], list[int]],
                    items: Sequence[dict[str, Any]] | None = None) -> float:
    """Fraction of ``items`` (default :func:`choice_items`) whose answer has the highest log-likelihood."""
    items = choice_items() if items is None else items
    if not items:
        raise ValueError("items is empty")
    right = 0
    for it in items:
        scores = choice_logprobs(logits_fn, encode, it["context"], it["choices"])
        right += int(int(np.argmax(scores)) == int(it["answer"]))
    return right / len(items)


# ---------------------------------------------------------------------------
# Speed and memory
# ---------------------------------------------------------------------------
def time_calls(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> np.ndarray:
    """Seconds taken by each of ``repeat`` calls of ``fn()``, after ``warmup`` untimed calls.

    Warm-up pays one-off costs (first-touch page faults, BLAS thread start-up, caches,
    CuPy kernel compilation) that the steady state does not have. GPU work is
    synchronised before the clock is read.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for _ in range(warmup):
        synchronize(fn())
    times = np.empty(repeat)
    for i in range(repeat):
        t0 = time.perf_counter()
        synchronize(fn())
        times[i] = time.perf_counter() - t0
    return times


def latency_percentiles(times: Sequence[float], q: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """``{"p50": ..., "p90": ..., "p99": ...}`` of ``times`` (same unit)."""
    t = np.asarray(times, dtype=np.float64)
    if t.size == 0:
        raise ValueError("times is empty")
    return {f"p{int(p) if float(p).is_integer() else p}": float(np.percentile(t, p)) for p in q}


def measure_speed(prefill_fn: Callable[[], Any], n_prompt: int, decode_fn: Callable[[], Any] | None = None,
                  *, repeat: int = 5, decode_steps: int = 16, warmup: int = 1) -> dict[str, float]:
    """Prefill tokens/s (median of ``repeat``) and, with ``decode_fn`` (one token a call),
    decode tokens/s from the median step time plus latency percentiles in milliseconds."""
    pre = time_calls(prefill_fn, repeat, warmup)
    out = {"prefill_tok_s": n_prompt / float(np.median(pre))}
    if decode_fn is not None:
        dec = time_calls(decode_fn, decode_steps, warmup)
        out["decode_tok_s"] = 1.0 / float(np.median(dec))
        out.update({f"decode_{k}_ms": 1e3 * v for k, v in latency_percentiles(dec).items()})
    return out


def peak_memory(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn()`` and return ``(result, peak bytes allocated during the call)`` (host memory).

    Uses ``tracemalloc``, which sees NumPy's array buffers; it counts what the call
    allocates on top of what already existed (not the model's weights, for example).
    CuPy's GPU memory is not seen: use ``cupy.get_default_memory_pool()`` there.
    """
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if not was:
            tracemalloc.stop()
    return result, int(peak)


def model_bytes(obj: Any) -> int:
    """Bytes of a model's weights: sums ``.nbytes`` over a Module's parameters and
    quantised layers, a dict/list of arrays, or anything with an ``nbytes``.

    Tied weights are counted once.
    """
    from tinyllm.nn.module import Module, Parameter  # noqa: PLC0415

    seen: set[int] = set()

    def walk(o: Any) -> int:
        if id(o) in seen:
            return 0
        seen.add(id(o))
        if isinstance(o, Parameter):
            return int(o.data.nbytes)
        if isinstance(o, Module):
            if "nbytes" in type(o).__dict__:                                # QuantizedLinear and friends
                return int(o.nbytes)
            return sum(walk(v) for v in vars(o).values() if isinstance(v, (Parameter, Module, list, tuple, dict)))
        if isinstance(o, dict):
            return sum(walk(v) for v in o.values())
        if isinstance(o, (list, tuple)):
            return sum(walk(v) for v in o)
        if hasattr(o, "nbytes"):
            return int(o.nbytes)
        return 0

    return walk(obj)


# ---------------------------------------------------------------------------
# One row, a table, a Pareto plot
# ---------------------------------------------------------------------------
def evaluate_model(name: str, logits_fn: Callable, tokens: Sequence[int] | Any, *, nbytes: int, window: int = 128,
                   stride: int | None = None, encode: Callable[[str], list[int]] | None = None,
                   items: Sequence[dict[str, Any]] | None = None, prefill_fn: Callable | None = None,
                   n_prompt: int = 0, decode_fn: Callable | None = None, repeat: int = 3,
                   decode_steps: int = 8) -> dict[str, Any]:
    """Everything about one model as a dict (one table row).

    Keys: ``name, bytes, ppl`` always; ``accuracy`` when ``encode`` is given;
    ``prefill_tok_s, decode_tok_s, decode_p50_ms, decode_p90_ms, decode_p99_ms`` when
    the speed callables are given; ``peak_mem`` (bytes allocated during the
    perplexity pass).
    """
    ppl, peak = peak_memory(lambda: sliding_window_perplexity(logits_fn, tokens, window, stride))
    row: dict[str, Any] = {"name": name, "bytes": int(nbytes), "ppl": ppl, "peak_mem": peak}
    if encode is not None:
        row["accuracy"] = choice_accuracy(logits_fn, encode, items)
    if prefill_fn is not None:
        row.update(measure_speed(prefill_fn, n_prompt, decode_fn, repeat=repeat, decode_steps=decode_steps))
    return row


_FORMATS = {
    "bytes": lambda v: f"{v / 1e6:.1f} MB",
    "peak_mem": lambda v: f"{v / 1e6:.1f} MB",
    "ppl": lambda v: f"{v:.2f}",
    "accuracy": lambda v: f"{v:.2f}",
}


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """An aligned Markdown table of ``rows`` (text left, numbers right, sizes in MB)."""
    if not rows:
        raise ValueError("rows is empty")
    columns = list(columns or [k for k in rows[0]])
    cells = [[_FORMATS.get(c, lambda v: f"{v:.1f}" if isinstance(v, float) else str(v))(r[c]) if c in r else "-"
              for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(vals: Sequence[str]) -> str:
        parts = [v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths))]
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(columns), sep, *(line(r) for r in cells)])


def pareto_front(rows: Sequence[dict[str, Any]], x: str = "bytes", y: str = "ppl") -> list[dict[str, Any]]:
    """Rows no other row beats on both ``x`` and ``y`` (lower is better for both), sorted by ``x``."""
    ordered = sorted(rows, key=lambda r: (r[x], r[y]))
    front, best = [], math.inf
    for r in ordered:
        if r[y] < best:
            front.append(r)
            best = r[y]
    return front


def plot_pareto(rows: Sequence[dict[str, Any]], ax: Any = None, x: str = "bytes", y: str = "ppl",
                title: str = "Model size against perplexity"):
    """Scatter of size (MB) against perplexity with the Pareto front drawn; returns the axes."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r[x] / 1e6 for r in rows]
    ys = [r[y] for r in rows]
    ax.scatter(xs, ys, color="tab:blue", zorder=3)
    for r, a, b in zip(rows, xs, ys):
        ax.annotate(r["name"], (a, b), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = pareto_front(rows, x, y)
    ax.plot([r[x] / 1e6 for r in front], [r[y] for r in front], "--", color="tab:red", label="Pareto front")
    ax.set_xlabel("model size (MB)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax
