"""Graded checks for exercises/02_gradient_descent.ipynb.

The optimiser references are ``tinyllm.optim.SGD`` (momentum) and ``tinyllm.optim.Adam``
run in float64 from the given state; they follow PyTorch's update rules. The
variants used to recognise typical mistakes (no bias correction, ...) are written out here:
a message names a mistake only when the learner's result equals that variant's result.
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


# --- gradient descent step ---------------------------------------------------------------------
ex = Exercise("gd_step", "One gradient-descent step")
theta = np.linspace(-1.0, 1.0, 10).astype(np.float32)
grad = np.array([-0.5, 1.2, -0.3, 0.8, 1.5, -0.7, 0.2, 0.9, -1.1, 0.6], dtype=np.float32)
theta2 = rng.standard_normal((3, 4)).astype(np.float32)             # a matrix of parameters
grad2 = rng.standard_normal((3, 4)).astype(np.float32)
GD_CASES = [(theta, grad, 0.01), (theta, grad, 0.1), (theta2, grad2, 0.37)]


def _judge_gd(rs):
    for (th, g, lr), r in zip(GD_CASES, rs):
        what = f"gd_step(theta {th.shape}, grad, {lr})"
        got, after = with_args(r)
        new = array(got, what, shape=th.shape, floating=True)
        want = th.astype(np.float64) - lr * g
        diagnose(new, want, [
            ("the step goes uphill: subtract the gradient, theta - lr * grad", th.astype(np.float64) + lr * g),
            (f"{what} returned the step lr * grad: return the new parameters theta - lr * grad", -lr * g.astype(np.float64)),
            (f"{what} returned the step lr * grad: return the new parameters theta - lr * grad", lr * g.astype(np.float64)),
            (f"{what} ignores the learning rate: theta - lr * grad", th.astype(np.float64) - g),
            (f"{what} uses the learning rate 0.01 whatever lr is: use the lr argument", th.astype(np.float64) - 0.01 * g),
        ], atol=1e-6)
        close(new, want, what, atol=1e-6, hint="theta_new = theta - lr * grad")
        unchanged(after[0] if after else None, th, "theta", "theta - lr * grad makes a new array; theta -= ... does not")


ex.test("theta - lr * grad for three learning rates, theta unchanged", 2,
        [call_seeing_args(th, g, lr) for th, g, lr in GD_CASES], _judge_gd)
EXERCISES.append(ex)

# --- MSE loss and gradient ---------------------------------------------------------------------
xs = rng.uniform(-1, 1, 50)
ys = 2.0 * xs + 1.0 + 0.1 * rng.standard_normal(50)
w0, b0 = 0.5, -0.3
xs2 = rng.uniform(-3, 5, 17)                                        # an odd number of points, off-centre
ys2 = -1.5 * xs2 + 4.0 + rng.standard_normal(17)
MSE_CASES = [(w0, b0, xs, ys), (-0.8, 2.5, xs2, ys2)]

ex = Exercise("mse_loss", "Mean squared error of the line y = w x + b")


def _judge_mse(rs):
    for k, ((w, b, x, y), r) in enumerate(zip(MSE_CASES, rs)):
        what = "mse_loss(w, b, x, y)" + (f" at (w, b) = ({w}, {b}) on {len(x)} other points" if k else "")
        got = number(r, what)
        e = w * x + b - y
        want = float(np.mean(e ** 2))
        diagnose(got, want, [
            (f"{what} returned the sum of squared errors: take the mean", np.sum(e ** 2)),
            (f"{what} returned half the mean squared error: this lesson's MSE is mean((w x + b - y)^2) without 1/2",
             want / 2),
            (f"{what} returned the root of the mean squared error: do not take the square root", np.sqrt(want)),
            (f"{what} returned the mean absolute error: square the errors", np.mean(np.abs(e))),
            (f"{what} squares the mean error: square each error, then take the mean", np.mean(e) ** 2),
        ], rtol=1e-6, atol=1e-12)
        close(got, want, what, rtol=1e-6, hint="mean((w * x + b - y) ** 2)")


ex.test("mean((w x + b - y)^2) on two data sets", 1, [call(*c) for c in MSE_CASES], _judge_mse)
EXERCISES.append(ex)

ex = Exercise("mse_grad", "Analytic gradient of the MSE with respect to w and b")


def _grad_case(w, b, x, y, r, where=""):
    what = f"mse_grad(w, b, x, y){where}"
    dw, db = _pair(r, what)
    dw, db = number(dw, f"dw of {what}"), number(db, f"db of {what}")
    e = w * x + b - y
    DW, DB = float(2.0 * np.mean(e * x)), float(2.0 * np.mean(e))
    got, want = np.array([dw, db]), np.array([DW, DB])
    diagnose(got, want, [
        ("dw and db are half the gradient: d/dw (e^2) = 2 e de/dw, keep the factor 2", want / 2),
        ("dw and db are N times too large: the loss is a mean, so the gradient is a mean over the points too",
         want * len(x)),
        ("the gradient has the wrong sign: the error is (w x + b - y), prediction minus target", -want),
        ("dw and db are swapped: return (dw, db) in that order", want[::-1]),
        ("dw is 2 mean(e), without the factor x: dw = 2 * mean(e * x)", np.array([DB, DB])),
    ], rtol=1e-6, atol=1e-12)
    if not np.isclose(dw, DW, rtol=1e-6, atol=1e-12) and np.isclose(dw, DW * len(x), rtol=1e-6):
        raise Fail("dw is N times too large: the loss is a mean, so the gradient is a mean over the points too")
    close(dw, DW, f"dw of {what}", rtol=1e-6, atol=1e-12, hint="dw = 2 * mean((w x + b - y) * x)")
    close(db, DB, f"db of {what}", rtol=1e-6, atol=1e-12, hint="db = 2 * mean(w x + b - y)")


def _judge_mse_grad(rs):
    _grad_case(w0, b0, xs, ys, rs[0])


def _judge_mse_fd(rs):
    w1, b1 = 1.7, 0.2
    dw, db = _pair(rs[0], f"mse_grad({w1}, {b1}, x, y)")
    h = 1e-6
    f = lambda w, b: np.mean((w * xs2 + b - ys2) ** 2)  # noqa: E731
    num = np.array([(f(w1 + h, b1) - f(w1 - h, b1)) / (2 * h), (f(w1, b1 + h) - f(w1, b1 - h)) / (2 * h)])
    _grad_case(w1, b1, xs2, ys2, rs[0], f" at (w, b) = ({w1}, {b1}) on {len(xs2)} other points")
    close(np.array([number(dw, "dw"), number(db, "db")]), num, "(dw, db) against central differences", rtol=1e-5, atol=1e-7)


ex.test("dw = 2 mean(e x), db = 2 mean(e)", 2, [call(w0, b0, xs, ys)], _judge_mse_grad)
ex.test("agrees with finite differences at another point and data set", 1, [call(1.7, 0.2, xs2, ys2)], _judge_mse_fd)
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
