"""Graded checks for exercises/01_parameters_and_initialization.ipynb.

Initialisers draw random numbers, so they are judged on properties of large samples (shape, dtype,
mean, standard deviation, the share of values beyond two standard deviations that tells a normal from
a uniform, the bound of a uniform) against the formulas that ``tinyllm.init`` implements, and on the
generator: two generators seeded alike give the same array, a differently seeded one a different array.
"""
from __future__ import annotations

import math

import numpy as np

from tinyllm import init as tinit
from tinyllm.grading.core import Exercise, Fail, array, call, value
from tinyllm.nn.linear import Linear

EXERCISES: list[Exercise] = []
NORMAL_TAIL = 0.0455            # P(|x - mu| > 2 sigma) of a normal distribution


def _seeded(what, shape, rs):
    """The first of three draws (seeds 1, 1, 2), after checking shape, dtype and the use of the generator."""
    w = array(rs[0], what, shape=shape, dtype=np.float32)
    w2 = array(rs[1], f"{what} with a second generator seeded alike", shape=shape)
    w3 = array(rs[2], f"{what} with a differently seeded generator", shape=shape)
    if not np.array_equal(w, w2):
        raise Fail(f"two generators seeded alike gave different arrays for {what}: draw every number from the rng "
                   "argument (not from np.random or a generator of your own)")
    if np.array_equal(w, w3):
        raise Fail(f"differently seeded generators gave the same array for {what}: draw from the rng argument "
                   "instead of a generator with a fixed seed")
    return w


def _normal_shape(w, what):
    """Fail unless the sample's tails look normal (about 4.6% beyond two standard deviations)."""
    z = np.abs(w.astype(np.float64) - w.mean()) / max(float(w.std()), 1e-30)
    tail = float((z > 2).mean())
    if tail < 0.02:
        raise Fail(f"{what}: only {100 * tail:.2f}% of the values lie beyond 2 standard deviations, a normal "
                   f"distribution has {100 * NORMAL_TAIL:.1f}%: draw from a normal (rng.normal), not a uniform")
    if abs(tail - NORMAL_TAIL) > 0.012:
        raise Fail(f"{what}: {100 * tail:.2f}% of the values lie beyond 2 standard deviations, a normal "
                   f"distribution has {100 * NORMAL_TAIL:.1f}%")


# --- count_parameters --------------------------------------------------------------------------
ex = Exercise("count_parameters", "Count the parameters of an MLP")
cases = [[784, 128, 10], [3, 1], [10, 20, 30, 40], [512, 2048, 512], [7, 3, 5, 2, 9], [1, 1000, 1]]


def ref_count(sizes):
    """The parameter count of the library's MLP: ``tinyllm.nn.Linear`` layers IN -> OUT with biases."""
    return sum(Linear(a, b, rng=np.random.default_rng(0)).num_parameters() for a, b in zip(sizes[:-1], sizes[1:]))


WANT_COUNTS = [ref_count(s) for s in cases]


def _count_mistakes(sizes):
    layers = list(zip(sizes[:-1], sizes[1:]))
    weights = sum(a * b for a, b in layers)
    return [(weights, "counts only the weights: each layer also has OUT biases"),
            (weights + sum(a for a, _ in layers), "counts IN biases per layer: a layer IN -> OUT has OUT biases, one per output"),
            (weights + len(layers), "counts one bias per layer: a layer IN -> OUT has OUT biases, one per output"),
            (weights + sum(sizes), "counts biases for the input layer too: only the layers after the input have biases")]


def _judge_count(rs):
    for sizes, r, want in zip(cases, rs, WANT_COUNTS):
        got = value(r, f"count_parameters({sizes})")
        if isinstance(got, (float, np.floating)) and float(got).is_integer():
            got = int(got)
        if not isinstance(got, (int, np.integer)) or isinstance(got, bool):
            raise Fail(f"count_parameters({sizes}) returned {type(got).__name__}, expected an int")
        if got != want:
            for wrong, why in _count_mistakes(sizes):
                if got == wrong != want:
                    raise Fail(f"count_parameters({sizes}) = {got} {why}")
            raise Fail(f"count_parameters({sizes}) = {got}, expected {want}: a layer IN -> OUT has IN*OUT weights + OUT biases")


ex.test("weights and biases of every layer", 2, [call(s) for s in cases], _judge_count)
EXERCISES.append(ex)

# --- normal_init -------------------------------------------------------------------------------
ex = Exercise("normal_init", "Draw from N(0, sigma^2) given the variance")


def _judge_normal(shape, var):
    def judge(rs):
        what = f"normal_init({shape}, var={var}, rng)"
        w = _seeded(what, shape, rs)
        want = math.sqrt(var)
        std = float(w.std())
        if abs(std - var) < 0.03 * var and abs(var - want) > 0.1 * want:
            raise Fail(f"the samples have standard deviation {std:.3f} = var: N(0, {var}) has variance {var}, so "
                       f"its standard deviation is sqrt({var}) = {want:.3f}. Pass scale=np.sqrt(var)")
        if abs(float(w.mean())) > 0.05 * want + 1e-3:
            raise Fail(f"{what}: the sample mean is {float(w.mean()):.3f}, expected about 0")
        if abs(std - want) > 0.03 * want:
            raise Fail(f"{what}: the sample standard deviation is {std:.4f}, expected sqrt(var) = {want:.4f}")
        _normal_shape(w, what)
    return judge


for shape, var in (((200, 300), 0.1), ((30, 40, 50), 4.0)):
    ex.test(f"variance {var} (std = sqrt(var)), shape {shape}, float32, from rng", 1.5,
            [call(shape, var, np.random.default_rng(1)), call(shape, var, np.random.default_rng(1)),
             call(shape, var, np.random.default_rng(2))], _judge_normal(shape, var))
EXERCISES.append(ex)

# --- kaiming_normal ----------------------------------------------------------------------------
ex = Exercise("kaiming_normal", "He/Kaiming normal initialisation for ReLU layers")
FANS = [(400, 100), (64, 1000)]
_lib = tinit.kaiming_normal(FANS[0], "relu", rng=np.random.default_rng(0))   # the library's draw
assert abs(float(_lib.std()) - math.sqrt(2.0 / FANS[0][0])) < 0.03 * math.sqrt(2.0 / FANS[0][0])


def _judge_kaiming(rs):
    for k, (fan_in, fan_out) in enumerate(FANS):
        what = f"kaiming_normal({fan_in}, {fan_out}, rng)"
        w = _seeded(what, (fan_in, fan_out), rs[3 * k:3 * k + 3])
        std, want = float(w.std()), math.sqrt(2.0 / fan_in)
        wrong = {"sqrt(2 / fan_out)": math.sqrt(2.0 / fan_out),
                 "sqrt(1 / fan_in) (the gain of 2 for ReLU is missing)": math.sqrt(1.0 / fan_in),
                 "sqrt(2 / (fan_in + fan_out)) (that is Xavier)": math.sqrt(2.0 / (fan_in + fan_out)),
                 "2 / fan_in (a variance, not a standard deviation)": 2.0 / fan_in}
        for name, s in wrong.items():
            if abs(std - s) < 0.03 * s and abs(s - want) > 0.1 * want:
                raise Fail(f"{what}: the standard deviation is {std:.4f} = {name}; Kaiming for ReLU uses "
                           f"std = sqrt(2 / fan_in) = {want:.4f}")
        if abs(std - want) > 0.03 * want or abs(float(w.mean())) > 0.05 * want:
            raise Fail(f"{what}: the sample has mean {float(w.mean()):.4f} and std {std:.4f}; expected mean 0 and "
                       f"std sqrt(2 / fan_in) = {want:.4f}")
        _normal_shape(w, what)


ex.test("shape (fan_in, fan_out), float32, normal with std sqrt(2 / fan_in), from rng", 2,
        [call(fi, fo, np.random.default_rng(s)) for fi, fo in FANS for s in (2, 2, 3)], _judge_kaiming)
EXERCISES.append(ex)

# --- xavier_uniform ----------------------------------------------------------------------------
ex = Exercise("xavier_uniform", "Xavier/Glorot uniform initialisation")
XFANS = [(300, 200), (50, 700)]
_xb = math.sqrt(6.0 / sum(XFANS[0]))
_xlib = tinit.xavier_uniform(XFANS[0], rng=np.random.default_rng(0))   # the library's draw fills (-a, a)
assert float(np.abs(_xlib).max()) <= _xb and float(np.abs(_xlib).max()) > 0.99 * _xb


def _judge_xavier(rs):
    for k, (fi, fo) in enumerate(XFANS):
        what = f"xavier_uniform({fi}, {fo}, rng)"
        w = _seeded(what, (fi, fo), rs[3 * k:3 * k + 3])
        bound = math.sqrt(6.0 / (fi + fo))
        hi, lo = float(w.max()), float(w.min())
        reach = max(hi, -lo)
        if lo >= 0:
            raise Fail(f"{what}: all values are >= 0 (min {lo:.3f}): draw from U(-a, a), symmetric around 0")
        if reach > bound * 1.0001 and abs(float(w.std()) - bound / math.sqrt(3)) < 0.03 * bound / math.sqrt(3):
            raise Fail(f"{what}: the values have Xavier's standard deviation but reach {reach:.4f}, beyond the bound "
                       f"a = {bound:.4f}: they are normal (Xavier normal); draw from the uniform U(-a, a)")
        wrong = {"sqrt(6 / fan_in)": math.sqrt(6.0 / fi), "sqrt(6 / fan_out)": math.sqrt(6.0 / fo),
                 "sqrt(2 / (fan_in + fan_out)), the standard deviation": math.sqrt(2.0 / (fi + fo)),
                 "sqrt(1 / (fan_in + fan_out))": math.sqrt(1.0 / (fi + fo)),
                 "6 / (fan_in + fan_out) (the square root is missing)": 6.0 / (fi + fo)}
        for name, a in wrong.items():
            if abs(reach - a) < 0.01 * a and abs(a - bound) > 0.05 * bound:
                raise Fail(f"{what}: the values fill (-{reach:.4f}, {reach:.4f}), a bound of {name}; "
                           f"Xavier uses a = sqrt(6 / (fan_in + fan_out)) = {bound:.4f}")
        if reach > bound * 1.0001:
            raise Fail(f"{what}: values reach {reach:.4f}, beyond the bound a = sqrt(6 / (fan_in + fan_out)) = {bound:.4f}")
        if reach < 0.99 * bound:
            raise Fail(f"{what}: values stay within {reach:.4f}, expected them to fill (-a, a) with a = "
                       f"sqrt(6 / (fan_in + fan_out)) = {bound:.4f}")
        if abs(float(w.std()) - bound / math.sqrt(3)) > 0.03 * bound / math.sqrt(3) or abs(float(w.mean())) > 0.05 * bound:
            raise Fail(f"{what}: mean {float(w.mean()):.4f} and std {float(w.std()):.4f}, expected 0 and "
                       f"a / sqrt(3) = {bound / math.sqrt(3):.4f} for U(-a, a): draw uniformly")


ex.test("U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), float32, from rng", 2,
        [call(fi, fo, np.random.default_rng(s)) for fi, fo in XFANS for s in (3, 3, 4)], _judge_xavier)
EXERCISES.append(ex)
