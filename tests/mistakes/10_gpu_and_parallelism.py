import numpy as np


def allreduce_mean__one_rank(grads):
    """the mean of one rank"""
    return grads.mean(axis=0)


def allreduce_mean__keepdims(grads):
    """np.broadcast_to the input's shape"""
    return grads.mean(axis=0, keepdims=True)


def allreduce_mean__last_axis(grads):
    """the mean is taken over the last axis"""
    return np.broadcast_to(grads.mean(axis=-1, keepdims=True), grads.shape).astype(grads.dtype)


def allreduce_mean__float64(grads):
    """expected float32"""
    return np.broadcast_to(grads.astype(np.float64).mean(axis=0), grads.shape).copy()


def allreduce_mean__r_minus_one(grads):
    """divided by R - 1"""
    return np.broadcast_to(grads.sum(axis=0) / max(len(grads) - 1, 1), grads.shape).astype(grads.dtype)


def attainable_flops__max(intensity, peak_flops, bandwidth):
    """takes the larger of the two roofs"""
    return max(peak_flops, intensity * bandwidth)


def attainable_flops__divides(intensity, peak_flops, bandwidth):
    """FLOP/s = intensity * bandwidth"""
    return min(peak_flops, intensity / bandwidth)


def attainable_flops__hard_coded(intensity, peak_flops, bandwidth):
    """uses the peak and bandwidth of one machine"""
    return min(60e12, intensity * 3.0e12)


def attainable_flops__ridge_wrong_side(intensity, peak_flops, bandwidth):
    """always the compute peak"""
    ridge = bandwidth / peak_flops
    return peak_flops if intensity > ridge else intensity * bandwidth


# Written after the checks, graded once before any change to them (see the report).


def allreduce_mean__median(grads):
    """None"""
    return np.broadcast_to(np.median(grads, axis=0), grads.shape).astype(grads.dtype)


def attainable_flops__sum(intensity, peak_flops, bandwidth):
    """None"""
    return 1.0 / (1.0 / peak_flops + 1.0 / (intensity * bandwidth))
