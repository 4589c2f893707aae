"""The from-scratch safetensors reader/writer: bit-exact both ways with the safetensors package, and its errors."""
from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest

from tinyllm.errors import CheckpointError
from tinyllm.io import safetensors as st


def _sample(rng):
    return {
        "f64": rng.standard_normal((2, 3)),
        "f32": rng.standard_normal((4, 5)).astype(np.float32),
        "f16": rng.standard_normal(7).astype(np.float16),
        "bf16": rng.standard_normal((3, 2)).astype(ml_dtypes.bfloat16),
        "i64": rng.integers(-(2**40), 2**40, 5),
        "i32": rng.integers(-1000, 1000, (2, 2)).astype(np.int32),
        "i16": np.array([-3, 4], np.int16),
        "i8": np.array([-128, 127, 0], np.int8),
        "u8": np.arange(11, dtype=np.uint8),
        "bool": np.array([True, False, True]),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }


def _assert_same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))


def test_round_trip_all_dtypes(tmp_path, rng):
    t = _sample(rng)
    p = tmp_path / "x.safetensors"
    st.save_file(t, p, metadata={"format": "np", "step": "3"})
    f = st.SafetensorsFile(p)
    assert f.metadata == {"format": "np", "step": "3"}
    assert sorted(f.keys()) == sorted(t)
    for mmap in (True, False):
        back = st.load_file(p, mmap=mmap)
        for k in t:
            _assert_same(back[k], t[k])
    assert not st.load_file(p)["f32"].flags.writeable  # a view into the map
    assert st.load_file(p, mmap=False)["f32"].flags.writeable
    raw = p.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert (8 + n) % 8 == 0
    header = json.loads(raw[8:8 + n])
    for k, info in header.items():  # every tensor naturally aligned
        if k != "__metadata__":
            assert (8 + n + info["data_offsets"][0]) % st.DTYPES[info["dtype"]].itemsize == 0


def test_ours_loads_in_safetensors_package(tmp_path, rng):
    stn = pytest.importorskip("safetensors.numpy")
    t = _sample(rng)
    p = tmp_path / "ours.safetensors"
    st.save_file(t, p, metadata={"a": "b"})
    theirs = stn.load_file(str(p))
    assert set(theirs) == set(t)
    for k in t:
        _assert_same(theirs[k], t[k])


def test_package_file_loads_in_ours(tmp_path, rng):
    stn = pytest.importorskip("safetensors.numpy")
    t = _sample(rng)
    p = tmp_path / "theirs.safetensors"
    stn.save_file(t, str(p), metadata={"who": "safetensors"})
    f = st.SafetensorsFile(p)
    assert f.metadata == {"who": "safetensors"}
    for k in t:
        _assert_same(f.get(k), t[k])


def test_bf16_against_torch(tmp_path, rng):
    """bf16 bytes from torch (through the safetensors package) equal ml_dtypes' rounding."""
    torch = pytest.importorskip("torch")
    stt = pytest.importorskip("safetensors.torch")
    x = rng.standard_normal((8, 16)).astype(np.float32)
    p = tmp_path / "bf16.safetensors"
    stt.save_file({"w": torch.from_numpy(x).to(torch.bfloat16)}, str(p))
    _assert_same(st.load_file(p)["w"], x.astype(ml_dtypes.bfloat16))


def test_convert_dtype(rng):
    t = {"w": rng.standard_normal(5).astype(np.float32), "ids": np.arange(3)}
    for name, dt in [("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16), (np.float32, np.float32)]:
        out = st.convert_dtype(t, name)
        assert out["w"].dtype == np.dtype(dt) and out["ids"].dtype == t["ids"].dtype


def test_sharded(tmp_path, rng):
    t = {f"layer{i}.w": rng.standard_normal((16, 16)).astype(np.float32) for i in range(5)}
    names = st.save_sharded(t, tmp_path / "ckpt", max_shard_bytes=2 * 16 * 16 * 4)
    assert len(names) == 3 and names[0] == "model-00001-of-00003.safetensors"
    index = json.loads((tmp_path / "ckpt" / st.INDEX_NAME).read_text())
    assert index["metadata"]["total_size"] == 5 * 1024 and len(index["weight_map"]) == 5
    back = st.load_sharded(tmp_path / "ckpt")
    for k in t:
        _assert_same(back[k], t[k])
    os.remove(tmp_path / "ckpt" / names[1])
    with pytest.raises(CheckpointError, match="cannot open"):
        st.load_sharded(tmp_path / "ckpt")


def test_atomic_write_leaves_old_file_on_failure(tmp_path, rng):
    p = tmp_path / "a.safetensors"
    st.save_file({"w": np.ones(3, np.float32)}, p)

    class Boom:
        shape, dtype = (3,), np.dtype(np.float32)

        def __array__(self, *a, **k):
            raise RuntimeError("boom")

    with pytest.raises((RuntimeError, TypeError)):
        st.save_file({"w": np.zeros(3, np.float32), "x": Boom()}, p)
    np.testing.assert_array_equal(st.load_file(p)["w"], np.ones(3, np.float32))
    assert os.listdir(tmp_path) == ["a.safetensors"]


# ---- errors ---------------------------------------------------------------------

def _file_with_header(tmp_path, header: dict, data: bytes, name="bad.safetensors"):
    raw = json.dumps(header).encode()
    p = tmp_path / name
    p.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return p


@pytest.mark.parametrize("header,match", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]}}, "'w'.*span 12 bytes.*needs 8"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, "'w'.*past the end"),
    ({"w": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, "'w'.*unknown dtype 'F33'"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, "'b'.*overlap tensor 'a'"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "'w'.*shape"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, "'w'.*increasing"),
    ({"w": {"dtype": "F32", "shape": [2]}}, "'w'.*data_offsets"),
    ({"__metadata__": {"a": 1}}, "__metadata__"),
    ({"w": {"dtype": "F32", "shape": [2**62, 2**62, 0], "data_offsets": [0, 0]}}, "'w'.*absurd shape"),
])
def test_lying_headers(tmp_path, header, match):
    with pytest.raises(CheckpointError, match=match) as e:
        st.SafetensorsFile(_file_with_header(tmp_path, header, b"\0" * 8))
    assert "bad.safetensors" in str(e.value)


def test_truncated_and_garbage(tmp_path, rng):
    p = tmp_path / "a.safetensors"
    st.save_file(_sample(rng), p)
    raw = p.read_bytes()
    for cut in (0, 5, 8, 20, len(raw) - 1):
        q = tmp_path / f"cut{cut}.safetensors"
        q.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match="truncated|impossible|past the end") as e:
            st.SafetensorsFile(q)
        assert f"cut{cut}" in str(e.value)
    q = tmp_path / "junk.safetensors"
    q.write_bytes((4).to_bytes(8, "little") + b"\xff\xfe{]")
    with pytest.raises(CheckpointError, match="JSON"):
        st.SafetensorsFile(q)
    with pytest.raises(CheckpointError, match="cannot open"):
        st.SafetensorsFile(tmp_path / "missing.safetensors")


def test_missing_tensor(tmp_path):
    p = tmp_path / "a.safetensors"
    st.save_file({"w": np.ones(2, np.float32)}, p)
    with pytest.raises(CheckpointError, match="a.safetensors.*'v'.*missing"):
        st.SafetensorsFile(p).get("v")


def test_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match="'w'.*complex"):
        st.save_file({"w": np.ones(2, np.complex64)}, tmp_path / "a.safetensors")
    with pytest.raises(TypeError, match="metadata"):
        st.save_file({"w": np.ones(2, np.float32)}, tmp_path / "a.safetensors", metadata={"a": 1})
    with pytest.raises(ValueError, match="names"):
        st.save_file({"__metadata__": np.ones(2, np.float32)}, tmp_path / "a.safetensors")


# ---- property test ------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as hst  # noqa: E402


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=hst.data())
def test_random_corruption_only_checkpoint_errors(tmp_path_factory, data):
    rng = np.random.default_rng(1)
    t = {k: v for k, v in _sample(rng).items() if k in ("f32", "bf16", "i8", "bool", "scalar")}
    base = tmp_path_factory.mktemp("st") / "base.safetensors"
    st.save_file(t, base, metadata={"k": "v"})
    raw = bytearray(base.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    for _ in range(data.draw(hst.integers(0, 6))):
        limit = data.draw(hst.sampled_from([8, 8 + n, len(raw)]))
        raw[data.draw(hst.integers(0, limit - 1))] = data.draw(hst.integers(0, 255))
    cut = data.draw(hst.one_of(hst.just(len(raw)), hst.integers(0, len(raw))))
    p = base.with_name("fuzz.safetensors")
    p.write_bytes(bytes(raw[:cut]))
    try:
        f = st.SafetensorsFile(p)
        for k in f.keys():
            x = f.get(k)
            assert x.shape == f.shape(k)
    except CheckpointError:
        pass
