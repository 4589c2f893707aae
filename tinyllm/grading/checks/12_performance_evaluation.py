"""Graded checks for exercises/12_performance_evaluation.ipynb.

References: latency percentiles from ``tinyllm.evaluate.latency_percentiles`` (NumPy's linear
interpolation between order statistics); the bandwidth-bound decode ceiling has no library function
and is its definition: every decoded token reads all ``n_bytes`` of weights once, so at most
``bandwidth / n_bytes`` tokens per second (GB = 1e9 bytes). A message names a mistake only when the
learner's results equal that mistake's results on every call.
"""
from __future__ import annotations

import numpy as np

from tinyllm.evaluate import latency_percentiles as lib_percentiles
from tinyllm.grading.core import Exercise, Fail, call, diagnose_cases, number, value

rng = np.random.default_rng(1111)
EXERCISES: list[Exercise] = []

# --- latency percentiles -----------------------------------------------------------------------
ex = Exercise("latency_percentiles", "p50 / p90 / p99 of measured latencies")
times = np.concatenate([0.010 + 0.001 * rng.standard_normal(37), [0.050, 0.080, 0.200]])   # a slow tail
rng.shuffle(times)
few = np.array([0.3, 0.1, 0.2, 0.9])                                 # interpolation matters with 4 samples
odd = rng.exponential(2e-3, 7)                                       # an odd count, unsorted
KEYS = ("p50", "p90", "p99")


def _pct_mistakes(data):
    t = np.asarray(data, dtype=np.float64)
    s = np.sort(t)
    nearest = [s[min(int(len(t) * q / 100), len(t) - 1)] for q in (50, 90, 99)]
    return [
        ("p50 is the mean: the 50th percentile is the median, which a slow tail does not drag up",
         [t.mean(), np.percentile(t, 90), np.percentile(t, 99)]),
        ("percentiles were given as fractions (0.5): np.percentile takes q from 0 to 100 (50, 90, 99)",
         [np.percentile(t, q / 100) for q in (50, 90, 99)]),
        ("those are single order statistics: interpolate linearly between neighbours (np.percentile)", nearest),
        ("the times were not sorted before indexing: percentiles come from the sorted times (np.percentile sorts)",
         [t[min(int(len(t) * q / 100), len(t) - 1)] for q in (50, 90, 99)]),
        ("the percentiles use method='lower' (the sample below): use NumPy's default linear interpolation",
         [np.percentile(t, q, method="lower") for q in (50, 90, 99)]),
        ("the percentiles use method='higher' (the sample above): use NumPy's default linear interpolation",
         [np.percentile(t, q, method="higher") for q in (50, 90, 99)]),
        ("the percentiles use method='nearest': use NumPy's default linear interpolation",
         [np.percentile(t, q, method="nearest") for q in (50, 90, 99)]),
        ("np.quantile takes q from 0 to 1, np.percentile from 0 to 100: these are the wrong quantiles",
         [np.percentile(t, min(q * 100, 100)) for q in (50, 90, 99)]),
    ]


def _judge_pct(cases):
    def judge(rs):
        gots, wants = [], []
        for data, r in zip(cases, rs):
            what = f"latency_percentiles of {len(data)} times"
            got = value(r, what)
            if not isinstance(got, dict):
                raise Fail(f"{what} returned {type(got).__name__}, expected a dict {{'p50': ..., 'p90': ..., 'p99': ...}}")
            missing = [k for k in KEYS if k not in got]
            if missing:
                raise Fail(f"{what} lacks the keys {missing} (it has {sorted(map(str, got))[:5]}): return "
                           "{'p50': ..., 'p90': ..., 'p99': ...}")
            gots.append([number(got[k], f"{what}[{k!r}]") for k in KEYS])
            want = lib_percentiles(data)
            wants.append([want[k] for k in KEYS])
        for data, g, w in zip(cases, gots, wants):
            for k, gg, ww in zip(KEYS, g, w):
                if not np.isclose(gg, ww, rtol=1e-9, atol=1e-12):
                    what = f"latency_percentiles of {len(data)} times: {k} = {gg:.6g}, expected {ww:.6g}"
                    per_call = [_pct_mistakes(d) for d in cases]                 # [call][mistake] -> (message, values)
                    diagnose_cases(gots, wants, [(m, [pc[i][1] for pc in per_call]) for i, (m, _) in enumerate(per_call[0])],
                                   what=what, rtol=1e-9, atol=1e-12)
                    raise Fail(f"{what} (the expected values are NumPy's linear interpolation, "
                               "np.percentile(times, [50, 90, 99]))")
    return judge


ex.test("median and tail of 40 timings with slow outliers, and of 7", 2, [call(times), call(odd)],
        _judge_pct([times, odd]))
ex.test("linear interpolation with 4 samples", 1, [call(few)], _judge_pct([few]))
EXERCISES.append(ex)

# --- decode ceiling ----------------------------------------------------------------------------
ex = Exercise("decode_ceiling", "The bandwidth-bound ceiling of decode speed")
CASES = [(538_000_000, 20.0), (100_000_000, 4.8), (270_000_000, 4800.0), (7_000, 0.5)]   # (bytes of weights, GB/s)


def _judge_ceiling(rs):
    gots = [number(r, f"decode_ceiling({n}, {bw})") for (n, bw), r in zip(CASES, rs)]
    wants = [bw * 1e9 / n for n, bw in CASES]
    bad = next((k for k, (g, w) in enumerate(zip(gots, wants)) if not np.isclose(g, w, rtol=1e-9)), None)
    if bad is None:
        return
    n, bw = CASES[bad]
    what = f"decode_ceiling({n}, {bw}) = {gots[bad]:.6g}, expected {wants[bad]:.6g}"
    diagnose_cases(gots, wants, [
        ("the bandwidth was converted with 2**30: GB/s here means 1e9 bytes per second", [b * 2**30 / n for n, b in CASES]),
        ("that is seconds per token: tokens per second is bandwidth / bytes read per token", [n / (b * 1e9) for n, b in CASES]),
        ("the bandwidth is still in GB/s: multiply by 1e9 to get bytes per second", [b / n for n, b in CASES]),
        ("the bytes were counted as bits (x 8): n_bytes is already in bytes", [b * 1e9 / (8 * n) for n, b in CASES]),
        ("the bandwidth was converted with 1e6: 1 GB = 1e9 bytes", [b * 1e6 / n for n, b in CASES]),
    ], what=what, rtol=1e-9, atol=0.0)
    raise Fail(f"{what}: each token reads every weight once, tokens/s <= bandwidth_gb_s * 1e9 / n_bytes")


ex.test("tokens/s <= bandwidth / bytes per token", 2, [call(n, b) for n, b in CASES], _judge_ceiling)
EXERCISES.append(ex)
