import numpy as np

def gd_step__copy(theta, grad, lr):
    out = theta.copy()
    out -= lr * grad
    return out

def mse_loss__np(w, b, x, y):
    return np.mean(np.square(w * x + b - y))

def mse_grad__dot(w, b, x, y):
    e = w * x + b - y
    n = len(x)
    return 2 * e.dot(x) / n, 2 * e.sum() / n

def sgd_momentum_step__f64(param, grad, velocity, lr, momentum):
    v = np.add(np.multiply(momentum, velocity), grad)
    return param - lr * v, v

def adam_step__f32(param, grad, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * np.square(grad)
    step = lr * (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)
    return (param - step).astype(param.dtype), m, v
