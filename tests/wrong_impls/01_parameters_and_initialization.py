import math

import numpy as np


def count_parameters__weights_only(sizes):
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def normal_init__var_as_std(shape, var, rng):
    return rng.normal(0.0, var, size=shape).astype(np.float32)


def normal_init__global_rng(shape, var, rng):
    return np.random.normal(0.0, math.sqrt(var), size=shape).astype(np.float32)


def kaiming_normal__no_gain(fan_in, fan_out, rng):
    return rng.normal(0.0, math.sqrt(1.0 / fan_in), size=(fan_in, fan_out)).astype(np.float32)


def kaiming_normal__float64(fan_in, fan_out, rng):
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_in, fan_out))


def xavier_uniform__positive_only(fan_in, fan_out, rng):
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(0.0, a, size=(fan_in, fan_out)).astype(np.float32)
