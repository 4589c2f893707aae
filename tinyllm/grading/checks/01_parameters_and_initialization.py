"""Graded checks for exercises/01_parameters_and_initialization.ipynb.

``layer_stats`` is compared with a float64 reference on hidden networks (other widths per layer, batch sizes and
activations). ``choose_gain`` is judged by re-running the experiment the exercise fixes (seeded draws, the candidate
gains 0.50 ... 3.00) with the learner's gain: it must keep every layer's std in [0.5, 2], and be the smallest
such candidate. ``linear_weight`` is judged on large samples (shape, dtype, mean, std, the normal's tails) and on
its use of the generator; it is then plugged into the library (``plug.use(linear_weight=...)``), whose
``tinyllm.nn.Linear`` layers build a deep ReLU network that must carry its signal.
"""
from __future__ import annotations

import math

import numpy as np

from tinyllm.grading.core import (CallError, Exercise, Fail, array, call, call_seeing_args, close, diagnose, number, unchanged,
                                  with_args)

EXERCISES: list[Exercise] = []
NORMAL_TAIL = 0.0455            # P(|x - mu| > 2 sigma) of a normal distribution
ACTS = {"relu": lambda z: np.maximum(z, 0.0), "tanh": np.tanh, "linear": lambda z: z}
GAINS = np.round(np.arange(50, 301) / 100, 2)


def ref_layer_stats(x, weights, activation, *, pre=False, ddof=0, with_input=False, chain=True, axis=None):
    """Reference (and, with the keyword options, typical mistakes) of layer_stats."""
    f = ACTS[activation]
    h = np.asarray(x, dtype=np.float64)
    rows = [(h.mean(), h.std(ddof=ddof))] if with_input else []
    for W in weights:
        z = (h if chain else x) @ W
        h = f(z)
        s = z if pre else h
        rows.append((s.mean(axis=axis).mean(), s.std(axis=axis, ddof=ddof).mean()) if axis is not None
                    else (s.mean(), s.std(ddof=ddof)))
    return np.array(rows, dtype=np.float64)


# --- layer_stats ---------------------------------------------------------------------------------
ex = Exercise("layer_stats", "Per-layer activation statistics of a deep MLP")
_rng = np.random.default_rng(101)


def _net(sizes, n, gain):
    x = _rng.standard_normal((n, sizes[0]))
    ws = [gain * _rng.standard_normal((a, b)) / math.sqrt(a) for a, b in zip(sizes[:-1], sizes[1:])]
    return x, ws


STATS_CASES = [(*_net([20] * 6, 29, 1.3), "relu"), (*_net([16, 16, 16, 16, 16, 16, 16], 50, 2.0), "tanh"),
               (*_net([24, 40, 17, 33, 8], 37, 1.5), "relu"),
               (*_net([9, 30, 12], 23, 0.8), "linear"),
               (*_net([12] * 12, 64, 1.2), "relu")]


def _judge_stats(cases):
    def judge(rs):
        for (x, ws, act), r in zip(cases, rs):
            what = f"layer_stats(x {x.shape}, {len(ws)} weights, {act!r})"
            got_raw, after = with_args(r)
            got = array(got_raw, what, shape=None, floating=True)
            want = ref_layer_stats(x, ws, act)
            if got.shape == (len(ws) + 1, 2):
                raise Fail(f"{what} returned {len(ws) + 1} rows for {len(ws)} layers: report the output of each "
                           "layer, not the input x")
            if got.shape == (2, len(ws)) != want.shape:
                raise Fail(f"{what} has shape {got.shape}: return one row (mean, std) per layer, shape (L, 2)")
            if got.shape != want.shape:
                raise Fail(f"{what} has shape {got.shape}, expected {want.shape} (one row (mean, std) per layer)")
            if got.dtype != np.float64:
                raise Fail(f"{what} has dtype {got.dtype}, expected float64")
            variants = [
                (f"{what}: these are the statistics of z = h @ W before the activation: apply f first",
                 ref_layer_stats(x, ws, act, pre=True)),
                (f"{what}: the std uses ddof=1; use NumPy's default h.std() (ddof=0)", ref_layer_stats(x, ws, act, ddof=1)),
                (f"{what}: mean and std are taken per unit and averaged: take them over all entries of h",
                 ref_layer_stats(x, ws, act, axis=0)),
                (f"{what}: the activation is ignored ({act!r} is not the identity)", ref_layer_stats(x, ws, "linear")),
                (f"{what}: columns are (std, mean); return (mean, std)", want[:, ::-1]),
            ]
            if all(W.shape[0] == x.shape[1] for W in ws):
                variants.append((f"{what}: every layer reads x: feed each layer the previous layer's output h",
                                 ref_layer_stats(x, ws, act, chain=False)))
            diagnose(got, want, variants, rtol=1e-7, atol=1e-9)
            close(got, want, what, rtol=1e-7, atol=1e-9, hint="h_l = f(h_{l-1} @ W_l); row l-1 = (h_l.mean(), h_l.std())")
            if after is not None:
                unchanged(after[0], x, "x")
    return judge


ex.test("relu and tanh networks of other widths and depths", 1.5,
        [call_seeing_args(x, ws, a) for x, ws, a in STATS_CASES[:3]], _judge_stats(STATS_CASES[:3]))
ex.test("a linear network and a 12-layer ReLU network, inputs unchanged", 1,
        [call_seeing_args(x, ws, a) for x, ws, a in STATS_CASES[3:]], _judge_stats(STATS_CASES[3:]))


def _judge_unknown(rs):
    _judge_stats(STATS_CASES[3:4])(rs[:1])
    r = rs[1]
    if not isinstance(r, CallError):
        raise Fail("layer_stats(x, weights, 'sigmoid') returned a value: raise ValueError for an unknown activation")
    if r.type in ("NotImplementedError", "Missing", "TimeLimit"):
        raise Fail(r.describe("layer_stats(x, weights, 'sigmoid')"))
    if r.type != "ValueError":
        raise Fail(f"layer_stats(x, weights, 'sigmoid') raised {r.type}, expected ValueError naming the activation")


ex.test("an unknown activation raises ValueError (a known one works)", 0.5,
        [call_seeing_args(*STATS_CASES[3]), call(STATS_CASES[3][0], STATS_CASES[3][1], "sigmoid")], _judge_unknown)
EXERCISES.append(ex)


# --- choose_gain ---------------------------------------------------------------------------------
ex = Exercise("choose_gain", "Choose the gain by experiment")


def experiment(depth, width, seed, *, x_last=False):
    """The exercise's draws: x (32, width), then ``depth`` unit-variance (width, width) matrices / sqrt(width)."""
    rng = np.random.default_rng(seed)
    if x_last:
        zs = [rng.standard_normal((width, width)) for _ in range(depth)]
        x = rng.standard_normal((32, width))
    else:
        x = rng.standard_normal((32, width))
        zs = [rng.standard_normal((width, width)) for _ in range(depth)]
    return x, [z / math.sqrt(width) for z in zs]


def stds_for(g, activation, x, zs):
    """Every layer's output std for gain g, stopping at the first one outside [0.5, 2] (then the list is short)."""
    f, h, out = ACTS[activation], x, []
    for z in zs:
        h = f(h @ (g * z))
        out.append(float(h.std()))
        if not 0.5 <= out[-1] <= 2.0:
            break
    return out


def works(g, activation, x, zs):
    s = stds_for(g, activation, x, zs)
    return len(s) == len(zs) and 0.5 <= s[-1] <= 2.0


def ref_choose(activation, depth, width, seed, *, last_only=False, largest=False, x_last=False):
    x, zs = experiment(depth, width, seed, x_last=x_last)
    cands = GAINS[::-1] if largest else GAINS
    for g in cands:
        if last_only:
            h = x
            for z in zs:
                h = ACTS[activation](h @ (g * z))
            if 0.5 <= h.std() <= 2.0:
                return float(g)
        elif works(g, activation, x, zs):
            return float(g)
    return None


GAIN_CASES = [("relu", 40, 128, 3), ("tanh", 30, 96, 5), ("linear", 50, 64, 9)]
WANT_GAIN = {c: ref_choose(*c) for c in GAIN_CASES}
assert all(g is not None for g in WANT_GAIN.values()), WANT_GAIN


def _judge_gain(case):
    act, depth, width, seed = case

    def judge(rs):
        what = f"choose_gain({act!r}, depth={depth}, width={width}, seed={seed})"
        g = number(rs[0], what)
        want = WANT_GAIN[case]
        if g == want:
            return
        x, zs = experiment(depth, width, seed)
        if not 0.5 <= g <= 3.0 or abs(g * 100 - round(g * 100)) > 1e-6:
            raise Fail(f"{what} = {g:g}: pick one of the candidate gains 0.50, 0.51, ..., 3.00")
        s = stds_for(g, act, x, zs)
        diagnose(g, want, [
            (f"{what} = {g:g}: the std of the LAST layer is in [0.5, 2], but not every layer's: check each layer",
             ref_choose(act, depth, width, seed, last_only=True)),
            (f"{what} = {g:g} is the largest gain that works: return the smallest",
             ref_choose(act, depth, width, seed, largest=True)),
            (f"{what} = {g:g}: draw x first, then the {depth} matrices, from one default_rng(seed)",
             ref_choose(act, depth, width, seed, x_last=True)),
        ], rtol=0, atol=1e-9)
        if len(s) < depth or not 0.5 <= s[-1] <= 2.0:
            raise Fail(f"{what} = {g:g}: with this gain the std of layer {len(s)} is {s[-1]:.4g}, outside [0.5, 2]")
        raise Fail(f"{what} = {g:g} works, but a smaller candidate gain works too: return the smallest")
    return judge


for case, pts in zip(GAIN_CASES, (1.5, 1.5, 1)):
    ex.test(f"{case[0]}, depth {case[1]}, width {case[2]}: every layer's std in [0.5, 2], the smallest such gain", pts,
            [call(case[0], depth=case[1], width=case[2], seed=case[3])], _judge_gain(case))
EXERCISES.append(ex)


# --- linear_weight -------------------------------------------------------------------------------
ex = Exercise("linear_weight", "He initialisation with the measured gain")


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


FANS = [(400, 100), (64, 1000)]


def _judge_weight(rs):
    for k, (fan_in, fan_out) in enumerate(FANS):
        what = f"linear_weight({fan_in}, {fan_out}, rng)"
        w = _seeded(what, (fan_in, fan_out), rs[3 * k:3 * k + 3])
        std, want = float(w.std()), math.sqrt(2.0 / fan_in)
        wrong = {"sqrt(2 / fan_out)": math.sqrt(2.0 / fan_out),
                 "sqrt(1 / fan_in) (the gain sqrt(2) for ReLU is missing)": math.sqrt(1.0 / fan_in),
                 "sqrt(2 / (fan_in + fan_out)) (that is Xavier)": math.sqrt(2.0 / (fan_in + fan_out)),
                 "2 / fan_in (the variance passed as the standard deviation)": 2.0 / fan_in,
                 "2 / sqrt(fan_in) (gain^2 instead of gain)": 2.0 / math.sqrt(fan_in)}
        for name, s in wrong.items():
            if abs(std - s) < 0.03 * s and abs(s - want) > 0.1 * want:
                raise Fail(f"{what}: the standard deviation is {std:.4f} = {name}; the gain g = sqrt(2) gives "
                           f"std = g / sqrt(fan_in) = {want:.4f}")
        if abs(std - want) > 0.03 * want or abs(float(w.mean())) > 0.05 * want:
            raise Fail(f"{what}: the sample has mean {float(w.mean()):.4f} and std {std:.4f}; expected mean 0 and "
                       f"std sqrt(2) / sqrt(fan_in) = {want:.4f}")
        z = np.abs(w.astype(np.float64) - w.mean()) / max(std, 1e-30)
        tail = float((z > 2).mean())
        if abs(tail - NORMAL_TAIL) > 0.012:
            raise Fail(f"{what}: {100 * tail:.2f}% of the values lie beyond 2 standard deviations, a normal "
                       f"distribution has {100 * NORMAL_TAIL:.1f}%: draw from a normal (rng.normal), not a uniform")


ex.test("shape (fan_in, fan_out), float32, normal with std sqrt(2 / fan_in), from rng", 3,
        [call(fi, fo, np.random.default_rng(s)) for fi, fo in FANS for s in (2, 2, 3)], _judge_weight)
EXERCISES.append(ex)


# --- end to end: tinyllm's Linear layers start from the learner's initialiser ----------------------
E2E_DEPTH, E2E_WIDTH = 20, 128
E2E_X = np.random.default_rng(7).standard_normal((64, E2E_WIDTH)).astype(np.float32)


def _deep_relu_net(seed):
    from tinyllm.nn import Linear, ReLU, Sequential

    layers = [(Linear(E2E_WIDTH, E2E_WIDTH, bias=False, rng=np.random.default_rng(seed + i)), ReLU())
              for i in range(E2E_DEPTH)]                    # a generator per layer: independent weights
    return Sequential(*[m for pair in layers for m in pair])


def _run_library(learner):
    from tinyllm import plug

    with plug.use(linear_weight=learner.linear_weight):
        net = _deep_relu_net(300)
    default = _deep_relu_net(300)
    w = net.layers[0].weight.data
    if w.dtype != np.float32 or np.array_equal(w, default.layers[0].weight.data):
        raise Fail("tinyllm's Linear did not take its weight from your linear_weight")
    h, stds = E2E_X, []
    for lin, act in zip(net.layers[::2], net.layers[1::2]):
        h = act.forward(lin.forward(h))
        stds.append(float(h.std()))
    bad = [(i + 1, s) for i, s in enumerate(stds) if not 0.5 <= s <= 2.0]
    if bad:
        layer, s = bad[0]
        raise Fail(f"a {E2E_DEPTH}-layer ReLU network of tinyllm's Linear layers initialised by your linear_weight has "
                   f"std {s:.3g} after layer {layer}, outside [0.5, 2]: check the gain")


ex.end_to_end(f"tinyllm's Linear layers start from your initialiser: a {E2E_DEPTH}-layer ReLU net keeps std in [0.5, 2]",
              2, _run_library)
