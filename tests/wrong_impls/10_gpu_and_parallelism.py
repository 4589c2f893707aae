import numpy as np


def allreduce_mean__sum(grads):
    g = np.asarray(grads)
    return np.broadcast_to(g.sum(axis=0), g.shape).astype(g.dtype)


def attainable_flops__always_peak(intensity, peak_flops, bandwidth):
    return peak_flops


def attainable_flops__no_cap(intensity, peak_flops, bandwidth):
    return intensity * bandwidth
