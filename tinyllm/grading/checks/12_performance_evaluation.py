"""Graded checks for exercises/12_performance_evaluation.ipynb.

References: latency percentiles from ``tinyllm.evaluate.latency_percentiles`` (NumPy's linear
interpolation between order statistics); the bandwidth-bound decode ceiling has no library function
and is its definition: every decoded token reads all ``n_bytes`` of weights once, so at most
``bandwidth / n_bytes`` tokens per second (GB = 1e9 bytes).
"""
from __future__ import annotations

import numpy as np

from tinyllm.evaluate import latency_percentiles as lib_percentiles
from tinyllm.grading.core import Exercise, Fail, call, close, number, value

rng = np.random.default_rng(1111)
EXERCISES: list[Exercise] = []

# --- latency percentiles -----------------------------------------------------------------------
ex = Exercise("latency_percentiles", "p50 / p90 / p99 of measured latencies")
times = np.concatenate([0.010 + 0.001 * rng.standard_normal(37), [0.050, 0.080, 0.200]])   # a slow tail
rng.shuffle(times)
few = np.array([0.3, 0.1, 0.2, 0.4])                                 # interpolation matters with 4 samples


def _judge_pct(data, what):
    def judge(rs):
        got = value(rs[0], what)
        if not isinstance(got, dict):
            raise Fail(f"{what} returned {type(got).__name__}, expected a dict {{'p50': ..., 'p90': ..., 'p99': ...}}")
        missing = [k for k in ("p50", "p90", "p99") if k not in got]
        if missing:
            raise Fail(f"{what} lacks the keys {missing}: return {{'p50': ..., 'p90': ..., 'p99': ...}}")
        want = lib_percentiles(data)
        p50 = number(got["p50"], f"{what}['p50']")
        if np.isclose(p50, float(np.mean(data)), rtol=1e-9) and not np.isclose(p50, want["p50"], rtol=1e-9):
            raise Fail("p50 is the mean: the 50th percentile is the median, which a slow tail does not drag up")
        if np.isclose(p50, float(np.percentile(data, 0.5)), rtol=1e-9) and not np.isclose(p50, want["p50"], rtol=1e-9):
            raise Fail("percentiles were given as fractions (0.5): np.percentile takes q from 0 to 100 (50, 90, 99)")
        for key in ("p50", "p90", "p99"):
            g = number(got[key], f"{what}[{key!r}]")
            if not np.isclose(g, want[key], rtol=1e-9, atol=1e-12):
                hint = ""
                if np.isclose(g, float(np.sort(data)[min(int(len(data) * int(key[1:]) / 100), len(data) - 1)]), rtol=1e-9):
                    hint = ": that is a single order statistic; interpolate linearly between neighbours (np.percentile)"
                raise Fail(f"{what}[{key!r}] = {g:.6g}, expected {want[key]:.6g}{hint}")
    return judge


ex.test("median and tail of 40 timings with slow outliers", 2, [call(times)], _judge_pct(times, "latency_percentiles(times)"))
ex.test("linear interpolation with 4 samples", 1, [call(few)], _judge_pct(few, "latency_percentiles([0.3, 0.1, 0.2, 0.4])"))
EXERCISES.append(ex)

# --- decode ceiling ----------------------------------------------------------------------------
ex = Exercise("decode_ceiling", "The bandwidth-bound ceiling of decode speed")
CASES = [(538_000_000, 20.0), (100_000_000, 4.8), (270_000_000, 4800.0)]   # (bytes of weights, GB/s)


def _judge_ceiling(rs):
    for (nbytes, bw), r in zip(CASES, rs):
        got = number(r, f"decode_ceiling({nbytes}, {bw})")
        want = bw * 1e9 / nbytes
        if np.isclose(got, bw * 2**30 / nbytes, rtol=1e-9):
            raise Fail("the bandwidth was converted with 2**30: GB/s here means 1e9 bytes per second")
        if np.isclose(got, nbytes / (bw * 1e9), rtol=1e-9):
            raise Fail("that is seconds per token: tokens per second is bandwidth / bytes read per token")
        close(got, want, f"decode_ceiling({nbytes}, {bw})", rtol=1e-9,
              hint="each token reads every weight once: tokens/s <= bandwidth_gb_s * 1e9 / n_bytes")


ex.test("tokens/s <= bandwidth / bytes per token", 2, [call(n, b) for n, b in CASES], _judge_ceiling)
EXERCISES.append(ex)
