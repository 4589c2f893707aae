import numpy as np


def latency_percentiles__mean_as_p50(times):
    t = np.asarray(times, dtype=np.float64)
    return {"p50": float(t.mean()), "p90": float(np.percentile(t, 90)), "p99": float(np.percentile(t, 99))}


def latency_percentiles__fractions(times):
    t = np.asarray(times, dtype=np.float64)
    return {f"p{q}": float(np.percentile(t, q / 100)) for q in (50, 90, 99)}


def decode_ceiling__gibibytes(n_bytes, bandwidth_gb_s):
    return bandwidth_gb_s * 2**30 / n_bytes


def decode_ceiling__seconds_per_token(n_bytes, bandwidth_gb_s):
    return n_bytes / (bandwidth_gb_s * 1e9)
