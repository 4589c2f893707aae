import numpy as np


def gd_step__returns_step(theta, grad, lr):
    """returned the step lr * grad"""
    return lr * grad


def gd_step__fixed_lr(theta, grad, lr):
    """uses the learning rate 0.01 whatever lr is"""
    return theta - 0.01 * grad


def gd_step__in_place(theta, grad, lr):
    """the call changed its input theta"""
    theta -= lr * grad
    return theta


def gd_step__no_lr(theta, grad, lr):
    """ignores the learning rate"""
    return theta - grad


def mse_loss__half(w, b, x, y):
    """half the mean squared error"""
    return float(0.5 * np.mean((w * x + b - y) ** 2))


def mse_loss__rmse(w, b, x, y):
    """root of the mean squared error"""
    return float(np.sqrt(np.mean((w * x + b - y) ** 2)))


def mse_loss__abs(w, b, x, y):
    """mean absolute error"""
    return float(np.mean(np.abs(w * x + b - y)))


def mse_loss__square_of_mean(w, b, x, y):
    """squares the mean error"""
    return float(np.mean(w * x + b - y) ** 2)


def mse_grad__sum(w, b, x, y):
    """N times too large"""
    e = w * x + b - y
    return float(2 * np.sum(e * x)), float(2 * np.sum(e))


def mse_grad__sign(w, b, x, y):
    """wrong sign"""
    e = y - (w * x + b)
    return float(2 * np.mean(e * x)), float(2 * np.mean(e))


def mse_grad__swapped(w, b, x, y):
    """swapped"""
    e = w * x + b - y
    return float(2 * np.mean(e)), float(2 * np.mean(e * x))


def mse_grad__no_x(w, b, x, y):
    """without the factor x"""
    e = w * x + b - y
    return float(2 * np.mean(e)), float(2 * np.mean(e))


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


def gd_step__plus_grad_times(theta, grad, lr):
    """None"""
    return theta * (1 - lr) - lr * grad


def mse_loss__wrong_residual(w, b, x, y):
    """None"""
    return float(np.mean((w * x - b - y) ** 2))


def mse_grad__db_times_x(w, b, x, y):
    """None"""
    e = w * x + b - y
    return float(2 * np.mean(e * x)), float(2 * np.mean(e * x))


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
