"""Graded checks for exercises/03_backpropagation.ipynb.

References come from the library, evaluated in float64: ``tinyllm.nn.Linear``
(backward), ``tinyllm.nn.functional.softmax`` / ``cross_entropy`` and
``tinyllm.nn.CrossEntropyLoss`` (backward). A message names a mistake only when the learner's
result equals what that mistake computes on the same input.
"""
from __future__ import annotations

import numpy as np

from tinyllm.grading.core import Exercise, Fail, array, call, close, diagnose, number, value
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


def _quiet(fn, *args):
    """A mistake's result computed as the learner would, in float32, without warnings."""
    with np.errstate(all="ignore"):
        return fn(*args)


EXERCISES: list[Exercise] = []

# --- Linear backward ---------------------------------------------------------------------------
ex = Exercise("linear_backward", "Backward pass of a linear layer y = x W + b")
LIN = []
for n, i, o in ((5, 4, 3), (1, 7, 2)):                              # (N, IN, OUT); a batch of one
    x_, W_, dy_ = (rng.standard_normal(s).astype(np.float32) for s in ((n, i), (i, o), (n, o)))
    LIN.append((x_, W_, dy_, ref_linear_backward(x_, W_, dy_)))


def _grads(r, what):
    r = value(r, what)
    if not isinstance(r, (tuple, list)) or len(r) != 3:
        raise Fail(f"{what} must return a tuple (dx, dW, db), got {type(r).__name__}"
                   + (f" of length {len(r)}" if isinstance(r, (tuple, list)) else ""))
    return r


def _judge_part(k):
    def judge(rs):
        for (x, W, dy, refs), r in zip(LIN, rs):
            N = len(x)
            what = f"linear_backward with x {x.shape}, W {W.shape}"
            name = ("dx", "dW", "db")[k]
            g = array(_grads(r, what)[k], f"{name} of {what}", floating=True)
            want = refs[k]
            x64, W64, dy64 = (a.astype(np.float64) for a in (x, W, dy))
            variants = [
                [(f"dx is transposed: dx = dy @ W.T has the shape of x {x.shape}", (dy64 @ W64.T).T),
                 (f"dx is divided by the batch size N: dx = dy @ W.T, no mean", dy64 @ W64.T / N)],
                [(f"dW has shape {g.shape}, expected {W.shape} (the shape of W): dW = x.T @ dy", (x64.T @ dy64).T),
                 ("dW is divided by the batch size N: dW = x.T @ dy sums over the batch, no mean", x64.T @ dy64 / N)],
                [(f"db has shape {g.shape}, expected {want.shape}: sum dy over the batch axis (axis=0)", dy64),
                 (f"db has shape {g.shape}, expected {want.shape}: sum dy over the batch axis (axis=0), not axis 1",
                  dy64.sum(axis=1)),
                 ("db is the mean of dy over the batch: db = dy.sum(axis=0), no division by N", dy64.mean(axis=0))],
            ][k]
            diagnose(g, want, variants, rtol=1e-4, atol=1e-5)
            array(g, f"{name} of {what}", shape=want.shape)
            close(g, want, f"{name} of {what}", rtol=1e-4, atol=1e-5,
                  hint=("dx = dy @ W.T", "dW = x.T @ dy", "db = dy.sum(axis=0)")[k])
    return judge


LIN_CALLS = [call(x_, W_, dy_) for x_, W_, dy_, _ in LIN]
ex.test("dx matches dy W^T", 1, LIN_CALLS, _judge_part(0))
ex.test("dW matches x^T dy", 1, LIN_CALLS, _judge_part(1))
ex.test("db sums dy over the batch", 1, LIN_CALLS, _judge_part(2))
EXERCISES.append(ex)

# --- ReLU backward -----------------------------------------------------------------------------
ex = Exercise("relu_backward", "Backward pass of ReLU")
xr = rng.standard_normal((6, 5)).astype(np.float32)
xr[0, :3] = 0.0                                             # the kink: PyTorch's gradient at 0 is 0
dyr = rng.standard_normal((6, 5)).astype(np.float32)
xr3 = (3 * rng.standard_normal((2, 3, 4))).astype(np.float32)
xr3[1, 1] = 0.0
dyr3 = rng.standard_normal((2, 3, 4)).astype(np.float32)


def _judge_relu(rs):
    for (x, dy), r in zip(((xr, dyr), (xr3, dyr3)), rs):
        what = f"relu_backward(x, dy) for x {x.shape}"
        dx = array(r, what, shape=x.shape, floating=True)
        want = dy.astype(np.float64) * (x > 0)
        diagnose(dx, want, [
            ("relu_backward returned the mask itself: multiply it by the upstream gradient dy", (x > 0).astype(np.float64)),
            ("the gradient passes where x == 0: at the kink it is 0 (use x > 0, not x >= 0)", dy * (x >= 0)),
            ("the mask comes from dy: the gradient passes where the input x > 0, whatever the sign of dy",
             dy * (dy > 0)),
            ("relu_backward multiplies dy by relu(x): multiply it by the mask (x > 0), not by the activation",
             dy.astype(np.float64) * np.maximum(x, 0)),
        ], atol=1e-6)
        close(dx, want, what, hint="pass dy through where x > 0 and 0 elsewhere (also at x == 0)")


ex.test("passes dy where x > 0, zero elsewhere (2-D and 3-D)", 2, [call(xr, dyr), call(xr3, dyr3)], _judge_relu)
EXERCISES.append(ex)

# --- softmax -----------------------------------------------------------------------------------
ex = Exercise("softmax", "Numerically stable softmax")
xs = rng.standard_normal((4, 7)).astype(np.float32)
big = np.array([[1000.0, 999.0, 998.0], [-1000.0, -1001.0, -1000.5]], dtype=np.float32)
x3 = (5 * rng.standard_normal((2, 3, 5))).astype(np.float32)


def _softmax_mistakes(x):
    def norm(e, axis=-1):
        return e / e.sum(axis=axis, keepdims=True)
    return [
        ("softmax overflows for inputs near 1000: subtract the row maximum first (exp(1000) is inf in floating point)",
         _quiet(lambda: norm(np.exp(x)))),
        ("softmax subtracts the maximum of the whole array: a row far below it underflows to 0 / 0; subtract each "
         "row's own maximum (axis=-1, keepdims=True)", _quiet(lambda: norm(np.exp(x - x.max())))),
        ("softmax normalises over axis 0: it works over the last axis (axis=-1), so each row sums to 1",
         _quiet(lambda: norm(np.exp(x - x.max(axis=0, keepdims=True)), axis=0))),
        ("softmax divides by the sum of the whole array: divide each row by its own sum (axis=-1, keepdims=True)",
         _quiet(lambda: (lambda e: e / e.sum())(np.exp(x - x.max(axis=-1, keepdims=True))))),
        ("softmax does not normalise: divide exp(x - max) by its row sum",
         _quiet(lambda: np.exp(x - x.max(axis=-1, keepdims=True)))),
    ]


def _judge_softmax(x, what, dtype=None):
    def judge(rs):
        p = array(rs[0], what, shape=x.shape, dtype=dtype, floating=True)
        want = ref_softmax(x)
        diagnose(p, want, _softmax_mistakes(x), atol=1e-6)
        if not np.isfinite(p).all():
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(p))[0])
            raise Fail(f"{what} contains NaN or inf (first at index {bad}) where every probability is finite")
        close(p.sum(axis=-1), np.ones(x.shape[:-1]), f"the sums over the last axis of {what}", atol=1e-5,
              hint="normalise over the last axis (axis=-1, keepdims=True)")
        close(p, want, what, atol=1e-6)
    return judge


ex.test("matches the reference, float32, rows sum to 1", 2, [call(xs)], _judge_softmax(xs, "softmax(x)", np.float32))
ex.test("stable for inputs near +-1000", 2, [call(big)], _judge_softmax(big, "softmax(x) for inputs near +-1000"))
ex.test("works over the last axis of any array", 1, [call(x3)], _judge_softmax(x3, "softmax(x) of a (2, 3, 5) array"))
EXERCISES.append(ex)

# --- cross-entropy -----------------------------------------------------------------------------
ex = Exercise("cross_entropy", "Cross-entropy loss from logits")
logits = rng.standard_normal((6, 5)).astype(np.float32)
targets = rng.integers(0, 5, size=6)
logits2 = (3 * rng.standard_normal((9, 300))).astype(np.float32)   # a larger vocabulary, targets far from 0
targets2 = rng.integers(150, 300, size=9)
over_logits = np.array([[1000.0, 999.0, 998.0], [0.0, 800.0, 1.0]], dtype=np.float32)   # exp overflows, p is fine
over_targets = np.array([0, 1])
under_logits = np.array([[10.0, 0.0, -1000.0], [0.0, 5.0, -900.0]], dtype=np.float32)  # nothing overflows, p underflows
under_targets = np.array([2, 2])


def _logp(z):
    z = z.astype(np.float64) - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _judge_ce(rs):
    for (lg, tg), r in zip(((logits, targets), (logits2, targets2)), rs):
        what = f"cross_entropy(logits {lg.shape}, targets)"
        loss = number(r, what)
        want = ref_cross_entropy(lg, tg)
        lp = _logp(lg)
        n = np.arange(len(tg))
        diagnose(loss, want, [
            (f"{what} returned the sum over the batch: return the mean ({want:.5f})", want * len(tg)),
            (f"{what} returned {loss:.5f}: the loss is minus the log-probability of the target", -want),
            (f"{what} averages -logp[:, targets], an N x N block: pick one entry per row, logp[np.arange(N), targets]",
             -lp[:, tg].mean()),
            (f"{what} averages -log p over every entry: pick each row's target, logp[np.arange(N), targets]",
             -lp.mean()),
            (f"{what} averages the probabilities of the targets: take -log of them", -np.exp(lp[n, tg]).mean()),
            (f"{what} uses log base 2: use the natural log (np.log)", want / np.log(2)),
            (f"{what} uses log base 10: use the natural log (np.log)", want / np.log(10)),
        ], rtol=1e-5, atol=1e-5)
        close(loss, want, what, rtol=1e-5, atol=1e-5, hint="the mean over the batch of -log softmax(logits)[i, targets[i]]")


def _judge_ce_stable(lg, tg, what, why):
    def judge(rs):
        loss = number(rs[0], what)
        want = ref_cross_entropy(lg, tg)
        if not np.isfinite(loss):
            raise Fail(f"{what} gives {loss} where the loss is {want:.4f}: {why}")
        close(loss, want, what, rtol=1e-5, hint="use log-softmax with the log-sum-exp trick: z - max - log(sum(exp(z - max)))")
    return judge


ex.test("matches the reference (mean over the batch), small and large vocabulary", 2,
        [call(logits, targets), call(logits2, targets2)], _judge_ce)
ex.test("stable where exp overflows (logits near 1000)", 1, [call(over_logits, over_targets)],
        _judge_ce_stable(over_logits, over_targets, "cross_entropy for logits near 1000",
                         "exp(1000) overflows; subtract the row maximum before exp (log-sum-exp trick)"))
ex.test("stable where a probability underflows (a target logit 1000 below the others)", 1,
        [call(under_logits, under_targets)],
        _judge_ce_stable(under_logits, under_targets, "cross_entropy for a target far below the best logit",
                         "the target's probability underflows to 0 and log(0) = -inf; compute log-softmax directly, "
                         "z - max - log(sum(exp(z - max))), instead of log(softmax(z))"))
EXERCISES.append(ex)

# --- cross-entropy backward --------------------------------------------------------------------
ex = Exercise("cross_entropy_backward", "Gradient of the mean cross-entropy with respect to the logits")
big_logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 800.0, 0.0]], dtype=np.float32)
big_targets = np.array([2, 0])


def _judge_ce_back(rs):
    for (lg, tg), r in zip(((logits, targets), (logits2, targets2)), rs):
        what = f"cross_entropy_backward(logits {lg.shape}, targets)"
        g = array(r, what, shape=lg.shape, floating=True)
        want = ref_cross_entropy_backward(lg, tg)
        N = len(tg)
        p = ref_softmax(lg)
        wrong_rows = p.copy()
        wrong_rows[:, tg] -= 1
        diagnose(g, want, [
            (f"the gradient is {N}x too large: the loss is a mean, so divide by the batch size N", want * N),
            ("the gradient is softmax(logits): subtract 1 at each row's target (softmax - one_hot), then divide by N", p),
            ("the gradient is softmax(logits) / N: subtract 1 at each row's target before dividing", p / N),
            ("the gradient has the wrong sign: (softmax - one_hot) / N, not (one_hot - softmax) / N", -want),
            ("g[:, targets] -= 1 subtracts 1 in whole columns: index one entry per row, g[np.arange(N), targets]",
             wrong_rows / N),
        ], atol=1e-6)
        close(g, want, what, atol=1e-6, hint="(softmax(logits) - one_hot(targets)) / N")


def _judge_ce_back_big(rs):
    what = "cross_entropy_backward for logits near 1000"
    g = array(rs[0], what, shape=big_logits.shape, floating=True)
    if not np.isfinite(g).all():
        raise Fail(f"{what} contains NaN or inf: exp(1000) overflows; use a stable softmax (subtract the row maximum)")
    close(g, ref_cross_entropy_backward(big_logits, big_targets), what, atol=1e-6)


ex.test("equals (softmax - one_hot) / N, small and large vocabulary", 2,
        [call(logits, targets), call(logits2, targets2)], _judge_ce_back)
ex.test("stable for logits near 1000", 1, [call(big_logits, big_targets)], _judge_ce_back_big)
EXERCISES.append(ex)
