import numpy as np


def latency_percentiles__nearest_rank(times):
    """single order statistics"""
    t = np.sort(np.asarray(times, dtype=np.float64))
    return {f"p{q}": float(t[min(int(len(t) * q / 100), len(t) - 1)]) for q in (50, 90, 99)}


def latency_percentiles__unsorted(times):
    """were not sorted"""
    t = np.asarray(times, dtype=np.float64)
    return {f"p{q}": float(t[min(int(len(t) * q / 100), len(t) - 1)]) for q in (50, 90, 99)}


def latency_percentiles__int_keys(times):
    """lacks the keys"""
    t = np.asarray(times, dtype=np.float64)
    return {q: float(np.percentile(t, q)) for q in (50, 90, 99)}


def latency_percentiles__quantile_100(times):
    """np.quantile takes q from 0 to 1"""
    t = np.asarray(times, dtype=np.float64)
    return {f"p{q}": float(np.quantile(t, min(q, 1))) for q in (50, 90, 99)}


def latency_percentiles__lower(times):
    """method='lower'"""
    t = np.asarray(times, dtype=np.float64)
    return {f"p{q}": float(np.percentile(t, q, method="lower")) for q in (50, 90, 99)}


def decode_ceiling__no_giga(n_bytes, bandwidth_gb_s):
    """still in GB/s"""
    return bandwidth_gb_s / n_bytes


def decode_ceiling__bits(n_bytes, bandwidth_gb_s):
    """counted as bits"""
    return bandwidth_gb_s * 1e9 / (8 * n_bytes)


def decode_ceiling__mega(n_bytes, bandwidth_gb_s):
    """converted with 1e6"""
    return bandwidth_gb_s * 1e6 / n_bytes


def decode_ceiling__hard_coded_model(n_bytes, bandwidth_gb_s):
    """None"""
    return bandwidth_gb_s * 1e9 / 538_000_000


# Written after the checks, graded once before any change to them (see the report).


def latency_percentiles__ms(times):
    """None"""
    t = np.asarray(times, dtype=np.float64) * 1000
    return {f"p{q}": float(np.percentile(t, q)) for q in (50, 90, 99)}


def decode_ceiling__ms_per_token(n_bytes, bandwidth_gb_s):
    """None"""
    return 1000 * n_bytes / (bandwidth_gb_s * 1e9)
