import numpy as np

def allreduce_mean__repeat(grads):
    return np.repeat(grads.sum(0, keepdims=True) / len(grads), len(grads), axis=0).astype(grads.dtype)

def attainable_flops__if(intensity, peak_flops, bandwidth):
    m = intensity * bandwidth
    return m if m < peak_flops else peak_flops
