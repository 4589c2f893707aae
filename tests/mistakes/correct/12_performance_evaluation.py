import numpy as np

def latency_percentiles__quantile(times):
    a, b, c = np.quantile(np.asarray(times), [0.5, 0.9, 0.99])
    return {"p50": float(a), "p90": float(b), "p99": float(c)}

def decode_ceiling__ratio(n_bytes, bandwidth_gb_s):
    return (bandwidth_gb_s * 10 ** 9) / n_bytes
