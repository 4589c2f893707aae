"""Shared fixtures. ``xp`` runs a test once per available backend: NumPy always,
CuPy when a GPU is usable (``TINYLLM_TEST_BACKENDS=numpy`` restricts it)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tinyllm import backend


def _backends():
    names = ["numpy"]
    wanted = os.environ.get("TINYLLM_TEST_BACKENDS", "numpy,cupy").split(",")
    if "cupy" in wanted and backend.gpu_available():
        names.append("cupy")
    return [n for n in names if n in wanted] or ["numpy"]


@pytest.fixture(params=_backends())
def xp(request):
    """The array module under test: ``numpy`` or ``cupy``."""
    if request.param == "cupy":
        import cupy

        return cupy
    return np


@pytest.fixture
def rng():
    return np.random.default_rng(0)
