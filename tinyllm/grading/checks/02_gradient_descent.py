"""Graded checks for exercises/02_gradient_descent.ipynb.

The references are the library's: ``tinyllm.optim.SGD`` (momentum) and ``tinyllm.optim.Adam`` run in float64
from the given state (they follow PyTorch's update rules), one step for ``sgd_momentum_step``/``adam_step`` and a
whole training run on hidden data with non-default hyperparameters for ``fit_linear`` (the fitted parameters and
the loss history). The variants used to recognise typical mistakes (no bias correction, the loss recorded after
the step, ...) are written out here: a message names a mistake only when the learner's result equals that
variant's result. End to end, ``tinyllm.optim.Adam`` trains a ``tinyllm.nn.Linear`` through the plug point
``adam_step`` with the learner's function and must give the library's own losses.
"""
from __future__ import annotations

import numpy as np

from tinyllm.grading.core import (Exercise, Fail, array, call, call_seeing_args, close, diagnose, number, unchanged,
                                  value, with_args)
from tinyllm.nn.module import Parameter
from tinyllm.optim import SGD, Adam

rng = np.random.default_rng(202)
EXERCISES: list[Exercise] = []


def _pair(r, what, n=2, names="(dw, db)"):
    r = value(r, what)
    if not isinstance(r, (tuple, list)) or len(r) != n:
        raise Fail(f"{what} must return a tuple {names}, got {type(r).__name__}"
                   + (f" of length {len(r)}" if isinstance(r, (tuple, list)) else ""))
    return r


# --- MSE loss and gradient of linear regression ---------------------------------------------------
ex = Exercise("mse_loss_and_grad", "Loss and gradient of linear regression")


def ref_mse(w, b, x, y):
    """(mean((x @ w + b - y)^2), dL/dw = 2/N x^T e, dL/db = 2 mean(e)) in float64."""
    x, y, w = (np.asarray(a, dtype=np.float64) for a in (x, y, w))
    e = x @ w + b - y
    return float(np.mean(e * e)), 2.0 * x.T @ e / len(y), float(2.0 * np.mean(e))


def _mse_case(n, d, seed):
    r = np.random.default_rng(seed)
    x = r.uniform(-2, 3, (n, d))
    w_true = r.standard_normal(d)
    y = x @ w_true + 0.7 + 0.2 * r.standard_normal(n)
    return r.standard_normal(d), float(r.normal()), x, y


MSE_CASES = [_mse_case(50, 3, 1), _mse_case(17, 1, 2), _mse_case(40, 5, 3)]


def _loss_grad(r, what, d):
    r = value(r, what)
    if not isinstance(r, (tuple, list)) or len(r) != 3:
        raise Fail(f"{what} must return a tuple (loss, dw, db), got {type(r).__name__}"
                   + (f" of length {len(r)}" if isinstance(r, (tuple, list)) else ""))
    loss = number(r[0], f"the loss of {what}")
    dw = array(r[1], f"dw of {what}", shape=(d,), floating=True)
    db = number(r[2], f"db of {what}")
    return loss, dw, db


def _judge_mse(cases, part):
    def judge(rs):
        for (w, b, x, y), r in zip(cases, rs):
            what = f"mse_loss_and_grad(w {w.shape}, b, x {x.shape}, y)"
            got_r, after = with_args(r)
            loss, dw, db = _loss_grad(got_r, what, len(w))
            L, DW, DB = ref_mse(w, b, x, y)
            e = x @ w + b - y
            if part == "loss":
                diagnose(loss, L, [
                    (f"{what} returned the sum of squared errors as the loss: take the mean", np.sum(e ** 2)),
                    (f"{what} returned half the mean squared error: this lesson's loss is mean(e^2) without 1/2", L / 2),
                    (f"{what} returned the root of the mean squared error: do not take the square root", np.sqrt(L)),
                    (f"{what} squares the mean error: square each error, then take the mean", np.mean(e) ** 2),
                ], rtol=1e-7, atol=1e-12)
                close(loss, L, f"the loss of {what}", rtol=1e-7, atol=1e-12, hint="mean((x @ w + b - y) ** 2)")
            else:
                got = np.concatenate([dw, [db]])
                want = np.concatenate([DW, [DB]])
                diagnose(got, want, [
                    (f"{what}: the gradient is N times too large: divide by N (the loss is a mean)",
                     np.concatenate([2 * x.T @ e, [2 * e.sum()]])),
                    (f"{what}: the gradient is half the right one: keep the factor 2 of d(e^2)/de = 2e", want / 2),
                    (f"{what}: the gradient has the wrong sign: e = x @ w + b - y, not y - (x @ w + b)", -want),
                    (f"{what}: dw is missing the factor x: dw = 2/N x^T e", np.concatenate([np.full(len(w), 2 * e.mean()), [DB]])),
                ], rtol=1e-7, atol=1e-10)
                close(got, want, f"(dw, db) of {what}", rtol=1e-7, atol=1e-10, hint="dw = 2 x.T @ e / N, db = 2 mean(e)")
                if after is not None:
                    unchanged(after[0], w, "w")
                    unchanged(after[2], x, "x")
    return judge


ex.test("the loss mean((x @ w + b - y)^2) on three data sets", 1.5,
        [call(*c) for c in MSE_CASES], _judge_mse(MSE_CASES, "loss"))
ex.test("the gradient (2/N x^T e, 2 mean(e)) on three data sets, inputs unchanged", 2.5,
        [call_seeing_args(*c) for c in MSE_CASES], _judge_mse(MSE_CASES, "grad"))
EXERCISES.append(ex)

# --- SGD with momentum -------------------------------------------------------------------------
ex = Exercise("sgd_momentum_step", "SGD with momentum (PyTorch's form)")
p0 = rng.standard_normal(6).astype(np.float32)
g0 = rng.standard_normal(6).astype(np.float32)
v0 = rng.standard_normal(6).astype(np.float32)
MOM_CASES = [(p0, g0, v0, 0.1, 0.9), (p0, g0, v0, 0.05, 0.5), (p0[:4].reshape(2, 2), g0[:4].reshape(2, 2),
                                                              np.zeros((2, 2), np.float32), 0.3, 0.99)]


def lib_momentum_step(param, grad, velocity, lr, momentum):
    """One step of tinyllm.optim.SGD(momentum) from a given velocity, in float64."""
    p = Parameter(param.astype(np.float64))
    opt = SGD([p], lr=lr, momentum=momentum)
    opt.state["momentum_buffer"][0][...] = velocity
    opt.step_count = 1
    p.grad[...] = grad
    opt.step()
    return p.data, opt.state["momentum_buffer"][0]


def _judge_momentum(rs):
    for k, ((p_in, g, vel, lr, mu), r) in enumerate(zip(MOM_CASES, rs)):
        what = f"sgd_momentum_step(param, grad, velocity, lr={lr}, momentum={mu})"
        of = f" of {what}" if k else ""
        got, after = with_args(r)
        p, v = _pair(got, what, names="(param, velocity)")
        p = array(p, f"the new param{of}", shape=p_in.shape, floating=True)
        v = array(v, f"the new velocity{of}", shape=p_in.shape, floating=True)
        want_p, want_v = lib_momentum_step(p_in, g, vel, lr, mu)
        p64, g64, v64 = (a.astype(np.float64) for a in (p_in, g, vel))
        both, want = np.concatenate([p.ravel(), v.ravel()]), np.concatenate([want_p.ravel(), want_v.ravel()])
        ema = mu * v64 + (1 - mu) * g64
        sut = mu * v64 - lr * g64
        diagnose(both, want, [
            ("the velocity is an exponential average (1 - momentum) * grad: PyTorch's SGD adds the full gradient, "
             "v = momentum * v + grad", np.concatenate([(p64 - lr * ema).ravel(), ema.ravel()])),
            ("the parameter steps along the old velocity: update v first, then param - lr * v with the new v",
             np.concatenate([(p64 - lr * vel).ravel(), want_v.ravel()])),
            ("the parameter moved by the gradient alone: step along the velocity, param - lr * v",
             np.concatenate([(p64 - lr * g64).ravel(), want_v.ravel()])),
            ("the velocity holds lr * grad (v = momentum * v - lr * grad, the Sutskever form): PyTorch's form is "
             "v = momentum * v + grad, then param - lr * v", np.concatenate([(p64 + sut).ravel(), sut.ravel()])),
            (f"{what} uses momentum 0.9 whatever momentum is: use the momentum argument",
             np.concatenate([a.ravel() for a in lib_momentum_step(p_in, g, vel, lr, 0.9)])),
        ], atol=1e-6)
        close(v, want_v, f"the new velocity of {what}", atol=1e-6, hint="v = momentum * v + grad")
        close(p, want_p, f"the new param of {what}", atol=1e-6, hint="param = param - lr * v (with the new v)")
        if after:
            unchanged(after[0], p_in, "param", "the exercise asks for new arrays")
            unchanged(after[2], vel, "velocity", "the exercise asks for new arrays")


ex.test("one step from a given velocity, three momentums, inputs unchanged", 2,
        [call_seeing_args(*c) for c in MOM_CASES], _judge_momentum)
EXERCISES.append(ex)

# --- Adam --------------------------------------------------------------------------------------
ex = Exercise("adam_step", "One Adam step with bias correction")
pa = rng.standard_normal(8).astype(np.float32)
ga = rng.standard_normal(8).astype(np.float32)
ma = (0.1 * rng.standard_normal(8)).astype(np.float32)
va = (0.01 * rng.random(8)).astype(np.float32)
gz = ga.copy()
gz[::3] = 0.0                                                       # some gradients are exactly zero


def ref_adam(p, g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8, bias_correction=True, eps_inside=False, t_used=None):
    if bias_correction and not eps_inside and t_used is None:   # the library's Adam, one step, in float64
        param = Parameter(p.astype(np.float64))
        opt = Adam([param], lr=lr, betas=(b1, b2), eps=eps)
        opt.state["exp_avg"][0][...] = m
        opt.state["exp_avg_sq"][0][...] = v
        opt.step_count = t - 1
        param.grad[...] = g
        opt.step()
        return param.data, opt.state["exp_avg"][0], opt.state["exp_avg_sq"][0]
    tt = t if t_used is None else t_used
    p, g, m, v = (a.astype(np.float64) for a in (p, g, m, v))
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mh, vh = (m / (1 - b1 ** tt), v / (1 - b2 ** tt)) if bias_correction else (m, v)
    return (p - lr * mh / (np.sqrt(vh + eps) if eps_inside else np.sqrt(vh) + eps)), m, v


def _adam_triplet(r, what, shape):
    p, m, v = _pair(r, what, n=3, names="(param, m, v)")
    return (array(p, f"the new param of {what}", shape=shape, floating=True),
            array(m, f"the new m of {what}", shape=shape, floating=True),
            array(v, f"the new v of {what}", shape=shape, floating=True))


def _judge_adam(p0_, g, m0, v0_, t, lr, kw):
    args = ", ".join(f"{k}={x}" for k, x in kw.items())
    what = f"adam_step(param, grad, m, v, t={t}, lr={lr}{', ' + args if args else ''})"
    b1, b2, eps = kw.get("beta1", 0.9), kw.get("beta2", 0.999), kw.get("eps", 1e-8)

    def judge(rs):
        p, m, v = _adam_triplet(rs[0], what, p0_.shape)
        want_p, want_m, want_v = ref_adam(p0_, g, m0, v0_, t, lr, b1, b2, eps)
        got = np.concatenate([p, m, v])
        want = np.concatenate([want_p, want_m, want_v])

        def var(**k):
            with np.errstate(all="ignore"):                  # eps = 0 divides 0 by 0 where v is zero
                return np.concatenate(ref_adam(p0_, g, m0, v0_, t, lr, **{"b1": b1, "b2": b2, "eps": eps, **k}))

        mh, vh = want_m / (1 - b1 ** t), want_v / (1 - b2 ** t)
        if not np.isfinite(p).all() and np.isfinite(want_p).all():
            bad = ~np.isfinite(p)
            if (want_v[bad] == 0).all():
                raise Fail(f"{what} gives NaN/inf where the gradient and v are zero: add eps to sqrt(v_hat) "
                           "(outside the square root)")
            raise Fail(f"{what}: the new param contains NaN or inf at index {int(np.argmax(bad))}")
        diagnose(got, want, [
            ("the step has no bias correction: divide m by (1 - beta1**t) and v by (1 - beta2**t) (m and v start "
             "at zero, so at t=1 the step is about 3x too small without it); apply bias correction",
             var(bias_correction=False)),
            ("eps is inside the square root: add eps to sqrt(v_hat), outside it", var(eps_inside=True)),
            ("eps is missing: divide by sqrt(v_hat) + eps", var(eps=0.0)),
            ("the bias correction uses step t + 1: use the step number t itself", var(t_used=t + 1)),
        ] + ([("the bias correction uses step t - 1: use the step number t itself", var(t_used=t - 1))] if t > 1 else []) + [
            ("returned the bias-corrected m_hat and v_hat: return the moments m and v themselves (the next step "
             "corrects them again)", np.concatenate([want_p, mh, vh])),
            (f"{what} returned param, m and v unchanged: compute the new moments and the step",
             np.concatenate([p0_, m0, v0_])),
            (f"{what} uses the default beta1, beta2 or eps, not the arguments",
             np.concatenate(ref_adam(p0_, g, m0, v0_, t, lr))),
        ], rtol=1e-6, atol=1e-8)
        close(m, want_m, f"m of {what}", atol=1e-7, hint="m = beta1 * m + (1 - beta1) * grad")
        if np.allclose(v, b2 * v0_ + (1 - b2) * g.astype(np.float64), atol=1e-8) and not np.allclose(g ** 2, g, atol=1e-7):
            raise Fail("v follows the gradient, not its square: v = beta2 * v + (1 - beta2) * grad**2")
        close(v, want_v, f"v of {what}", atol=1e-8, hint="v = beta2 * v + (1 - beta2) * grad**2")
        close(p, want_p, f"the param of {what}", atol=1e-6,
              hint="param - lr * m_hat / (sqrt(v_hat) + eps) with m_hat = m / (1 - beta1**t), v_hat = v / (1 - beta2**t)")
    return judge


z8 = np.zeros_like(pa)
ADAM_TESTS = [("first step (t=1) from zero moments", 2, (pa, ga, z8, z8, 1, 0.01, {})),
              ("a later step (t=5) from given moments, other betas and eps", 2,
               (pa, ga, ma, va, 5, 0.001, {"beta1": 0.8, "beta2": 0.99, "eps": 1e-2})),
              ("zero gradients in some elements do not divide by zero (t=3)", 1, (pa, gz, z8, z8, 3, 0.05, {}))]
for name, pts, (p_, g_, m_, v_, t_, lr_, kw_) in ADAM_TESTS:
    ex.test(name, pts, [call(p_, g_, m_, v_, t_, lr_, **kw_)], _judge_adam(p_, g_, m_, v_, t_, lr_, kw_))
EXERCISES.append(ex)

# --- the training loop -----------------------------------------------------------------------------
ex = Exercise("fit_linear", "Train linear regression with SGD+momentum or Adam")


def ref_fit(x, y, optimizer, lr, steps, momentum=0.9, beta1=0.9, beta2=0.999, eps=1e-8):
    """The library's optimisers (float64 Parameters) on the MSE of x @ w + b, from w = 0, b = 0:
    (w, b, the loss before each step)."""
    w, b = Parameter(np.zeros(x.shape[1])), Parameter(np.zeros(1))
    opt = (SGD([w, b], lr=lr, momentum=momentum) if optimizer == "sgd"
           else Adam([w, b], lr=lr, betas=(beta1, beta2), eps=eps))
    losses = []
    for _ in range(steps):
        loss, dw, db = ref_mse(w.data, float(b.data[0]), x, y)
        losses.append(loss)
        w.grad[...], b.grad[...] = dw, db
        opt.step()
    return w.data.copy(), float(b.data[0]), np.array(losses)


def variant_fit(x, y, optimizer, lr, steps, momentum=0.9, beta1=0.9, beta2=0.999, eps=1e-8, *, after=False,
                no_bias_correction=False, fixed_b=False, plain=False):
    """Typical mistakes, written out: the loss recorded after the step, Adam without bias correction, b never
    updated, momentum ignored."""
    w, b = np.zeros(x.shape[1]), 0.0
    state = {"w": [np.zeros_like(w), np.zeros_like(w)], "b": [0.0, 0.0]}
    losses = []
    for t in range(1, steps + 1):
        loss, dw, db = ref_mse(w, b, x, y)
        if not after:
            losses.append(loss)
        new = {}
        for name, p, g in (("w", w, dw), ("b", b, db)):
            m, v = state[name]
            if optimizer == "sgd":
                m = g if plain else momentum * m + g
                p = p - lr * m
            else:
                m = beta1 * m + (1 - beta1) * g
                v = beta2 * v + (1 - beta2) * g * g
                mh, vh = (m, v) if no_bias_correction else (m / (1 - beta1 ** t), v / (1 - beta2 ** t))
                p = p - lr * mh / (np.sqrt(vh) + eps)
            state[name] = [m, v]
            new[name] = p
        w = new["w"]
        b = b if fixed_b else float(new["b"])
        if after:
            losses.append(ref_mse(w, b, x, y)[0])
    return w, b, np.array(losses)


def _fit_data(n, d, seed, scale=1.0):
    r = np.random.default_rng(seed)
    x = scale * r.standard_normal((n, d))
    return x, x @ r.uniform(-2, 2, d) - 1.3 + 0.1 * r.standard_normal(n)


FIT_CASES = [  # (x, y, optimizer, lr, steps, extra keyword arguments)
    (*_fit_data(64, 3, 5), "sgd", 0.05, 60, {"momentum": 0.8}),
    (*_fit_data(40, 2, 6, 2.0), "sgd", 0.01, 45, {"momentum": 0.0}),
    (*_fit_data(80, 4, 7), "adam", 0.05, 70, {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6}),
    (*_fit_data(30, 1, 8), "adam", 0.2, 40, {}),
]
for _x, _y, _o, _lr, _n, _kw in FIT_CASES:          # the references train: the loss falls
    _l = ref_fit(_x, _y, _o, _lr, _n, **_kw)[2]
    assert _l[-1] < 0.5 * _l[0], (_o, _l[0], _l[-1])


def _judge_fit(cases):
    def judge(rs):
        for (x, y, opt, lr, steps, kw), r in zip(cases, rs):
            args = ", ".join(f"{k}={v}" for k, v in kw.items())
            what = f"fit_linear(x {x.shape}, y, {opt!r}, lr={lr}, steps={steps}{', ' + args if args else ''})"
            r = value(r, what)
            if not isinstance(r, (tuple, list)) or len(r) != 3:
                raise Fail(f"{what} must return a tuple (w, b, losses), got {type(r).__name__}")
            w = array(r[0], f"w of {what}", shape=(x.shape[1],), floating=True)
            b = number(r[1], f"b of {what}")
            losses = np.asarray(value(r[2], f"losses of {what}"), dtype=np.float64)
            W, B, LOSSES = ref_fit(x, y, opt, lr, steps, **kw)
            if losses.shape != (steps,):
                raise Fail(f"losses of {what} has shape {losses.shape}, expected ({steps},): one loss per step, "
                           "computed before that step's update")
            got, want = np.concatenate([w, [b], losses]), np.concatenate([W, [B], LOSSES])
            variants = [
                ("each loss is recorded after its step's update: record the loss you computed the gradient with, "
                 "before the update", dict(after=True)),
                ("b never changes: update b with its own gradient db (and its own optimiser state)", dict(fixed_b=True)),
            ]
            if opt == "adam":
                variants.append(("Adam without bias correction: divide m by (1 - beta1**t) and v by (1 - beta2**t), "
                                 "t = 1, 2, ...", dict(no_bias_correction=True)))
            elif kw.get("momentum", 0.9) != 0.0:
                variants.append(("the momentum argument is ignored: v = momentum * v + grad, then param - lr * v",
                                 dict(plain=True)))
            diagnose(got, want, [(f"{what}: {m}", np.concatenate([vw, [vb], vl]))
                                 for m, k in variants for vw, vb, vl in [variant_fit(x, y, opt, lr, steps, **kw, **k)]],
                     rtol=1e-6, atol=1e-9)
            if kw:
                dw_, db_, dl_ = variant_fit(x, y, opt, lr, steps)
                if not np.allclose(want, np.concatenate([dw_, [db_], dl_])) and np.allclose(got, np.concatenate([dw_, [db_], dl_]), rtol=1e-6, atol=1e-9):
                    raise Fail(f"{what}: the result is that of the default {', '.join(kw)}: pass the arguments on")
            close(losses, LOSSES, f"the loss history of {what}", rtol=1e-6, atol=1e-9,
                  hint="losses[k] is the loss at the start of step k, from w = 0, b = 0")
            close(w, W, f"the fitted w of {what}", rtol=1e-6, atol=1e-9)
            close(b, B, f"the fitted b of {what}", rtol=1e-6, atol=1e-9)
    return judge


ex.test("SGD with momentum: the fitted (w, b) and the loss history, other data, lr, momentum and steps", 2.5,
        [call(x, y, o, lr, n, **kw) for x, y, o, lr, n, kw in FIT_CASES[:2]], _judge_fit(FIT_CASES[:2]))
ex.test("Adam: the fitted (w, b) and the loss history, other data, lr, betas, eps and steps", 2.5,
        [call(x, y, o, lr, n, **kw) for x, y, o, lr, n, kw in FIT_CASES[2:]], _judge_fit(FIT_CASES[2:]))
EXERCISES.append(ex)


# --- end to end: the library's Adam runs on the learner's adam_step --------------------------------
def _e2e_model():
    from tinyllm.nn import Linear

    return Linear(6, 3, rng=np.random.default_rng(21), dtype=np.float64)


E2E_X = np.random.default_rng(22).standard_normal((48, 6))
E2E_Y = E2E_X @ np.random.default_rng(23).standard_normal((6, 3)) + 0.5
E2E_STEPS = 15


def _train_library(model, lr=0.03, betas=(0.85, 0.98)):
    """Train the model on the MSE with tinyllm.optim.Adam; the loss before each step."""
    opt = Adam(model.parameters(), lr=lr, betas=betas, eps=1e-7)
    losses = []
    for _ in range(E2E_STEPS):
        model.zero_grad()
        e = model.forward(E2E_X) - E2E_Y                     # (N, 3)
        losses.append(float(np.mean(e * e)))
        model.backward(2.0 * e / e.size)
        opt.step()
    return np.array(losses)


E2E_REF = _train_library(_e2e_model())


def _run_adam_in_library(learner):
    from tinyllm import plug

    model = _e2e_model()
    with plug.use(adam_step=learner.adam_step):
        losses = _train_library(model)
    close(losses, E2E_REF, f"the losses of a tinyllm Linear trained {E2E_STEPS} steps by tinyllm.optim.Adam running your "
          "adam_step", rtol=1e-6, atol=1e-9)
    ref = _e2e_model()
    _train_library(ref)
    close(model.weight.data, ref.weight.data, "the weights trained by tinyllm's Adam on your adam_step", rtol=1e-6,
          atol=1e-9)


EXERCISES[[e.function for e in EXERCISES].index("adam_step")].end_to_end(
    f"tinyllm.optim.Adam runs on your adam_step: {E2E_STEPS} training steps of a tinyllm Linear give the library's losses",
    2, _run_adam_in_library)
