"""Graded checks for exercises/01_parameters_and_initialization.ipynb.

Initialisers draw random numbers, so they are judged on properties (shape, dtype,
seeded reproducibility, mean and standard deviation of a large sample against the
formula that ``tinyllm.init`` implements), not on exact values.
"""
from __future__ import annotations

import math

import numpy as np

from tinyllm import init as tinit
from tinyllm.grading.core import Exercise, Fail, array, call, close, number, value
from tinyllm.nn.linear import Linear

EXERCISES: list[Exercise] = []

# --- count_parameters --------------------------------------------------------------------------
ex = Exercise("count_parameters", "Count the parameters of an MLP")
cases = [[784, 128, 10], [3, 1], [10, 20, 30, 40], [512, 2048, 512]]


def ref_count(sizes):
    """The parameter count of the library's MLP: ``tinyllm.nn.Linear`` layers IN -> OUT with biases."""
    return sum(Linear(a, b, rng=np.random.default_rng(0)).num_parameters() for a, b in zip(sizes[:-1], sizes[1:]))


WANT_COUNTS = [ref_count(s) for s in cases]


def _judge_count(rs):
    for sizes, r in zip(cases, rs):
        got = value(r, f"count_parameters({sizes})")
        if isinstance(got, (float, np.floating)) and float(got).is_integer():
            got = int(got)
        if not isinstance(got, (int, np.integer)) or isinstance(got, bool):
            raise Fail(f"count_parameters({sizes}) returned {type(got).__name__}, expected an int")
        want = WANT_COUNTS[cases.index(sizes)]
        weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
        if got == weights:
            raise Fail(f"count_parameters({sizes}) = {got} counts only the weights: each layer also has OUT biases")
        if got != want:
            raise Fail(f"count_parameters({sizes}) = {got}, expected {want}: a layer IN -> OUT has IN*OUT weights + OUT biases")


ex.test("weights and biases of every layer", 2, [call(s) for s in cases], _judge_count)
EXERCISES.append(ex)

# --- normal_init -------------------------------------------------------------------------------
ex = Exercise("normal_init", "Draw from N(0, sigma^2) given the variance")
SHAPE = (200, 300)


def _judge_normal(var):
    def judge(rs):
        w = array(rs[0], f"normal_init({SHAPE}, var={var}, rng)", shape=SHAPE, dtype=np.float32)
        w2 = array(rs[1], "a second call with the same seed", shape=SHAPE)
        if not np.array_equal(w, w2):
            raise Fail("two calls with the same seed gave different arrays: draw from the rng argument, "
                       "not from np.random directly")
        want = math.sqrt(var)
        std = float(w.std())
        if abs(std - var) < 0.05 * var and abs(var - want) > 0.1 * want:
            raise Fail(f"the samples have standard deviation {std:.3f} = var: N(0, {var}) has variance {var}, so "
                       f"its standard deviation is sqrt({var}) = {want:.3f}. Pass scale=np.sqrt(var)")
        if abs(float(w.mean())) > 0.05 * want + 1e-3:
            raise Fail(f"the sample mean is {float(w.mean()):.3f}, expected about 0")
        if abs(std - want) > 0.05 * want:
            raise Fail(f"the sample standard deviation is {std:.4f}, expected sqrt(var) = {want:.4f}")
    return judge


for var in (0.1, 4.0):
    ex.test(f"variance {var} (std = sqrt(var)), float32, seeded", 1.5,
            [call(SHAPE, var, np.random.default_rng(1)), call(SHAPE, var, np.random.default_rng(1))], _judge_normal(var))
EXERCISES.append(ex)

# --- kaiming_normal ----------------------------------------------------------------------------
ex = Exercise("kaiming_normal", "He/Kaiming normal initialisation for ReLU layers")
FAN_IN, FAN_OUT = 400, 100
_lib = tinit.kaiming_normal((FAN_IN, FAN_OUT), "relu", rng=np.random.default_rng(0))   # the library's draw
WANT_STD = math.sqrt(2.0 / FAN_IN)
assert abs(float(_lib.std()) - WANT_STD) < 0.03 * WANT_STD


def _judge_kaiming(rs):
    w = array(rs[0], f"kaiming_normal({FAN_IN}, {FAN_OUT}, rng)", shape=(FAN_IN, FAN_OUT), dtype=np.float32)
    std = float(w.std())
    wrong = {"sqrt(2 / fan_out)": math.sqrt(2.0 / FAN_OUT), "sqrt(1 / fan_in) (the gain of 2 for ReLU is missing)":
             math.sqrt(1.0 / FAN_IN), "sqrt(2 / (fan_in + fan_out)) (that is Xavier)": math.sqrt(2.0 / (FAN_IN + FAN_OUT)),
             "2 / fan_in (a variance, not a standard deviation)": 2.0 / FAN_IN}
    for name, s in wrong.items():
        if abs(std - s) < 0.03 * s:
            raise Fail(f"the standard deviation is {std:.4f} = {name}; Kaiming for ReLU uses std = sqrt(2 / fan_in) = {WANT_STD:.4f}")
    if abs(std - WANT_STD) > 0.03 * WANT_STD or abs(float(w.mean())) > 0.01:
        raise Fail(f"the sample has mean {float(w.mean()):.4f} and std {std:.4f}; expected mean 0 and std "
                   f"sqrt(2 / fan_in) = {WANT_STD:.4f}")


ex.test("shape (fan_in, fan_out), float32, std sqrt(2 / fan_in)", 2,
        [call(FAN_IN, FAN_OUT, np.random.default_rng(2))], _judge_kaiming)
EXERCISES.append(ex)

# --- xavier_uniform ----------------------------------------------------------------------------
ex = Exercise("xavier_uniform", "Xavier/Glorot uniform initialisation")
XI, XO = 300, 200
BOUND = math.sqrt(6.0 / (XI + XO))
_xlib = tinit.xavier_uniform((XI, XO), rng=np.random.default_rng(0))   # the library's draw fills (-BOUND, BOUND)
assert float(np.abs(_xlib).max()) <= BOUND and float(np.abs(_xlib).max()) > 0.99 * BOUND


def _judge_xavier(rs):
    w = array(rs[0], f"xavier_uniform({XI}, {XO}, rng)", shape=(XI, XO), dtype=np.float32)
    hi, lo = float(w.max()), float(w.min())
    if lo >= 0:
        raise Fail(f"all values are >= 0 (min {lo:.3f}): draw from U(-a, a), symmetric around 0")
    if max(hi, -lo) > BOUND * 1.0001:
        raise Fail(f"values reach {max(hi, -lo):.4f}, beyond the bound a = sqrt(6 / (fan_in + fan_out)) = {BOUND:.4f}")
    if max(hi, -lo) < 0.95 * BOUND:
        raise Fail(f"values stay within {max(hi, -lo):.4f}, expected them to fill (-a, a) with a = "
                   f"sqrt(6 / (fan_in + fan_out)) = {BOUND:.4f}")
    close(w.std(), BOUND / math.sqrt(3.0), "the standard deviation", rtol=0.03, hint="a uniform U(-a, a) has std a / sqrt(3)")


ex.test("U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), float32", 2, [call(XI, XO, np.random.default_rng(3))], _judge_xavier)
EXERCISES.append(ex)
