import math

import numpy as np


def count_parameters__biases_per_input(sizes):
    """counts IN biases per layer"""
    return sum(a * b + a for a, b in zip(sizes[:-1], sizes[1:]))


def count_parameters__one_bias_per_layer(sizes):
    """counts one bias per layer"""
    return sum(a * b + 1 for a, b in zip(sizes[:-1], sizes[1:]))


def count_parameters__input_biases(sizes):
    """counts biases for the input layer too"""
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) + sum(sizes)


def count_parameters__first_layer_only(sizes):
    """count_parameters([784, 128, 10]) = 100480, expected 101770"""
    return sizes[0] * sizes[1] + sizes[1]


def normal_init__hard_coded_seed(shape, var, rng):
    """differently seeded generators gave the same array"""
    return np.random.default_rng(0).normal(0.0, math.sqrt(var), size=shape).astype(np.float32)


def normal_init__uniform_same_std(shape, var, rng):
    """not a uniform"""
    a = math.sqrt(3 * var)
    return rng.uniform(-a, a, size=shape).astype(np.float32)


def normal_init__float64(shape, var, rng):
    """float64 crept in"""
    return rng.normal(0.0, math.sqrt(var), size=shape)


def normal_init__std_half_var(shape, var, rng):
    """the sample standard deviation is"""
    return rng.normal(0.0, var / 2, size=shape).astype(np.float32)


def normal_init__2d_only(shape, var, rng):
    """has shape (30, 40), expected (30, 40, 50)"""
    return rng.normal(0.0, math.sqrt(var), size=shape[:2]).astype(np.float32)


def kaiming_normal__fan_out(fan_in, fan_out, rng):
    """sqrt(2 / fan_out)"""
    return rng.normal(0.0, math.sqrt(2.0 / fan_out), size=(fan_in, fan_out)).astype(np.float32)


def kaiming_normal__variance_as_std(fan_in, fan_out, rng):
    """a variance, not a standard deviation"""
    return rng.normal(0.0, 2.0 / fan_in, size=(fan_in, fan_out)).astype(np.float32)


def kaiming_normal__uniform(fan_in, fan_out, rng):
    """not a uniform"""
    a = math.sqrt(6.0 / fan_in)
    return rng.uniform(-a, a, size=(fan_in, fan_out)).astype(np.float32)


def kaiming_normal__transposed(fan_in, fan_out, rng):
    """has shape (100, 400), expected (400, 100)"""
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_out, fan_in)).astype(np.float32)


def kaiming_normal__global_rng(fan_in, fan_out, rng):
    """draw every number from the rng argument"""
    return np.random.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_in, fan_out)).astype(np.float32)


def xavier_uniform__fan_in_only(fan_in, fan_out, rng):
    """a bound of sqrt(6 / fan_in)"""
    a = math.sqrt(6.0 / fan_in)
    return rng.uniform(-a, a, size=(fan_in, fan_out)).astype(np.float32)


def xavier_uniform__normal(fan_in, fan_out, rng):
    """Xavier normal"""
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=(fan_in, fan_out)).astype(np.float32)


def xavier_uniform__std_as_bound(fan_in, fan_out, rng):
    """sqrt(2 / (fan_in + fan_out)), the standard deviation"""
    a = math.sqrt(2.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=(fan_in, fan_out)).astype(np.float32)


def xavier_uniform__no_sqrt(fan_in, fan_out, rng):
    """the square root is missing"""
    a = 6.0 / (fan_in + fan_out)
    return rng.uniform(-a, a, size=(fan_in, fan_out)).astype(np.float32)


def xavier_uniform__fixed_seed(fan_in, fan_out, rng):
    """differently seeded generators gave the same array"""
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return np.random.default_rng(42).uniform(-a, a, size=(fan_in, fan_out)).astype(np.float32)


# Written after the checks, graded once before any change to them (see the report).


def count_parameters__float_result(sizes):
    """expected an int"""
    return float(sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))) + 0.5


def normal_init__std_one(shape, var, rng):
    """the sample standard deviation is"""
    return rng.standard_normal(shape).astype(np.float32)


def kaiming_normal__xavier(fan_in, fan_out, rng):
    """that is Xavier"""
    return rng.normal(0, math.sqrt(2 / (fan_in + fan_out)), size=(fan_in, fan_out)).astype(np.float32)


def xavier_uniform__unit(fan_in, fan_out, rng):
    """None"""
    return rng.uniform(-1, 1, size=(fan_in, fan_out)).astype(np.float32)
