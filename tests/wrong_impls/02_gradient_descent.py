import numpy as np


def gd_step__uphill(theta, grad, lr):
    return theta + lr * grad


def mse_loss__sum(w, b, x, y):
    return float(np.sum((w * x + b - y) ** 2))


def mse_grad__no_factor_two(w, b, x, y):
    e = w * x + b - y
    return float(np.mean(e * x)), float(np.mean(e))


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
