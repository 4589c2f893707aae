import numpy as np


class _CLinear:
    def __init__(self, n_in, n_out, rng):
        self.W = rng.standard_normal((n_in, n_out)) * np.sqrt(2 / n_in)
        self.b = np.zeros((n_out,))
        self.cache = None

    def forward(self, x):
        self.cache = x.copy()
        return np.einsum("ni,io->no", x, self.W) + self.b

    def backward(self, dy):
        self.dW = np.einsum("ni,no->io", self.cache, dy)
        self.db = np.einsum("no->o", dy)
        return np.einsum("no,io->ni", dy, self.W)

    def step(self, lr):
        self.W -= lr * self.dW
        self.b -= lr * self.db


class _CReLU:
    def forward(self, x):
        self.x = x
        return x * (x > 0)

    def backward(self, dy):
        out = dy.copy()
        out[self.x <= 0] = 0
        return out


class _CCE:
    def forward(self, logits, targets):
        lse = np.logaddexp.reduce(logits, axis=-1)
        self.grad = np.exp(logits - lse[:, None])
        self.grad[np.arange(len(targets)), targets] -= 1
        self.grad /= len(targets)
        return float(np.mean(lse - logits[np.arange(len(targets)), targets]))

    def backward(self):
        return self.grad


class _CMLP:
    def __init__(self, sizes, rng):
        self.lin = [_CLinear(a, b, rng) for a, b in zip(sizes[:-1], sizes[1:])]
        self.act = [_CReLU() for _ in self.lin[:-1]]

    def forward(self, x):
        for lin, act in zip(self.lin, self.act):
            x = act.forward(lin.forward(x))
        return self.lin[-1].forward(x)

    def backward(self, d):
        d = self.lin[-1].backward(d)
        for lin, act in zip(self.lin[-2::-1], self.act[::-1]):
            d = lin.backward(act.backward(d))
        return d

    def step(self, lr):
        for lin in self.lin:
            lin.step(lr)


def Linear__einsum(in_features, out_features, rng):
    return _CLinear(in_features, out_features, rng)


def ReLU__masked_copy():
    return _CReLU()


def SoftmaxCrossEntropy__logaddexp():
    return _CCE()


def MLP__zipped(sizes, rng):
    return _CMLP(sizes, rng)
