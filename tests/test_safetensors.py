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
    assert names == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "ckpt" / st.INDEX_NAME).read_text())
    assert index["metadata"]["total_size"] == 5 * 1024 and len(index["weight_map"]) == 5
    back = st.load_sharded(tmp_path / "ckpt")
    for k in t:
        _assert_same(back[k], t[k])
    os.remove(tmp_path / "ckpt" / names[1])
    with pytest.raises(CheckpointError, match="cannot open"):
        st.load_sharded(tmp_path / "ckpt")


def _sharded_pair(tmp_path, rng):
    """Two saves of different content into one folder; returns (old, new, old names, new names)."""
    old = {f"w{i}": rng.standard_normal((8, 8)).astype(np.float32) for i in range(4)}
    new = {k: v + 1 for k, v in old.items()}
    d = tmp_path / "ckpt"
    old_names = st.save_sharded(old, d, max_shard_bytes=2 * 8 * 8 * 4)
    return d, old, new, old_names


def test_sharded_replace_removes_old_shards(tmp_path, rng):
    d, old, new, old_names = _sharded_pair(tmp_path, rng)
    new_names = st.save_sharded(new, d, max_shard_bytes=2 * 8 * 8 * 4)
    assert new_names == [f"model-v2-0000{i}-of-00002.safetensors" for i in (1, 2)]  # never the names of the old
    assert sorted(os.listdir(d)) == sorted(new_names + [st.INDEX_NAME])
    for k, v in st.load_sharded(d).items():
        _assert_same(v, new[k])


def test_sharded_mix_of_two_saves_is_refused(tmp_path, rng):
    """Shards of another save put in place of the right ones (an interrupted copy) are detected."""
    d, old, new, old_names = _sharded_pair(tmp_path, rng)
    other = st.save_sharded(new, tmp_path / "other", max_shard_bytes=2 * 8 * 8 * 4)
    os.replace(tmp_path / "other" / other[1], d / old_names[1])  # same tensors and shapes, other content
    with pytest.raises(CheckpointError, match="00002-of-00002.*another save"):
        st.load_sharded(d)


@pytest.mark.parametrize("edit,match", [
    (lambda ix: ix["weight_map"].pop("w3"), "digest"),  # a dropped tensor is not a partial load
    (lambda ix: ix["metadata"].update(total_size=1), "total_size"),
    (lambda ix: ix["metadata"].pop("tinyllm.weight_map_sha256") and ix["weight_map"].pop("w3"), "another save"),
    (lambda ix: ix.update(weight_map=[]), "weight_map"),
    (lambda ix: ix.update(weight_map={}, metadata={}), "non-empty 'weight_map'"),  # found by fuzzing
    (lambda ix: ix["weight_map"].update(w0="../x.safetensors"), "plain file name"),
])
def test_sharded_index_edits_are_refused(tmp_path, rng, edit, match):
    d, *_ = _sharded_pair(tmp_path, rng)
    index = json.loads((d / st.INDEX_NAME).read_text())
    edit(index)
    (d / st.INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=match):
        st.load_sharded(d)


def test_hf_style_index_without_digest_loads(tmp_path, rng):
    stn = pytest.importorskip("safetensors.numpy")
    t = {f"w{i}": rng.standard_normal(4).astype(np.float32) for i in range(3)}
    stn.save_file({"w0": t["w0"], "w1": t["w1"]}, str(tmp_path / "a.safetensors"))
    stn.save_file({"w2": t["w2"]}, str(tmp_path / "b.safetensors"))
    index = {"metadata": {"total_size": 48}, "weight_map": {"w0": "a.safetensors", "w1": "a.safetensors", "w2": "b.safetensors"}}
    (tmp_path / st.INDEX_NAME).write_text(json.dumps(index))
    for k, v in st.load_sharded(tmp_path).items():
        _assert_same(v, t[k])
    index["weight_map"].pop("w1")  # the shard holds a tensor the index does not list for it
    (tmp_path / st.INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="a.safetensors.*'w1'.*not listed"):
        st.load_sharded(tmp_path)


def test_sharded_save_failing_midway_leaves_old_checkpoint(tmp_path, rng, monkeypatch):
    d, old, new, old_names = _sharded_pair(tmp_path, rng)
    calls = []
    real = st.save_file

    def failing(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real(tensors, path, metadata)

    monkeypatch.setattr(st, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        st.save_sharded(new, d, max_shard_bytes=2 * 8 * 8 * 4)
    assert sorted(os.listdir(d)) == sorted(old_names + [st.INDEX_NAME])  # the first new shard was removed
    for k, v in st.load_sharded(d).items():
        _assert_same(v, old[k])


_SAVE_FOREVER = """
import sys
import numpy as np
from tinyllm.io import safetensors as st
rng = np.random.default_rng(0)
a = {f"w{i}": np.full((256, 256), i, np.float32) for i in range(8)}
b = {k: v + 100 for k, v in a.items()}
print("ready", flush=True)
while True:
    for t in (a, b):
        st.save_sharded(t, sys.argv[1], max_shard_bytes=2 * 256 * 256 * 4)
"""


def test_sharded_save_killed_midway_stays_consistent(tmp_path):
    """SIGKILL a process that keeps replacing a sharded checkpoint: whenever it dies, the folder
    loads as one save or the other, never a mix, and the next save clears what it left."""
    import signal
    import subprocess
    import sys
    import time

    d = tmp_path / "ckpt"
    a = {f"w{i}": np.full((256, 256), i, np.float32) for i in range(8)}
    b = {k: v + 100 for k, v in a.items()}
    st.save_sharded(a, d, max_shard_bytes=2 * 256 * 256 * 4)
    script = tmp_path / "save_forever.py"
    script.write_text(_SAVE_FOREVER)
    interrupted = 0
    for delay in (0.05, 0.13, 0.21, 0.34, 0.55, 0.7, 0.9, 1.1):
        proc = subprocess.Popen([sys.executable, str(script), str(d)], stdout=subprocess.PIPE)
        proc.stdout.readline()  # "ready": the imports are done
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        got = st.load_sharded(d, mmap=False)
        which = "a" if got["w0"][0, 0] == 0 else "b"
        for k, v in (a if which == "a" else b).items():
            _assert_same(got[k], v)
        leftovers = sorted(set(os.listdir(d)) - set(json.loads((d / st.INDEX_NAME).read_text())["weight_map"].values()) - {st.INDEX_NAME})
        interrupted += bool(leftovers)
        st.save_sharded(a, d, max_shard_bytes=2 * 256 * 256 * 4)  # the next save cleans up
        index = json.loads((d / st.INDEX_NAME).read_text())
        assert sorted(os.listdir(d)) == sorted(set(index["weight_map"].values()) | {st.INDEX_NAME}), leftovers
    assert interrupted  # some kill hit a save midway (it left files behind); which ones depends on timing


_SAVE_FILE_FOREVER = """
import sys
import numpy as np
from tinyllm.io import safetensors as st
a = {"w": np.zeros((1024, 1024), np.float32)}
b = {"w": np.ones((1024, 1024), np.float32)}
print("ready", flush=True)
while True:
    for t in (a, b):
        st.save_file(t, sys.argv[1])
"""


def test_save_file_killed_midway_keeps_a_whole_file(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    p = tmp_path / "w.safetensors"
    script = tmp_path / "save_forever.py"
    script.write_text(_SAVE_FILE_FOREVER)
    for delay in (0.1, 0.3, 0.5, 0.8):
        proc = subprocess.Popen([sys.executable, str(script), str(p)], stdout=subprocess.PIPE)
        proc.stdout.readline()
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if p.exists():
            w = st.load_file(p)["w"]
            assert w.shape == (1024, 1024) and np.all(w == w[0, 0])
        st.save_file({"w": np.zeros(1, np.float32)}, p)  # cleans a temporary file the kill left
        assert sorted(os.listdir(tmp_path)) == ["save_forever.py", "w.safetensors"]


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
    ({"w": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}, "'w'.*unknown dtype \\['F32'\\]"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, "'w'.*gap of 4 bytes"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, "cover 4 of the 8 data bytes"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "v": {"dtype": "U8", "shape": [0], "data_offsets": [2, 2]}}, "'v'.*overlap tensor 'w'"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 10**80]}}, "integer of 81 digits"),
])
def test_lying_headers(tmp_path, header, match):
    with pytest.raises(CheckpointError, match=match) as e:
        st.SafetensorsFile(_file_with_header(tmp_path, header, b"\0" * 8))
    assert "bad.safetensors" in str(e.value)


def _raw_header_file(tmp_path, text: bytes, data: bytes, n=None):
    p = tmp_path / "raw.safetensors"
    p.write_bytes((len(text) if n is None else n).to_bytes(8, "little") + text + data)
    return p


@pytest.mark.parametrize("text,match", [
    (b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
     "duplicate key 'w'"),
    (b'{"w":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested 100001 levels"),  # RecursionError before
    (b'{"\\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', "surrogate"),
    (b'{"w":{"dtype":"F32","shape":[NaN],"data_offsets":[0,8]}}', "NaN is not a JSON number"),
])
def test_hostile_header_json(tmp_path, text, match):
    with pytest.raises(CheckpointError, match="raw.safetensors: header: .*" + match):
        st.SafetensorsFile(_raw_header_file(tmp_path, text, b"\0" * 8))


def test_header_length_off_is_caught(tmp_path, rng):
    """A header length a few bytes off never loads shifted bytes."""
    p = tmp_path / "a.safetensors"
    st.save_file({"w": np.arange(6, dtype=np.float32), "b": np.ones(3, np.uint8)}, p)
    raw = p.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    for delta in (-8, -3, -1, 1, 4, 8):
        q = tmp_path / "off.safetensors"
        q.write_bytes((n + delta).to_bytes(8, "little") + raw[8:])
        with pytest.raises(CheckpointError, match="off.safetensors"):
            st.SafetensorsFile(q)


def test_acceptance_agrees_with_safetensors_package(tmp_path):
    """Hand-made edge cases: we accept exactly what the package accepts (and read the same)."""
    stn = pytest.importorskip("safetensors.numpy")
    e = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    cases = [
        ({"a": e}, 4), ({"a": e}, 8), ({"a": {**e, "data_offsets": [4, 8]}}, 8), ({}, 0), ({}, 1),
        ({"a": e, "z": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}}, 4),
        ({"a": e, "z": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}, 4),
        ({"a": e, "z": {"dtype": "F32", "shape": [0], "data_offsets": [2, 2]}}, 4),
        ({"a": e, "b": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]}}, 6),
        ({"a": e, "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}, 6),
        ({"__metadata__": None, "a": e}, 4), ({"__metadata__": {"k": "v"}, "a": e}, 4),
        ({"__metadata__": {"k": 1}, "a": e}, 4), ({"a": {**e, "shape": [1.0]}}, 4),
    ]
    for i, (header, n_data) in enumerate(cases):
        p = _file_with_header(tmp_path, header, bytes(range(n_data)), name=f"c{i}.safetensors")
        try:
            theirs = stn.load(p.read_bytes())
        except Exception:
            theirs = None
        try:
            ours = st.load_file(p)
        except CheckpointError:
            ours = None
        assert (ours is None) == (theirs is None), (header, n_data)
        if ours is not None:
            assert ours.keys() == theirs.keys()
            for k in ours:
                _assert_same(ours[k], theirs[k])


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
    with pytest.raises(CheckpointError, match="junk.safetensors: header: not UTF-8"):
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
