import math
import numpy as np

def count_parameters__loop(sizes):
    total = 0
    for i in range(len(sizes) - 1):
        total += sizes[i] * sizes[i + 1] + sizes[i + 1]
    return total

def normal_init__f32(shape, var, rng):
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(var))

def kaiming_normal__std(fan_in, fan_out, rng):
    return (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2 / fan_in)).astype(np.float32)

def xavier_uniform__random(fan_in, fan_out, rng):
    a = np.sqrt(6 / (fan_in + fan_out))
    return ((rng.random((fan_in, fan_out)) * 2 - 1) * a).astype(np.float32)
