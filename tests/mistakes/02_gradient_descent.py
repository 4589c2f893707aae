import numpy as np


def sgd_momentum_step__old_velocity(param, grad, velocity, lr, momentum):
    """steps along the old velocity"""
    new_v = momentum * velocity + grad
    return param - lr * velocity, new_v


def sgd_momentum_step__fixed_momentum(param, grad, velocity, lr, momentum):
    """uses momentum 0.9 whatever momentum is"""
    velocity = 0.9 * velocity + grad
    return param - lr * velocity, velocity


def sgd_momentum_step__sutskever(param, grad, velocity, lr, momentum):
    """the Sutskever form"""
    velocity = momentum * velocity - lr * grad
    return param + velocity, velocity


def sgd_momentum_step__in_place(param, grad, velocity, lr, momentum):
    """the call changed its input"""
    velocity *= momentum
    velocity += grad
    param -= lr * velocity
    return param, velocity


def sgd_momentum_step__plain_sgd(param, grad, velocity, lr, momentum):
    """the parameter moved by the gradient alone"""
    return param - lr * grad, momentum * velocity + grad


def adam_step__returns_hats(param, grad, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """returned the bias-corrected m_hat and v_hat"""
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    m, v = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
    return param - lr * m / (np.sqrt(v) + eps), m, v


def adam_step__t_plus_one(param, grad, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """uses step t + 1"""
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    mh, vh = m / (1 - beta1 ** (t + 1)), v / (1 - beta2 ** (t + 1))
    return param - lr * mh / (np.sqrt(vh) + eps), m, v


def adam_step__default_hyper(param, grad, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """uses the default beta1, beta2 or eps"""
    b1, b2, e = 0.9, 0.999, 1e-8
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad * grad
    mh, vh = m / (1 - b1 ** t), v / (1 - b2 ** t)
    return param - lr * mh / (np.sqrt(vh) + e), m, v


def adam_step__no_eps(param, grad, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """NaN/inf where the gradient and v are zero"""
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    mh, vh = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
    return param - lr * mh / np.sqrt(vh), m, v


def adam_step__returns_inputs(param, grad, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """returned param, m and v unchanged"""
    return param, m, v


def adam_step__v_not_squared(param, grad, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """None"""
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * np.abs(grad)
    mh, vh = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
    return param - lr * mh / (np.sqrt(vh) + eps), m, v


# Written after the checks, graded once before any change to them (see the report).


def sgd_momentum_step__nesterov(param, grad, velocity, lr, momentum):
    """None"""
    v = momentum * velocity + grad
    return param - lr * (grad + momentum * v), v


def adam_step__m_squared(param, grad, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """None"""
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    mh, vh = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
    return param - lr * mh / (vh + eps), m, v


def mse_loss_and_grad__half(w, b, x, y):
    """half the mean squared error"""
    e = x @ w + b - y
    return float(0.5 * np.mean(e * e)), x.T @ e / len(y), float(e.mean())


def mse_loss_and_grad__sign(w, b, x, y):
    """wrong sign"""
    e = y - (x @ w + b)
    return float(np.mean(e * e)), 2 * x.T @ e / len(y), float(2 * e.mean())


def mse_loss_and_grad__rmse(w, b, x, y):
    """root of the mean squared error"""
    e = x @ w + b - y
    return float(np.sqrt(np.mean(e * e))), 2 * x.T @ e / len(y), float(2 * e.mean())


def mse_loss_and_grad__no_x(w, b, x, y):
    """missing the factor x"""
    e = x @ w + b - y
    return float(np.mean(e * e)), np.full(len(w), 2 * e.mean()), float(2 * e.mean())


def _mse(w, b, x, y):
    e = x @ w + b - y
    return float(np.mean(e * e)), 2 * x.T @ e / len(y), float(2 * e.mean())


def _fit(x, y, optimizer, lr, steps, momentum, beta1, beta2, eps, plain=False, shared=False, t0=1):
    w, b, sw, sb, losses = np.zeros(x.shape[1]), 0.0, [0.0, 0.0], [0.0, 0.0], []
    for t in range(t0, steps + t0):
        loss, dw, db = _mse(w, b, x, y)
        losses.append(loss)
        if optimizer == "sgd":
            sw[0] = dw if plain else momentum * sw[0] + dw
            sb[0] = db if plain else momentum * sb[0] + db
            w, b = w - lr * sw[0], b - lr * sb[0]
        else:
            for s, g in ((sw, dw), (sw if shared else sb, db)):
                s[0] = beta1 * s[0] + (1 - beta1) * g
                s[1] = beta2 * s[1] + (1 - beta2) * g * g
            step = lambda s: lr * (s[0] / (1 - beta1 ** t)) / (np.sqrt(s[1] / (1 - beta2 ** t)) + eps)  # noqa: E731
            w = w - step(sw)
            b = b - (step(sw) if shared else step(sb))
    return w, float(np.mean(b)), np.array(losses)


def fit_linear__ignores_momentum(x, y, optimizer, lr, steps, momentum=0.9, beta1=0.9, beta2=0.999, eps=1e-8):
    """the momentum argument is ignored"""
    return _fit(x, y, optimizer, lr, steps, momentum, beta1, beta2, eps, plain=True)


def fit_linear__defaults(x, y, optimizer, lr, steps, momentum=0.9, beta1=0.9, beta2=0.999, eps=1e-8):
    """pass the arguments on"""
    return _fit(x, y, optimizer, lr, steps, 0.9, 0.9, 0.999, 1e-8)


def fit_linear__t_from_zero(x, y, optimizer, lr, steps, momentum=0.9, beta1=0.9, beta2=0.999, eps=1e-8):
    """None"""
    if optimizer == "sgd":
        return _fit(x, y, optimizer, lr, steps, momentum, beta1, beta2, eps)
    return _fit(x, y, optimizer, lr, steps, momentum, beta1, beta2, eps, t0=2)


def fit_linear__losses_list_of_one(x, y, optimizer, lr, steps, momentum=0.9, beta1=0.9, beta2=0.999, eps=1e-8):
    """one loss per step"""
    w, b, losses = _fit(x, y, optimizer, lr, steps, momentum, beta1, beta2, eps)
    return w, b, losses[-1:]
