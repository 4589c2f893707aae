"""Evaluation harness: sliding-window perplexity, choice accuracy, timing, memory, table, Pareto."""
import math

import numpy as np
import pytest

from tinyllm import evaluate as ev


def _bigram(V=7, seed=0):
    table = np.random.default_rng(seed).standard_normal((V, V)).astype(np.float32)
    calls = []

    def logits_fn(idx):
        calls.append(np.asarray(idx).copy())
        return table[idx]                                                   # (B, T, V)
    return table, logits_fn, calls


def test_perplexity_scores_every_token_once():
    table, fn, calls = _bigram()
    toks = np.random.default_rng(1).integers(0, 7, 100)
    logp = table - np.log(np.exp(table).sum(1, keepdims=True))
    expect = -logp[toks[:-1], toks[1:]].sum()
    for window, stride in [(100, None), (16, 8), (10, 1), (32, 31)]:
        d = ev.perplexity(fn, toks, window, stride, return_details=True)
        assert d["n_tokens"] == 99
        assert math.isclose(d["nll"] * 99, expect, rel_tol=1e-5)
    assert all(c.shape[1] <= 100 for c in calls)


def test_choice_accuracy_picks_highest_loglik():
    V = 5
    table = np.full((V, V), -5.0, np.float32)
    table[0, 1] = 5.0                                                       # after token 0 comes 1
    table[1, 2] = 5.0

    def fn(idx):
        return table[idx]

    encode = {"a": [0], " b": [1], " c": [3], " bc": [1, 2], " bd": [1, 4]}.__getitem__
    items = [{"context": "a", "choices": [" c", " b"], "answer": 1},
             {"context": "a", "choices": [" bd", " bc"], "answer": 1},
             {"context": "a", "choices": [" b", " c"], "answer": 1}]
    assert math.isclose(ev.choice_accuracy(fn, encode, items), 2 / 3)
    lp = ev.choice_logprobs(fn, encode, "a", [" bc"])[0]
    row = table - np.log(np.exp(table).sum(1, keepdims=True))
    assert math.isclose(lp, row[0, 1] + row[1, 2], abs_tol=1e-6)


def test_shipped_data():
    text = ev.heldout_text()
    assert 1000 < len(text) < 5000
    items = ev.choice_items()
    assert len(items) >= 20
    for it in items:
        assert 0 <= it["answer"] < len(it["choices"]) and all(c.startswith(" ") for c in it["choices"])


def test_timing_percentiles_memory_bytes():
    t = ev.time_calls(lambda: np.ones(10).sum(), repeat=4, warmup=1)
    assert t.shape == (4,) and (t >= 0).all()
    p = ev.latency_percentiles([1.0, 2.0, 3.0, 4.0, 5.0])
    assert p == {"p50": 3.0, "p90": 4.6, "p99": pytest.approx(4.96)}
    _, peak = ev.peak_memory(lambda: np.ones(1_000_000, np.float32) + 1)
    assert 4_000_000 <= peak < 20_000_000
    speed = ev.measure_speed(lambda: None, 10, lambda: None, repeat=2, decode_steps=3)
    assert set(speed) == {"prefill_tok_s", "decode_tok_s", "decode_p50_ms", "decode_p90_ms", "decode_p99_ms"}


def test_model_bytes_counts_tied_once_and_quantized():
    from tinyllm.compress.quantize import QuantizedLinear
    from tinyllm.nn.module import Module, Parameter

    class M(Module):
        def __init__(self):
            self.a = Parameter(np.zeros((10, 10), np.float32))
            self.b = self.a                                                 # tied
            self.q = QuantizedLinear.from_weight(np.ones((64, 8), np.float32), bits=4, group_size=32)

    m = M()
    assert ev.model_bytes(m) == 400 + m.q.nbytes
    assert ev.model_bytes({"x": np.zeros(3, np.float64), "y": [np.zeros(2, np.int8)]}) == 26


def test_table_row_format_and_pareto():
    _, fn, _ = _bigram()
    toks = np.arange(40) % 7
    row = ev.evaluate_model("bigram", fn, toks, nbytes=196, window=16,
                            prefill_fn=lambda: fn(toks[None]), n_prompt=40, repeat=2, decode_steps=2)
    assert {"name", "bytes", "ppl", "peak_mem", "prefill_tok_s"} <= set(row)
    rows = [{"name": "a", "bytes": 4e6, "ppl": 10.0}, {"name": "bb", "bytes": 1e6, "ppl": 12.0},
            {"name": "c", "bytes": 2e6, "ppl": 13.0}]
    table = ev.format_table(rows, ["name", "bytes", "ppl"])
    lines = table.splitlines()
    assert lines[0] == "| name |  bytes |   ppl |" and lines[2] == "| a    | 4.0 MB | 10.00 |"
    assert len({len(line) for line in lines}) == 1
    assert [r["name"] for r in ev.pareto_front(rows)] == ["bb", "a"]
    import matplotlib
    matplotlib.use("Agg")
    ax = ev.plot_pareto(rows)
    assert ax.get_xlabel() == "model size (MB)"


def test_perplexity_windows_score_each_token_at_most_once():
    for n, window, stride in [(10, 4, 2), (37, 8, 3), (41, 10, 10), (5, 8, 2), (50, 10, 1)]:
        wins = ev.perplexity_windows(n, window, stride)
        scored = np.zeros(n, dtype=int)
        for k, (begin, end, first) in enumerate(wins):
            assert begin == k * stride and end == min(begin + window, n) and begin < first <= end
            scored[first:end] += 1
        assert scored.max() == 1 and wins[-1][1] == n
        if stride < window:
            assert scored[1:].all()                                  # every token after the first is scored
    assert ev.perplexity_windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]


def test_stream_bandwidth_is_bytes_of_one_pass_over_its_median_time():
    mats = [np.ones((4, 8), np.float32), np.ones((8, 3), np.float32)]              # 128 + 96 bytes
    ticks = iter([0.0, 2.0, 10.0, 14.0, 20.0, 21.0])                               # passes of 2, 4 and 1 s
    assert ev.stream_bandwidth(mats, repeat=3, clock=lambda: next(ticks)) == 224 / 2.0
    with pytest.raises(ValueError, match="repeat"):
        ev.stream_bandwidth(mats, repeat=0)


def test_time_calls_warms_up_and_times_each_call_with_the_given_clock():
    import functools

    seen = []
    tick = functools.partial(next, iter(np.arange(100.0)))
    fn = lambda: seen.append("fn") or tick()                          # noqa: E731
    sync = lambda r: seen.append("sync") or tick()                    # noqa: E731
    clock = lambda: seen.append("clock") or tick()                    # noqa: E731
    times = ev.time_calls(fn, repeat=2, warmup=1, clock=clock, sync=sync)
    assert seen == ["fn", "sync"] + ["clock", "fn", "sync", "clock"] * 2
    assert times.tolist() == [3.0, 3.0]
