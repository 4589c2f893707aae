"""Measure a language model: quality (perplexity, accuracy), speed, memory and size.

Every function takes the model as a plain callable, ``logits_fn(idx (B, T)) ->
logits (B, T, V)``, so the same harness measures a tinyllm GPT, the SmolLM2 engine
or any compressed variant of either.

* Perplexity (Jelinek et al., 1977), the exponential of the mean negative
  log-likelihood of each token given the ones before it::

      PPL = exp( -1/N * sum_j log p(x_j | x_<j) )

  A model sees at most ``window`` tokens at once. For a longer text we slide the
  window by ``stride`` tokens and, in each window, score only the tokens not
  scored before (:func:`perplexity_windows`), so no token is scored twice. With
  ``stride < window`` every token after the first is scored, with at least
  ``window - stride`` tokens of context (when the text allows); with disjoint
  windows (``stride == window``, as in HF's guide) the first token of each window
  has no context inside it and is not scored.
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

from tinyllm import plug
from tinyllm.backend import get_array_module, synchronize, to_numpy
from tinyllm.nn.functional import log_softmax

_DATA = Path(__file__).resolve().parent / "evaldata"


def token_log_probs(logits, targets) -> np.ndarray:
    """log p(target) under softmax(logits): logits (N, V), targets (N,) -> (N,) float64 on the host."""
    xp = get_array_module(logits)
    log_p = log_softmax(logits)                                          # (N, V)
    return to_numpy(xp.take_along_axis(log_p, xp.asarray(targets)[:, None], axis=-1)[:, 0]).astype(np.float64)


def perplexity(model, token_ids, window: int = 512, stride: int | None = None, *, return_details: bool = False):
    """Sliding-window perplexity of ``model`` on a 1-D sequence of token ids.

    ``model(ids (1, T)) -> logits (1, T, V)``. ``stride`` defaults to ``window``
    (disjoint windows, fastest; a smaller stride gives each token more context).
    Returns the perplexity (a float), or with ``return_details`` a dict with
    ``perplexity``, ``nll`` (mean negative log-likelihood in nats) and ``n_tokens``.
    """
    ids = np.asarray(to_numpy(token_ids))
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token_ids must be a 1-D sequence of integer ids, got shape {ids.shape} dtype {ids.dtype}")
    if ids.size < 2:
        raise ValueError(f"token_ids needs at least 2 tokens to score one, got {ids.size}")
    if not isinstance(window, (int, np.integer)) or window < 2:
        raise ValueError(f"window must be an int >= 2, got {window!r}")
    stride = window if stride is None else stride
    if not isinstance(stride, (int, np.integer)) or not 1 <= stride <= window:
        raise ValueError(f"stride must be an int in [1, window={window}], got {stride!r}")
    total, count = 0.0, 0
    for begin, end, first in perplexity_windows(ids.size, window, stride):
        chunk = ids[begin:end][None, :]                                  # (1, L)
        logits = model(chunk)[0]                                         # (L, V)
        rows = np.arange(first, end) - 1 - begin                         # positions that predict first..end-1
        lp = token_log_probs(logits[rows], ids[first:end])
        total -= float(lp.sum())
        count += lp.size
    nll = total / count
    ppl = math.exp(nll)
    if return_details:
        return {"perplexity": ppl, "nll": nll, "n_tokens": count}
    return ppl


@plug.point("perplexity_windows")
def perplexity_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows of strided perplexity over ``n_tokens`` tokens: ``(begin, end, first)`` triples.

    Window k reads tokens ``[begin, end)`` with ``begin = k * stride`` and ``end = min(begin + window,
    n_tokens)``, and scores tokens ``first .. end - 1``: those no earlier window scored, from
    ``begin + 1`` on (a window's first token has no context inside it; token 0 is never scored). The
    windows stop at the first one that reaches the end of the text. No token is scored twice; with
    ``stride < window`` every token from 1 on is scored, with ``stride == window`` all but the first of
    each window (a last window may then score nothing)."""
    out, scored_to, begin = [], 1, 0                                     # tokens [1, scored_to) are scored
    while scored_to < n_tokens:
        end = min(begin + window, n_tokens)
        out.append((begin, end, max(scored_to, begin + 1)))
        scored_to = end
        begin += stride
    return out


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
        out.append(float(token_log_probs(logits, np.asarray(ch)).sum()))
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
@plug.point("time_calls")
def time_calls(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1, *, clock: Callable[[], float] = time.perf_counter,
               sync: Callable[[Any], Any] = synchronize) -> np.ndarray:
    """Seconds taken by each of ``repeat`` calls of ``fn()``, after ``warmup`` untimed calls.

    Warm-up pays one-off costs (first-touch page faults, BLAS thread start-up, caches,
    CuPy kernel compilation) that the steady state does not have. ``sync(fn())`` waits
    for queued GPU work (:func:`tinyllm.backend.synchronize`) before ``clock()`` is read
    again. ``clock`` and ``sync`` are arguments so that tests can count the calls.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for _ in range(warmup):
        sync(fn())
    times = np.empty(repeat)
    for i in range(repeat):
        t0 = clock()
        sync(fn())
        times[i] = clock() - t0
    return times


def stream_bandwidth(matrices: Sequence[Any], *, threads: int | None = None, repeat: int = 5,
                     clock: Callable[[], float] = time.perf_counter) -> float:
    """Bytes per second streamed by one pass of ``x @ W`` over ``matrices`` (median of ``repeat`` passes).

    With the weight matrices of a batch-1 decode step, this is the bandwidth that bounds decoding (the
    roofline: tokens/s <= bandwidth / bytes per token). Pass at least as many bytes as a step reads: a
    smaller working set can sit in a large last-level cache and measure the cache instead. ``threads``:
    BLAS threads for the measurement (None: as they are)."""
    from tinyllm.threads import limit_blas_threads

    xp = get_array_module(matrices[0])
    xs = [xp.ones((1, m.shape[0]), dtype=m.dtype) for m in matrices]    # (1, IN) each

    def one_pass():
        for x, m in zip(xs, matrices):
            y = x @ m                                                   # (1, OUT)
        return y

    with limit_blas_threads(threads or 0):
        seconds = float(np.median(time_calls(one_pass, repeat=repeat, clock=clock)))
    return sum(m.nbytes for m in matrices) / seconds


def latency_percentiles(times: Sequence[float], q: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """``{"p50": ..., "p90": ..., "p99": ...}`` of ``times`` (same unit)."""
    t = np.asarray(times, dtype=np.float64)
    if t.size == 0:
        raise ValueError("times is empty")
    return {f"p{int(p) if float(p).is_integer() else p}": float(np.percentile(t, p)) for p in q}


@plug.point("measure_speed")
def measure_speed(prefill_fn: Callable[[], Any], n_prompt: int, decode_fn: Callable[[], Any] | None = None,
                  *, repeat: int = 5, decode_steps: int = 16, warmup: int = 1, clock: Callable[[], float] = time.perf_counter,
                  sync: Callable[[Any], Any] = synchronize) -> dict[str, float]:
    """Prefill tokens/s (median of ``repeat``) and, with ``decode_fn`` (one token a call),
    decode tokens/s from the median step time plus latency percentiles in milliseconds.
    Both are timed by :func:`time_calls` (``warmup``, ``clock`` and ``sync`` go to it)."""
    pre = time_calls(prefill_fn, repeat, warmup, clock=clock, sync=sync)
    out = {"prefill_tok_s": n_prompt / float(np.median(pre))}
    if decode_fn is not None:
        dec = time_calls(decode_fn, decode_steps, warmup, clock=clock, sync=sync)
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
    ppl, peak = peak_memory(lambda: perplexity(logits_fn, tokens, window, stride))
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
