"""Layers with explicit forward and backward passes."""
from tinyllm.nn.module import Module, Parameter

__all__ = ["Module", "Parameter"]
