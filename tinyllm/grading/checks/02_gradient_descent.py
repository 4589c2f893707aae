"""Graded checks for exercises/02_gradient_descent.ipynb.

The optimiser references are ``tinyllm.optim.SGD`` (momentum) and ``tinyllm.optim.Adam``
run in float64 from the given state; they follow PyTorch's update rules. The
variants used to recognise typical mistakes (no bias correction, ...) are written out here.
"""
from __future__ import annotations

import numpy as np

from tinyllm.grading.core import Exercise, Fail, array, call, close, number, value
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


def _judge_gd(rs):
    new = array(rs[0], "gd_step(theta, grad, 0.01)", shape=theta.shape, floating=True)
    want = theta.astype(np.float64) - 0.01 * grad
    if np.allclose(new, theta + 0.01 * grad, atol=1e-6):
        raise Fail("the step goes uphill: subtract the gradient, theta - lr * grad")
    close(new, want, "gd_step(theta, grad, 0.01)", atol=1e-6, hint="theta_new = theta - lr * grad")


def _judge_gd_pure(rs):
    new = array(rs[0], "gd_step(theta, grad, 0.1)", shape=theta.shape, floating=True)
    close(new, theta.astype(np.float64) - 0.1 * grad, "gd_step(theta, grad, 0.1)", atol=1e-6,
          hint="use the lr argument, not a fixed learning rate")


ex.test("the worked example: theta - 0.01 * grad", 1, [call(theta, grad, 0.01)], _judge_gd)
ex.test("uses the learning rate it is given", 1, [call(theta, grad, 0.1)], _judge_gd_pure)
EXERCISES.append(ex)

# --- MSE loss and gradient ---------------------------------------------------------------------
xs = rng.uniform(-1, 1, 50)
ys = 2.0 * xs + 1.0 + 0.1 * rng.standard_normal(50)
w0, b0 = 0.5, -0.3
err = w0 * xs + b0 - ys

ex = Exercise("mse_loss", "Mean squared error of the line y = w x + b")


def _judge_mse(rs):
    got = number(rs[0], "mse_loss(w, b, x, y)")
    want = float(np.mean(err ** 2))
    if abs(got - np.sum(err ** 2)) < 1e-6 * np.sum(err ** 2):
        raise Fail("mse_loss returned the sum of squared errors: take the mean")
    if abs(got - want / 2) < 1e-9 + 1e-6 * want:
        raise Fail("mse_loss returned half the mean squared error: this lesson's MSE is mean((w x + b - y)^2) without 1/2")
    close(got, want, "mse_loss(w, b, x, y)", rtol=1e-6, hint="mean((w * x + b - y) ** 2)")


ex.test("mean((w x + b - y)^2)", 1, [call(w0, b0, xs, ys)], _judge_mse)
EXERCISES.append(ex)

ex = Exercise("mse_grad", "Analytic gradient of the MSE with respect to w and b")
DW = float(2.0 * np.mean(err * xs))
DB = float(2.0 * np.mean(err))


def _judge_mse_grad(rs):
    dw, db = _pair(rs[0], "mse_grad(w, b, x, y)")
    dw, db = number(dw, "dw"), number(db, "db")
    if abs(dw - DW / 2) < 1e-9 and abs(db - DB / 2) < 1e-9:
        raise Fail("dw and db are half the gradient: d/dw (e^2) = 2 e de/dw, keep the factor 2")
    if abs(dw - DW * len(xs)) < 1e-6 * abs(DW * len(xs)):
        raise Fail("dw is N times too large: the loss is a mean, so the gradient is a mean over the points too")
    if abs(dw + DW) < 1e-9 and abs(db + DB) < 1e-9:
        raise Fail("the gradient has the wrong sign: the error is (w x + b - y), prediction minus target")
    close(dw, DW, "dw", rtol=1e-6, hint="dw = 2 * mean((w x + b - y) * x)")
    close(db, DB, "db", rtol=1e-6, hint="db = 2 * mean(w x + b - y)")


def _judge_mse_fd(rs):
    dw, db = _pair(rs[0], "mse_grad(w, b, x, y)")
    dw = number(dw, "dw")
    w1, b1 = 1.7, 0.2
    h = 1e-6
    f = lambda w, b: np.mean((w * xs + b - ys) ** 2)  # noqa: E731
    num = (f(w1 + h, b1) - f(w1 - h, b1)) / (2 * h)
    close(dw, num, "dw at (w, b) = (1.7, 0.2) against central differences", rtol=1e-5, atol=1e-7)


ex.test("dw = 2 mean(e x), db = 2 mean(e)", 2, [call(w0, b0, xs, ys)], _judge_mse_grad)
ex.test("agrees with finite differences at another point", 1, [call(1.7, 0.2, xs, ys)], _judge_mse_fd)
EXERCISES.append(ex)

# --- SGD with momentum -------------------------------------------------------------------------
ex = Exercise("sgd_momentum_step", "SGD with momentum (PyTorch's form)")
p0 = rng.standard_normal(6).astype(np.float32)
g_seq = [rng.standard_normal(6).astype(np.float32) for _ in range(3)]


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
    p, v = _pair(rs[0], "sgd_momentum_step(param, grad, velocity, lr, momentum)", names="(param, velocity)")
    p = array(p, "the new param", shape=p0.shape, floating=True)
    v = array(v, "the new velocity", shape=p0.shape, floating=True)
    vel = rng_v
    want_p, want_v = lib_momentum_step(p0, g_seq[0], vel, 0.1, 0.9)
    if np.allclose(v, 0.9 * vel + (1 - 0.9) * g_seq[0], atol=1e-6):
        raise Fail("the velocity is an exponential average (1 - momentum) * grad: PyTorch's SGD adds the full gradient, "
                   "v = momentum * v + grad")
    close(v, want_v, "the new velocity", atol=1e-6, hint="v = momentum * v + grad")
    if np.allclose(p, p0 - 0.1 * g_seq[0], atol=1e-6):
        raise Fail("the parameter moved by the gradient alone: step along the velocity, param - lr * v")
    close(p, want_p, "the new param", atol=1e-6, hint="param = param - lr * v (with the new v)")


rng_v = rng.standard_normal(6).astype(np.float32)
ex.test("one step from a given velocity", 2, [call(p0, g_seq[0], rng_v, 0.1, 0.9)], _judge_momentum)
EXERCISES.append(ex)

# --- Adam --------------------------------------------------------------------------------------
ex = Exercise("adam_step", "One Adam step with bias correction")
pa = rng.standard_normal(8).astype(np.float32)
ga = rng.standard_normal(8).astype(np.float32)
ma = (0.1 * rng.standard_normal(8)).astype(np.float32)
va = (0.01 * rng.random(8)).astype(np.float32)


def ref_adam(p, g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8, bias_correction=True):
    if bias_correction:                       # the library's Adam, one step from the given state, in float64
        param = Parameter(p.astype(np.float64))
        opt = Adam([param], lr=lr, betas=(b1, b2), eps=eps)
        opt.state["exp_avg"][0][...] = m
        opt.state["exp_avg_sq"][0][...] = v
        opt.step_count = t - 1
        param.grad[...] = g
        opt.step()
        return param.data, opt.state["exp_avg"][0], opt.state["exp_avg_sq"][0]
    p, g, m, v = (a.astype(np.float64) for a in (p, g, m, v))
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mh, vh = (m / (1 - b1 ** t), v / (1 - b2 ** t)) if bias_correction else (m, v)
    return p - lr * mh / (np.sqrt(vh) + eps), m, v


def _adam_triplet(r, what):
    p, m, v = _pair(r, what, n=3, names="(param, m, v)")
    return (array(p, "the new param", shape=pa.shape, floating=True), array(m, "the new m", shape=pa.shape, floating=True),
            array(v, "the new v", shape=pa.shape, floating=True))


def _judge_adam_first(rs):
    p, m, v = _adam_triplet(rs[0], "adam_step(param, grad, m, v, t=1, lr=0.01)")
    z = np.zeros_like(pa)
    want_p, want_m, want_v = ref_adam(pa, ga, z, z, 1, 0.01)
    close(m, want_m, "m after the first step", atol=1e-7, hint="m = beta1 * m + (1 - beta1) * grad")
    if np.allclose(v, 0.001 * ga.astype(np.float64), atol=1e-7) and not np.allclose(ga ** 2, ga, atol=1e-7):
        raise Fail("v follows the gradient, not its square: v = beta2 * v + (1 - beta2) * grad**2")
    close(v, want_v, "v after the first step", atol=1e-8, hint="v = beta2 * v + (1 - beta2) * grad**2")
    nobc, _, _ = ref_adam(pa, ga, z, z, 1, 0.01, bias_correction=False)
    if np.allclose(p, nobc, atol=1e-6):
        raise Fail("at t=1 the step is about 3x too small (m and v start at zero): apply bias correction, "
                   "m_hat = m / (1 - beta1**t), v_hat = v / (1 - beta2**t)")
    close(p, want_p, "the param after the first step", atol=1e-6,
          hint="param - lr * m_hat / (sqrt(v_hat) + eps); at t=1 every element moves by about lr")


def _judge_adam_later(rs):
    p, m, v = _adam_triplet(rs[0], "adam_step(param, grad, m, v, t=5, lr=0.001)")
    want_p, want_m, want_v = ref_adam(pa, ga, ma, va, 5, 0.001)
    close(m, want_m, "m at t=5", atol=1e-7)
    close(v, want_v, "v at t=5", atol=1e-8)
    nobc, _, _ = ref_adam(pa, ga, ma, va, 5, 0.001, bias_correction=False)
    if np.allclose(p, nobc, atol=1e-7):
        raise Fail("the update at t=5 has no bias correction: divide m by (1 - beta1**t) and v by (1 - beta2**t)")
    close(p, want_p, "the param at t=5", atol=1e-6, hint="use the step number t in the bias correction")


def _judge_adam_eps(rs):
    p, _, _ = _adam_triplet(rs[0], "adam_step with a zero gradient")
    if not np.isfinite(p).all():
        raise Fail("a zero gradient gives NaN/inf: add eps to sqrt(v_hat) (outside the square root)")
    close(p, pa, "the param after a zero-gradient first step", atol=1e-7)


z8 = np.zeros_like(pa)
ex.test("first step (t=1) from zero moments", 2, [call(pa, ga, z8, z8, 1, 0.01)], _judge_adam_first)
ex.test("a later step (t=5) from given moments", 2, [call(pa, ga, ma, va, 5, 0.001)], _judge_adam_later)
ex.test("a zero gradient does not divide by zero", 1, [call(pa, z8, z8, z8, 1, 0.01)], _judge_adam_eps)
EXERCISES.append(ex)
