"""Graded checks for exercises/03_backpropagation.ipynb.

References come from the library, evaluated in float64: ``tinyllm.nn.Linear``
(backward), ``tinyllm.nn.functional.softmax`` / ``cross_entropy`` and
``tinyllm.nn.CrossEntropyLoss`` (backward).
"""
from __future__ import annotations

import numpy as np

from tinyllm.grading.core import Exercise, Fail, array, call, close, number
from tinyllm.nn import functional as F
from tinyllm.nn.linear import Linear
from tinyllm.nn.loss import CrossEntropyLoss

rng = np.random.default_rng(303)


def ref_softmax(x):
    return F.softmax(np.asarray(x, dtype=np.float64))


def ref_cross_entropy(logits, targets):
    return F.cross_entropy(np.asarray(logits, dtype=np.float64), np.asarray(targets))


def ref_cross_entropy_backward(logits, targets):
    ce = CrossEntropyLoss()
    ce.forward(np.asarray(logits, dtype=np.float64), np.asarray(targets))
    return np.array(ce.backward(), dtype=np.float64)


def ref_linear_backward(x, W, dy):
    layer = Linear(W.shape[0], W.shape[1], dtype=np.float64)
    layer.weight.data[...] = W
    layer.forward(x.astype(np.float64))
    dx = layer.backward(dy.astype(np.float64))
    return dx, layer.weight.grad.copy(), layer.bias.grad.copy()


EXERCISES: list[Exercise] = []

# --- Linear backward ---------------------------------------------------------------------------
ex = Exercise("linear_backward", "Backward pass of a linear layer y = x W + b")
x = rng.standard_normal((5, 4)).astype(np.float32)          # (N, IN)
W = rng.standard_normal((4, 3)).astype(np.float32)          # (IN, OUT)
dy = rng.standard_normal((5, 3)).astype(np.float32)         # (N, OUT)
dx_ref, dW_ref, db_ref = ref_linear_backward(x, W, dy)


def _grads(r, what="linear_backward(x, W, dy)"):
    from tinyllm.grading.core import value

    r = value(r, what)
    if not isinstance(r, (tuple, list)) or len(r) != 3:
        raise Fail(f"{what} must return a tuple (dx, dW, db), got {type(r).__name__}"
                   + (f" of length {len(r)}" if isinstance(r, (tuple, list)) else ""))
    return r


def _judge_dx(rs):
    dx = array(_grads(rs[0])[0], "dx", shape=x.shape, floating=True)
    close(dx, dx_ref, "dx", rtol=1e-4, atol=1e-5, hint="dx = dy @ W.T")


def _judge_dW(rs):
    dW = array(_grads(rs[0])[1], "dW", floating=True)
    if dW.shape == dW_ref.T.shape and dW.shape != dW_ref.shape:
        raise Fail(f"dW has shape {dW.shape}, expected {dW_ref.shape} (the shape of W): dW = x.T @ dy")
    array(dW, "dW", shape=W.shape)
    close(dW, dW_ref, "dW", rtol=1e-4, atol=1e-5, hint="dW = x.T @ dy (sum over the batch, not the mean)")


def _judge_db(rs):
    db = array(_grads(rs[0])[2], "db", floating=True)
    if db.shape == dy.shape:
        raise Fail(f"db has shape {db.shape}, expected {db_ref.shape}: sum dy over the batch axis (axis=0)")
    array(db, "db", shape=db_ref.shape)
    close(db, db_ref, "db", rtol=1e-4, atol=1e-5, hint="db = dy.sum(axis=0)")


ex.test("dx matches dy W^T", 1, [call(x, W, dy)], _judge_dx)
ex.test("dW matches x^T dy", 1, [call(x, W, dy)], _judge_dW)
ex.test("db sums dy over the batch", 1, [call(x, W, dy)], _judge_db)
EXERCISES.append(ex)

# --- ReLU backward -----------------------------------------------------------------------------
ex = Exercise("relu_backward", "Backward pass of ReLU")
xr = rng.standard_normal((6, 5)).astype(np.float32)
xr[0, :3] = 0.0                                             # the kink: PyTorch's gradient at 0 is 0
dyr = rng.standard_normal((6, 5)).astype(np.float32)


def _judge_relu(rs):
    dx = array(rs[0], "relu_backward(x, dy)", shape=xr.shape, floating=True)
    if np.allclose(dx, (xr > 0)) and not np.allclose(dyr, 1):
        raise Fail("relu_backward returned the mask itself: multiply it by the upstream gradient dy")
    close(dx, dyr * (xr > 0), "relu_backward(x, dy)", hint="pass dy through where x > 0 and 0 elsewhere (also at x == 0)")


ex.test("passes dy where x > 0, zero elsewhere", 2, [call(xr, dyr)], _judge_relu)
EXERCISES.append(ex)

# --- softmax -----------------------------------------------------------------------------------
ex = Exercise("softmax", "Numerically stable softmax")
xs = rng.standard_normal((4, 7)).astype(np.float32)
big = np.array([[1000.0, 999.0, 998.0], [-1000.0, -1001.0, -1000.5]], dtype=np.float32)
x3 = rng.standard_normal((2, 3, 5)).astype(np.float32)


def _judge_softmax_basic(rs):
    p = array(rs[0], "softmax(x)", shape=xs.shape, dtype=np.float32)
    close(p.sum(axis=-1), np.ones(xs.shape[0]), "the row sums of softmax(x)", atol=1e-5,
          hint="normalise over the last axis (axis=-1, keepdims=True)")
    close(p, ref_softmax(xs), "softmax(x)", atol=1e-6)


def _judge_softmax_big(rs):
    p = array(rs[0], "softmax(x) for large inputs", shape=big.shape, floating=True)
    if not np.isfinite(p).all():
        raise Fail("softmax overflows for inputs near 1000: subtract the row maximum first (exp(1000) is inf in floating point)")
    close(p, ref_softmax(big), "softmax(x) for inputs near +-1000", atol=1e-6,
          hint="subtract the row maximum (keepdims=True) before exp")


def _judge_softmax_3d(rs):
    p = array(rs[0], "softmax(x) of a (2, 3, 5) array", shape=x3.shape, floating=True)
    close(p, ref_softmax(x3), "softmax(x) of a (2, 3, 5) array", atol=1e-6,
          hint="work on the last axis only (axis=-1, keepdims=True), whatever the number of axes")


ex.test("matches the reference, float32, rows sum to 1", 2, [call(xs)], _judge_softmax_basic)
ex.test("stable for inputs near 1000", 2, [call(big)], _judge_softmax_big)
ex.test("works over the last axis of any array", 1, [call(x3)], _judge_softmax_3d)
EXERCISES.append(ex)

# --- cross-entropy -----------------------------------------------------------------------------
ex = Exercise("cross_entropy", "Cross-entropy loss from logits")
logits = rng.standard_normal((6, 5)).astype(np.float32)
targets = rng.integers(0, 5, size=6)
big_logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 800.0, 0.0]], dtype=np.float32)
big_targets = np.array([2, 0])


def _judge_ce(rs):
    loss = number(rs[0], "cross_entropy(logits, targets)")
    want = ref_cross_entropy(logits, targets)
    total = want * len(targets)
    if abs(loss - total) < 1e-4 and abs(loss - want) > 1e-4:
        raise Fail(f"cross_entropy returned {loss:.5f}, the sum over the batch: return the mean ({want:.5f})")
    if abs(loss + want) < 1e-4:
        raise Fail(f"cross_entropy returned {loss:.5f}: the loss is minus the log-probability of the target")
    close(loss, want, "cross_entropy(logits, targets)", rtol=1e-5, atol=1e-5,
          hint="the mean over the batch of -log softmax(logits)[i, targets[i]]")


def _judge_ce_big(rs):
    loss = number(rs[0], "cross_entropy for logits near 1000")
    want = ref_cross_entropy(big_logits, big_targets)
    if not np.isfinite(loss):
        raise Fail("cross_entropy gives inf/NaN for logits near 1000: compute log-softmax with the log-sum-exp trick "
                   "(x - max - log(sum(exp(x - max)))) instead of log(softmax(x))")
    close(loss, want, "cross_entropy for logits near 1000", rtol=1e-5,
          hint="log(softmax) underflows to log(0): use log-softmax with the log-sum-exp trick")


ex.test("matches the reference (mean over the batch)", 2, [call(logits, targets)], _judge_ce)
ex.test("stable for logits near 1000", 2, [call(big_logits, big_targets)], _judge_ce_big)
EXERCISES.append(ex)

# --- cross-entropy backward --------------------------------------------------------------------
ex = Exercise("cross_entropy_backward", "Gradient of the mean cross-entropy with respect to the logits")


def _judge_ce_back(rs):
    g = array(rs[0], "cross_entropy_backward(logits, targets)", shape=logits.shape, floating=True)
    want = ref_cross_entropy_backward(logits, targets)
    if np.allclose(g, want * len(targets), atol=1e-5):
        raise Fail(f"the gradient is {len(targets)}x too large: the loss is a mean, so divide by the batch size N")
    if np.allclose(g, ref_softmax(logits), atol=1e-5):
        raise Fail("the gradient is softmax(logits): subtract 1 at each row's target (softmax - one_hot), then divide by N")
    close(g, want, "cross_entropy_backward(logits, targets)", atol=1e-6, hint="(softmax(logits) - one_hot(targets)) / N")


def _judge_ce_back_big(rs):
    g = array(rs[0], "cross_entropy_backward for logits near 1000", shape=big_logits.shape, floating=True)
    if not np.isfinite(g).all():
        raise Fail("the gradient overflows for logits near 1000: use a stable softmax (subtract the row maximum)")
    close(g, ref_cross_entropy_backward(big_logits, big_targets), "cross_entropy_backward for logits near 1000", atol=1e-6)


ex.test("equals (softmax - one_hot) / N", 2, [call(logits, targets)], _judge_ce_back)
ex.test("stable for logits near 1000", 1, [call(big_logits, big_targets)], _judge_ce_back_big)
EXERCISES.append(ex)
