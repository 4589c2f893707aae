import numpy as np


def sgd_momentum_step__f64(param, grad, velocity, lr, momentum):
    v = np.add(np.multiply(momentum, velocity), grad)
    return param - lr * v, v

def adam_step__f32(param, grad, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * np.square(grad)
    step = lr * (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)
    return (param - step).astype(param.dtype), m, v


def mse_loss_and_grad__einsum(w, b, x, y):
    e = np.einsum("nd,d->n", x, w) + b - y
    return np.mean(np.square(e)), np.einsum("nd,n->d", x, e) * (2 / len(e)), 2 * np.sum(e) / len(e)


def fit_linear__stacked(x, y, optimizer, lr, steps, momentum=0.9, beta1=0.9, beta2=0.999, eps=1e-8):
    theta = np.zeros(x.shape[1] + 1)                  # w and b together: Adam and SGD act elementwise
    xa = np.hstack([x, np.ones((len(x), 1))])
    m, v, losses = np.zeros_like(theta), np.zeros_like(theta), []
    for t in range(1, steps + 1):
        e = xa @ theta - y
        losses.append(np.mean(e ** 2))
        g = 2 * xa.T @ e / len(y)
        if optimizer == "sgd":
            m = momentum * m + g
            theta = theta - lr * m
        else:
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g ** 2
            theta = theta - lr * (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)
    return theta[:-1], theta[-1], losses
