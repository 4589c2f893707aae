"""tinyllm.backend: device choice from TINYLLM_DEVICE, the GPU fallback and host/device copies.

CuPy is simulated with small fake modules put into ``sys.modules`` so that every branch
runs on a machine without a GPU; the tests at the end use the real CuPy when a GPU is usable.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from tinyllm import backend


@pytest.fixture(autouse=True)
def fresh_backend(monkeypatch):
    """Forget what the backend learnt about CuPy, so each test decides afresh."""
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_checked", False)
    monkeypatch.setattr(backend, "_gpu_problem", None)
    monkeypatch.setattr(backend, "_fallback_announced", False)
    monkeypatch.delenv("TINYLLM_DEVICE", raising=False)


def _no_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` now raises ImportError


class _FakeCupyArray:
    """Stands in for cupy.ndarray: its class lives in a module named cupy.*, .get() copies to the host."""

    def __init__(self, data):
        self.data = np.array(data)

    def get(self):
        return self.data.copy()

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def shape(self):
        return self.data.shape


_FakeCupyArray.__module__ = "cupy._core.core"


def _fake_cupy(monkeypatch, *, available=True, alloc_error=None):
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "13.9.9"
    cupy.ndarray = _FakeCupyArray

    def zeros(shape):
        if alloc_error is not None:
            raise alloc_error
        return _FakeCupyArray(np.zeros(shape))

    cupy.zeros = zeros
    cupy.asarray = lambda x: x if isinstance(x, _FakeCupyArray) else _FakeCupyArray(x)
    cupy.cuda = types.SimpleNamespace(
        is_available=lambda: available,
        Device=lambda: types.SimpleNamespace(id=0, synchronize=lambda: None),
        runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"name": b"Fake GPU 9000"}),
    )
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    return cupy


# --- TINYLLM_DEVICE ---------------------------------------------------------------------------

def test_default_is_auto(monkeypatch):
    assert backend.requested_device() == "auto"
    monkeypatch.setenv("TINYLLM_DEVICE", "")
    assert backend.requested_device() == "auto"


@pytest.mark.parametrize("value, expected", [("cpu", "cpu"), ("GPU", "gpu"), (" auto ", "auto")])
def test_requested_device_is_normalised(monkeypatch, value, expected):
    monkeypatch.setenv("TINYLLM_DEVICE", value)
    assert backend.requested_device() == expected


@pytest.mark.parametrize("value", ["cuda", "tpu", "gpu0", "1"])
def test_unknown_device_in_environment_is_a_clear_value_error(monkeypatch, value):
    monkeypatch.setenv("TINYLLM_DEVICE", value)
    with pytest.raises(ValueError, match=r"TINYLLM_DEVICE=.*expected one of cpu, gpu, auto"):
        backend.requested_device()
    with pytest.raises(ValueError, match="TINYLLM_DEVICE"):
        backend.get_xp()


@pytest.mark.parametrize("device", ["cuda", "", 0, "cpu0"])
def test_unknown_device_argument_is_a_clear_value_error(device):
    with pytest.raises(ValueError, match=r"device=.*expected one of cpu, gpu, auto"):
        backend.resolve_device(device)


def test_cpu_never_touches_cupy(monkeypatch, capsys):
    cupy = _fake_cupy(monkeypatch)
    monkeypatch.setenv("TINYLLM_DEVICE", "cpu")
    assert backend.resolve_device() == "cpu"
    assert backend.get_xp() is np
    assert backend._cupy_checked is False  # CuPy was not even imported
    assert "cpu" in backend.describe().lower() and "NumPy" in backend.describe()
    assert capsys.readouterr().out == ""
    assert cupy is sys.modules["cupy"]


# --- falling back to the CPU ------------------------------------------------------------------

def _assert_one_line_fallback(capsys, reason):
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    assert out.startswith("tinyllm: GPU requested but unavailable, using the CPU instead")
    assert reason in out


def test_gpu_without_cupy_falls_back_with_one_line(monkeypatch, capsys):
    _no_cupy(monkeypatch)
    monkeypatch.setenv("TINYLLM_DEVICE", "gpu")
    assert backend.resolve_device() == "cpu"
    assert backend.get_xp() is np
    _assert_one_line_fallback(capsys, "CuPy is not installed")
    assert backend.gpu_available() is False
    assert "not installed" in backend.gpu_problem()


def test_auto_without_cupy_is_silently_cpu(monkeypatch, capsys):
    _no_cupy(monkeypatch)
    assert backend.resolve_device("auto") == "cpu"
    assert capsys.readouterr().out == ""
    assert "CuPy is not installed" in backend.describe()


def test_cupy_without_gpu_says_is_available_is_false(monkeypatch, capsys):
    _fake_cupy(monkeypatch, available=False)
    assert backend.resolve_device("gpu") == "cpu"
    _assert_one_line_fallback(capsys, "cupy.cuda.is_available() is False")
    assert backend.gpu_available() is False
    assert "is_available() is False" in backend.describe("gpu")


def test_cupy_whose_allocation_fails_falls_back(monkeypatch, capsys):
    error = RuntimeError("cudaErrorInsufficientDriver:\nCUDA driver version is insufficient\nfor CUDA runtime version")
    _fake_cupy(monkeypatch, alloc_error=error)
    assert backend.resolve_device("gpu") == "cpu"
    _assert_one_line_fallback(capsys, "RuntimeError: cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    assert backend.get_xp("gpu") is np


def test_cupy_whose_import_fails_falls_back(monkeypatch, capsys):
    def broken_import(name, *args, **kwargs):
        if name == "cupy":
            raise OSError("libcudart.so.12: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    real_import = __builtins__["__import__"] if isinstance(__builtins__, dict) else __builtins__.__import__
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr("builtins.__import__", broken_import)
    assert backend.resolve_device("gpu") == "cpu"
    _assert_one_line_fallback(capsys, "CuPy failed to import (OSError: libcudart.so.12")


def test_fallback_message_is_printed_once(monkeypatch, capsys):
    _no_cupy(monkeypatch)
    params = {f"w{i}": np.ones(3, dtype=np.float32) for i in range(5)}
    moved = backend.to_device(params, "gpu")
    assert all(isinstance(v, np.ndarray) for v in moved.values())
    backend.resolve_device("gpu")
    _assert_one_line_fallback(capsys, "CuPy is not installed")


def test_moving_a_model_to_a_missing_gpu_says_so_once_and_keeps_it_usable(monkeypatch, capsys):
    from tinyllm.nn.linear import Linear
    from tinyllm.nn.sequential import Sequential

    _no_cupy(monkeypatch)
    model = Sequential(Linear(3, 4, rng=0), Linear(4, 2, rng=1))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    assert model.to("gpu") is model
    _assert_one_line_fallback(capsys, "CuPy is not installed")
    for name, value in model.state_dict().items():
        assert isinstance(value, np.ndarray) and value.dtype == np.float32
        np.testing.assert_array_equal(value, before[name])
    y = model.forward(np.ones((2, 3), dtype=np.float32))
    assert y.shape == (2, 2) and y.dtype == np.float32


def test_cupy_is_probed_once(monkeypatch):
    calls = []
    cupy = _fake_cupy(monkeypatch, available=False)
    cupy.cuda.is_available = lambda: calls.append(1) or False
    for _ in range(3):
        backend.gpu_available()
    assert calls == [1]


# --- with a (fake) usable GPU -----------------------------------------------------------------

def test_usable_gpu_is_chosen_by_auto_and_gpu(monkeypatch, capsys):
    cupy = _fake_cupy(monkeypatch)
    assert backend.resolve_device("auto") == "gpu"
    monkeypatch.setenv("TINYLLM_DEVICE", "gpu")
    assert backend.get_xp() is cupy
    assert backend.describe() == "Using the GPU (Fake GPU 9000) through CuPy 13.9.9."
    assert capsys.readouterr().out == ""


def test_round_trip_through_a_fake_gpu(monkeypatch):
    _fake_cupy(monkeypatch)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    on_gpu = backend.to_device(x, "gpu")
    assert backend.is_gpu_array(on_gpu) and not backend.is_gpu_array(x)
    assert backend.get_array_module(on_gpu) is sys.modules["cupy"]
    assert backend.get_array_module(x, on_gpu) is sys.modules["cupy"]
    back = backend.to_numpy(on_gpu)
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    np.testing.assert_array_equal(back, x)
    np.testing.assert_array_equal(backend.to_device(on_gpu, "cpu"), x)
    nested = backend.to_device({"a": x, "b": [x, x]}, "gpu")
    assert backend.is_gpu_array(nested["a"]) and all(backend.is_gpu_array(v) for v in nested["b"])
    host = backend.to_numpy(nested)
    assert isinstance(host["b"], list)
    np.testing.assert_array_equal(host["b"][1], x)


# --- the array-module pattern on the CPU ------------------------------------------------------

def test_get_array_module_of_numpy_and_plain_values_is_numpy():
    assert backend.get_array_module(np.zeros(3)) is np
    assert backend.get_array_module(np.zeros(3), 1.0, [1, 2]) is np
    assert backend.get_array_module() is np


def test_cpu_round_trip_keeps_values_dtype_and_identity():
    x = np.linspace(-1, 1, 7, dtype=np.float32)
    assert backend.to_device(x, "cpu") is x  # no copy when already there
    assert backend.to_numpy(x) is x
    for dtype in (np.float16, np.float32, np.float64, np.int64):
        y = backend.to_numpy(backend.to_device(x.astype(dtype), "cpu"))
        assert y.dtype == dtype
        np.testing.assert_array_equal(y, x.astype(dtype))


def test_containers_keep_their_type_and_number_lists_become_arrays():
    x = np.ones((2, 2), dtype=np.float32)
    out = backend.to_device({"w": x, "pair": (x, x)}, "cpu")
    assert set(out) == {"w", "pair"} and isinstance(out["pair"], tuple) and out["pair"][0] is x
    as_array = backend.to_device([[1.0, 2.0], [3.0, 4.0]], "cpu")
    assert isinstance(as_array, np.ndarray) and as_array.shape == (2, 2)
    assert backend.to_numpy([1, 2, 3]).tolist() == [1, 2, 3]


def test_one_function_runs_on_whatever_device_its_input_lives_on(xp):
    def softmax(x):
        mod = backend.get_array_module(x)
        e = mod.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    x = xp.asarray(np.array([[1000.0, 1001.0, 1002.0]], dtype=np.float32))
    y = softmax(x)
    assert backend.get_array_module(y) is xp and y.dtype == np.float32
    np.testing.assert_allclose(backend.to_numpy(y).sum(), 1.0, rtol=1e-6)


def test_synchronize_is_a_no_op_on_the_cpu():
    backend.synchronize()
    backend.synchronize(np.zeros(2))


# --- the real GPU, when there is one ----------------------------------------------------------

@pytest.mark.gpu
def test_real_gpu_round_trip(monkeypatch):
    monkeypatch.undo()  # use the real, cached state
    if not backend.gpu_available():
        pytest.skip(f"no usable GPU: {backend.gpu_problem()}")
    import cupy

    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    g = backend.to_device(x, "gpu")
    assert isinstance(g, cupy.ndarray) and backend.get_array_module(g) is cupy
    np.testing.assert_array_equal(backend.to_numpy(g), x)
    assert backend.describe("gpu").startswith("Using the GPU (")
