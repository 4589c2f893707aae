import numpy as np


def sgd_momentum_step__ema(param, grad, velocity, lr, momentum):
    velocity = momentum * velocity + (1 - momentum) * grad
    return param - lr * velocity, velocity


def adam_step__no_bias_correction(param, grad, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    return param - lr * m / (np.sqrt(v) + eps), m, v


def adam_step__eps_inside(param, grad, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    mh, vh = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
    return param - lr * mh / np.sqrt(vh), m, v


def sgd_momentum_step__step_before_update(param, grad, velocity, lr, momentum):
    """steps along the old velocity"""
    new_v = momentum * velocity + grad
    return param - lr * velocity, new_v


def mse_loss_and_grad__sum(w, b, x, y):
    """the sum of squared errors"""
    e = x @ w + b - y
    return float(np.sum(e * e)), 2 * x.T @ e / len(y), float(2 * e.mean())


def mse_loss_and_grad__no_factor_two(w, b, x, y):
    """keep the factor 2"""
    e = x @ w + b - y
    return float(np.mean(e * e)), x.T @ e / len(y), float(e.mean())


def mse_loss_and_grad__grad_sum(w, b, x, y):
    """N times too large"""
    e = x @ w + b - y
    return float(np.mean(e * e)), 2 * x.T @ e, float(2 * e.sum())


def _grad(w, b, x, y):
    e = x @ w + b - y
    return float(np.mean(e * e)), 2 * x.T @ e / len(y), float(2 * e.mean())


def fit_linear__loss_after_step(x, y, optimizer, lr, steps, momentum=0.9, beta1=0.9, beta2=0.999, eps=1e-8):
    """recorded after its step's update"""
    w, b, sw, sb, losses = np.zeros(x.shape[1]), 0.0, [0.0, 0.0], [0.0, 0.0], []
    for t in range(1, steps + 1):
        _, dw, db = _grad(w, b, x, y)
        if optimizer == "sgd":
            sw[0] = momentum * sw[0] + dw
            sb[0] = momentum * sb[0] + db
            w, b = w - lr * sw[0], b - lr * sb[0]
        else:
            for s, g in ((sw, dw), (sb, db)):
                s[0] = beta1 * s[0] + (1 - beta1) * g
                s[1] = beta2 * s[1] + (1 - beta2) * g * g
            step = lambda s: lr * (s[0] / (1 - beta1 ** t)) / (np.sqrt(s[1] / (1 - beta2 ** t)) + eps)  # noqa: E731
            w, b = w - step(sw), b - step(sb)
        losses.append(_grad(w, b, x, y)[0])
    return w, float(b), np.array(losses)


def fit_linear__adam_no_bias_correction(x, y, optimizer, lr, steps, momentum=0.9, beta1=0.9, beta2=0.999, eps=1e-8):
    """Adam without bias correction"""
    w, b, sw, sb, losses = np.zeros(x.shape[1]), 0.0, [0.0, 0.0], [0.0, 0.0], []
    for t in range(1, steps + 1):
        loss, dw, db = _grad(w, b, x, y)
        losses.append(loss)
        if optimizer == "sgd":
            sw[0] = momentum * sw[0] + dw
            sb[0] = momentum * sb[0] + db
            w, b = w - lr * sw[0], b - lr * sb[0]
        else:
            for s, g in ((sw, dw), (sb, db)):
                s[0] = beta1 * s[0] + (1 - beta1) * g
                s[1] = beta2 * s[1] + (1 - beta2) * g * g
            w, b = w - lr * sw[0] / (np.sqrt(sw[1]) + eps), b - lr * sb[0] / (np.sqrt(sb[1]) + eps)
    return w, float(b), np.array(losses)


def fit_linear__bias_frozen(x, y, optimizer, lr, steps, momentum=0.9, beta1=0.9, beta2=0.999, eps=1e-8):
    """b never changes"""
    w, sw, losses = np.zeros(x.shape[1]), [0.0, 0.0], []
    for t in range(1, steps + 1):
        loss, dw, _ = _grad(w, 0.0, x, y)
        losses.append(loss)
        if optimizer == "sgd":
            sw[0] = momentum * sw[0] + dw
            w = w - lr * sw[0]
        else:
            sw[0] = beta1 * sw[0] + (1 - beta1) * dw
            sw[1] = beta2 * sw[1] + (1 - beta2) * dw * dw
            w = w - lr * (sw[0] / (1 - beta1 ** t)) / (np.sqrt(sw[1] / (1 - beta2 ** t)) + eps)
    return w, 0.0, np.array(losses)
