"""Graded checks for exercises/03_backpropagation.ipynb.

The learner writes classes (``Linear``, ``ReLU``, ``SoftmaxCrossEntropy``, ``MLP``); every test drives them through
remote handles (see :meth:`Exercise.end_to_end`): the grader builds the learner's objects on hidden shapes, calls
their ``forward``/``backward``/``step`` and checks each backward pass against float64 central differences of the
learner's OWN forward pass (and the forward against the formula). The ``MLP`` is trained here, by the grader's loop,
on two moons of the grader's drawing, and must classify a held-out set with at least 97% accuracy.
"""
from __future__ import annotations

import math

import numpy as np

from tinyllm.grading.core import Exercise, Fail, array, close, diagnose, number
from tinyllm.nn import CrossEntropyLoss
from tinyllm.nn import functional as F

EXERCISES: list[Exercise] = []
H = 1e-6                         # central-difference step (float64)


def _attr(handle, name, what, shape=None):
    if not hasattr(handle, name):
        raise Fail(f"{what} has no attribute `{name}`: the exercise names it")
    return array(getattr(handle, name), f"{what}.{name}", shape=shape, floating=True)


def _fd_rows(forward, x, dy):
    """dL/dx of L = sum(forward(x) * dy) by central differences, when each output row depends only on its input
    row: one pair of calls per input column."""
    g = np.zeros_like(x)
    for i in range(x.shape[1]):
        e = np.zeros_like(x)
        e[:, i] = H
        up = np.sum(np.asarray(forward(x + e), dtype=np.float64) * dy, axis=1)
        down = np.sum(np.asarray(forward(x - e), dtype=np.float64) * dy, axis=1)
        g[:, i] = (up - down) / (2 * H)
    return g


# --- Linear --------------------------------------------------------------------------------------
ex = Exercise("Linear", "A linear layer with forward, backward and step")
LIN_CASES = [(7, 5, 11), (3, 9, 12)]           # (IN, OUT, seed) on hidden shapes; N = 6 and 4


def _run_linear(learner):
    for (n_in, n_out, seed), n in zip(LIN_CASES, (6, 4)):
        what = f"Linear({n_in}, {n_out}, rng)"
        layer = learner.Linear(n_in, n_out, np.random.default_rng(seed))
        W = _attr(layer, "W", what, (n_in, n_out))
        b = _attr(layer, "b", what, (n_out,))
        r = np.random.default_rng(seed + 100)
        x, dy = r.standard_normal((n, n_in)), r.standard_normal((n, n_out))
        y = array(layer.forward(x), f"{what}.forward(x {x.shape})", shape=(n, n_out), floating=True)
        close(y, x @ W + b, f"{what}.forward(x)", rtol=1e-10, atol=1e-12, hint="y = x @ W + b")
        dx = array(layer.backward(dy), f"{what}.backward(dy {dy.shape})", shape=(n, n_in), floating=True)
        dW = _attr(layer, "dW", what, (n_in, n_out))
        db = _attr(layer, "db", what, (n_out,))
        want_dx = _fd_rows(lambda z: layer.forward(z), x, dy)      # central differences of the learner's forward
        diagnose(dx, want_dx, [(f"{what}.backward: dx is divided by the batch size N; dx = dy @ W.T", want_dx / n)],
                 rtol=1e-5, atol=1e-6)
        close(dx, want_dx, f"dx returned by {what}.backward (against central differences of your forward)",
              rtol=1e-5, atol=1e-6, hint="dx = dy @ W.T")
        diagnose(dW, x.T @ dy, [
            (f"{what}.backward: dW is divided by the batch size N; dW = x.T @ dy", x.T @ dy / n),
        ], rtol=1e-7, atol=1e-9)
        close(dW, x.T @ dy, f"{what}.dW", rtol=1e-7, atol=1e-9, hint="dW = x.T @ dy")
        diagnose(db, dy.sum(axis=0), [(f"{what}.backward: db is the mean of dy over the batch; sum it", dy.mean(axis=0))],
                 rtol=1e-7, atol=1e-9)
        close(db, dy.sum(axis=0), f"{what}.db", rtol=1e-7, atol=1e-9, hint="db = dy.sum(axis=0), summed over the batch")
        layer.step(0.1)
        W2, b2 = _attr(layer, "W", what, (n_in, n_out)), _attr(layer, "b", what, (n_out,))
        if np.allclose(W2, W + 0.1 * dW):
            raise Fail(f"{what}.step(0.1) moved W along the gradient (uphill): W = W - lr * dW")
        close(W2, W - 0.1 * dW, f"W after {what}.step(0.1)", rtol=1e-10, atol=1e-12, hint="W = W - lr * dW")
        close(b2, b - 0.1 * db, f"b after {what}.step(0.1)", rtol=1e-10, atol=1e-12, hint="b = b - lr * db")


def _run_linear_init(learner):
    what = "Linear(400, 300, rng)"
    a = learner.Linear(400, 300, np.random.default_rng(5))
    b = learner.Linear(400, 300, np.random.default_rng(5))
    W, W2 = _attr(a, "W", what, (400, 300)), _attr(b, "W", what, (400, 300))
    if not np.array_equal(W, W2):
        raise Fail(f"two generators seeded alike gave different weights for {what}: draw W from the rng argument")
    std, want = float(W.std()), math.sqrt(2.0 / 400)
    if abs(std - want) > 0.03 * want or abs(float(W.mean())) > 0.05 * want:
        raise Fail(f"{what}: W has mean {float(W.mean()):.4f} and std {std:.4f}; He initialisation has mean 0 and std "
                   f"sqrt(2 / IN) = {want:.4f}")
    if np.any(_attr(a, "b", what, (300,)) != 0):
        raise Fail(f"{what}: b must start at zero")


ex.end_to_end("forward = x @ W + b; dx, dW, db agree with central differences of your forward on hidden shapes; "
              "step(lr) descends", 5, _run_linear)
ex.end_to_end("W from He initialisation N(0, 2 / IN) drawn from rng, b zero", 1, _run_linear_init)
EXERCISES.append(ex)


# --- ReLU ----------------------------------------------------------------------------------------
ex = Exercise("ReLU", "ReLU with forward and backward")


def _run_relu(learner):
    r = np.random.default_rng(31)
    x = r.standard_normal((5, 7))
    x[np.abs(x) < 0.05] = 0.3                     # no central difference straddles the kink at 0 ...
    x[0, :3] = 0.0                                 # ... except the exact zeros, whose gradient is 0
    dy = r.standard_normal((5, 7))
    relu = learner.ReLU()
    y = array(relu.forward(x), f"ReLU().forward(x {x.shape})", shape=x.shape, floating=True)
    close(y, np.maximum(x, 0.0), "ReLU().forward(x)", atol=0, rtol=0, hint="max(x, 0) elementwise")
    dx = array(relu.backward(dy), "ReLU().backward(dy)", shape=x.shape, floating=True)
    want = np.where(x > 0, dy, 0.0)
    diagnose(dx, want, [
        ("ReLU().backward lets the gradient pass where x == 0: the gradient at 0 is 0 (use x > 0)", np.where(x >= 0, dy, 0)),
        ("ReLU().backward returned the mask itself: multiply dy by it", (x > 0).astype(np.float64)),
        ("ReLU().backward takes the mask from dy: the gradient passes where the INPUT was positive",
         np.where(dy > 0, dy, 0.0)),
        ("ReLU().backward multiplies dy by relu(x): multiply by the derivative, 1 where x > 0", dy * np.maximum(x, 0)),
    ], atol=1e-12)
    xs = x[:, 3:]                                  # away from 0: central differences of the learner's forward
    fd = (np.asarray(relu.forward(xs + H), dtype=np.float64) - np.asarray(relu.forward(xs - H), dtype=np.float64)) / (2 * H)
    close(dx[:, 3:], fd * dy[:, 3:], "ReLU().backward(dy) (against central differences of your forward)", atol=1e-6)
    close(dx, want, "ReLU().backward(dy)", atol=1e-12, hint="dy where x > 0, else 0")


def _run_relu_cache(learner):
    """backward uses the input of the LAST forward (a layer reused on a second batch)."""
    relu = learner.ReLU()
    a = np.array([[1.0, -1.0, 2.0, -3.0]])
    b = -a
    relu.forward(a)
    relu.forward(b)
    dx = array(relu.backward(np.ones_like(a)), "ReLU().backward after two forwards", shape=a.shape, floating=True)
    if np.array_equal(dx, (a > 0).astype(float)):
        raise Fail("ReLU().backward used the input of the first forward call: keep the input of the latest one")
    close(dx, (b > 0).astype(float), "ReLU().backward after a second forward", atol=0)


ex.end_to_end("forward max(x, 0); backward agrees with central differences, 0 at x == 0", 2, _run_relu)
ex.end_to_end("backward belongs to the latest forward", 1, _run_relu_cache)
EXERCISES.append(ex)


# --- SoftmaxCrossEntropy -------------------------------------------------------------------------
ex = Exercise("SoftmaxCrossEntropy", "Softmax cross-entropy with forward and backward")


def _ce_variants(z, t):
    n = len(t)
    zs = z - z.max(axis=-1, keepdims=True)
    logp = zs - np.log(np.exp(zs).sum(axis=-1, keepdims=True))
    p = np.exp(logp)
    picked = logp[np.arange(n), t]
    return [
        ("the loss is summed over the batch: return the mean", -picked.sum()),
        ("the loss has the wrong sign: it is MINUS the log-probability of the target", picked.mean()),
        ("the loss averages the probabilities of the targets instead of their logs", -p[np.arange(n), t].mean()),
        ("the loss uses log base 2: use the natural log", -picked.mean() / math.log(2)),
        ("the loss picks an N x N block logp[:, targets]: pick one entry per row, logp[np.arange(N), targets]",
         -logp[:, t].mean()),
    ]


def _run_ce(learner):
    r = np.random.default_rng(41)
    for n, v in ((6, 5), (3, 11)):
        z, t = 3 * r.standard_normal((n, v)), r.integers(0, v, n)
        what = f"SoftmaxCrossEntropy().forward(logits {z.shape}, targets)"
        ce = learner.SoftmaxCrossEntropy()
        loss = number(ce.forward(z, t), what)
        want = F.cross_entropy(z, t)
        diagnose(loss, want, _ce_variants(z, t), rtol=1e-9, atol=1e-12)
        close(loss, want, what, rtol=1e-9, atol=1e-12, hint="mean over rows of -log softmax(z)[target]")
        g = array(ce.backward(), f"SoftmaxCrossEntropy().backward() after {what}", shape=z.shape, floating=True)
        fd = np.zeros_like(z)
        for i in np.ndindex(z.shape):                # central differences of the learner's own forward
            e = np.zeros_like(z)
            e[i] = H
            fd[i] = (number(ce.forward(z + e, t), what) - number(ce.forward(z - e, t), what)) / (2 * H)
        p = F.softmax(z)
        onehot = np.eye(v)[t]
        diagnose(g, (p - onehot) / n, [
            ("backward is N times too large: divide by the batch size N (the loss is a mean)", p - onehot),
            ("backward has the wrong sign: softmax(z) - onehot(t), divided by N", (onehot - p) / n),
            ("backward forgot the one-hot: subtract 1 at each row's target before dividing", p / n),
        ], rtol=1e-6, atol=1e-8)
        close(g, fd, "SoftmaxCrossEntropy().backward() (against central differences of your forward)", rtol=1e-5,
              atol=1e-7, hint="(softmax(z) - onehot(targets)) / N")


def _run_ce_stable(learner):
    z = np.array([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 999.0]])
    t = np.array([2, 0])
    ce = learner.SoftmaxCrossEntropy()
    loss = number(ce.forward(z, t), "SoftmaxCrossEntropy().forward on logits near +-1000")
    if not math.isfinite(loss):
        raise Fail(f"the loss of logits near +-1000 is {loss}: exp(1000) overflows; subtract each row's maximum "
                   "and compute log-softmax as z - m - log(sum(exp(z - m)))")
    close(loss, F.cross_entropy(z, t), "SoftmaxCrossEntropy().forward on logits near +-1000", rtol=1e-9)
    g = array(ce.backward(), "SoftmaxCrossEntropy().backward() on logits near +-1000", shape=z.shape, floating=True)
    close(g, (F.softmax(z) - np.eye(3)[t]) / 2, "SoftmaxCrossEntropy().backward() on logits near +-1000", atol=1e-9)


ex.end_to_end("the mean cross-entropy, and backward agrees with central differences of your forward, hidden shapes",
              4, _run_ce)
ex.end_to_end("stable for logits near +-1000 (finite loss and gradient)", 1, _run_ce_stable)
EXERCISES.append(ex)


# --- MLP -----------------------------------------------------------------------------------------
ex = Exercise("MLP", "An MLP of your modules, trained on two moons")


def two_moons(n, noise, rng):
    """The lesson's two moons: upper arc (class 0), lower arc shifted right (class 1), float64."""
    angle = rng.uniform(0.0, math.pi, size=n)
    label = np.arange(n) % 2
    points = np.stack([np.cos(angle), np.sin(angle)], axis=1)          # (n, 2)
    points[label == 1] = np.array([1.0, 0.5]) - points[label == 1]
    points += noise * rng.standard_normal((n, 2))
    return points, label


_moons = np.random.default_rng(2024)
X_TRAIN, Y_TRAIN = two_moons(300, 0.12, _moons)
X_TEST, Y_TEST = two_moons(400, 0.12, _moons)
STEPS, LR = 200, 0.5


def _run_mlp_gradcheck(learner):
    sizes = [3, 6, 5, 4]
    what = f"MLP({sizes}, rng)"
    mlp = learner.MLP(sizes, np.random.default_rng(51))
    r = np.random.default_rng(52)
    x, dy = r.standard_normal((5, 3)), r.standard_normal((5, 4))
    y = array(mlp.forward(x), f"{what}.forward(x {x.shape})", shape=(5, 4), floating=True)
    dx = array(mlp.backward(dy), f"{what}.backward(dlogits)", shape=(5, 3), floating=True)
    want = _fd_rows(lambda z: mlp.forward(z), x, dy)
    close(dx, want, f"dx returned by {what}.backward (against central differences of your forward)", rtol=1e-5,
          atol=1e-6, hint="run the layers' backward passes in reverse order")
    if np.allclose(y, np.maximum(y, 0)) and (y == 0).mean() > 0.2:
        raise Fail(f"{what}.forward returns only values >= 0: the last Linear's output (the logits) gets no ReLU")


def _run_mlp_train(learner):
    mlp = learner.MLP([2, 32, 32, 2], np.random.default_rng(7))
    loss_fn = CrossEntropyLoss()                   # the library's loss: this test grades the MLP alone
    losses = []
    for _ in range(STEPS):
        logits = array(mlp.forward(X_TRAIN), "MLP.forward(X_train)", shape=(len(X_TRAIN), 2), floating=True)
        losses.append(loss_fn.forward(logits.astype(np.float64), Y_TRAIN))
        mlp.backward(loss_fn.backward())
        mlp.step(LR)
    logits = array(mlp.forward(X_TEST), "MLP.forward(X_test)", shape=(len(X_TEST), 2), floating=True)
    acc = float((logits.argmax(axis=1) == Y_TEST).mean())
    if not np.isfinite(losses).all():
        raise Fail("training your MLP gave a NaN or inf loss")
    if acc < 0.97:
        raise Fail(f"the grader trained your MLP([2, 32, 32, 2]) for {STEPS} steps of SGD (lr {LR}) on two moons: loss "
                   f"{losses[0]:.3f} -> {losses[-1]:.3f}, accuracy on held-out moons {acc:.1%}, below 97%")


ex.end_to_end("backward through the whole MLP agrees with central differences of your forward", 2, _run_mlp_gradcheck)
ex.end_to_end(f"the grader trains your MLP on its own two moons ({STEPS} SGD steps): >= 97% held-out accuracy", 4,
              _run_mlp_train, budget=120)
EXERCISES.append(ex)
