"""Layers with explicit forward and backward passes.

Every layer follows one protocol: ``y = layer.forward(x)`` caches what the
backward pass needs, and ``dx = layer.backward(dy)`` returns dL/dx while adding
dL/dparam into each parameter's ``.grad``. The maths without caches lives in
:mod:`tinyllm.nn.functional`; :mod:`tinyllm.nn.gradcheck` checks any layer's
backward against finite differences.
"""
from tinyllm.nn import functional, gradcheck
from tinyllm.nn.activations import GELU, ReLU, SiLU
from tinyllm.nn.dropout import Dropout
from tinyllm.nn.embedding import Embedding
from tinyllm.nn.linear import Linear
from tinyllm.nn.loss import CrossEntropyLoss
from tinyllm.nn.module import Module, Parameter
from tinyllm.nn.norm import LayerNorm, RMSNorm
from tinyllm.nn.sequential import Sequential
from tinyllm.nn.softmax import Softmax

__all__ = [
    "Module", "Parameter", "Linear", "Embedding", "ReLU", "GELU", "SiLU", "Softmax", "CrossEntropyLoss",
    "LayerNorm", "RMSNorm", "Dropout", "Sequential", "functional", "gradcheck",
]
