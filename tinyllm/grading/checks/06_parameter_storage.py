"""Graded checks for exercises/06_parameter_storage.ipynb.

References: the library's safetensors reader and writer (:mod:`tinyllm.io.safetensors`, which checks a header as
strictly as the reference implementation) and the ``safetensors`` package itself (its Rust parser,
``safetensors.deserialize``, and its NumPy writer). The learner's bytes are judged only by what they are: the
grader writes them to a temporary file of its own and reads them with both. Hidden tensors come from fixed seeds:
every dtype of the exercise (bfloat16 included), 0-d, empty and non-contiguous arrays.
"""
from __future__ import annotations

import json
import os
import secrets
import struct
import tempfile

import ml_dtypes
import numpy as np
try:                                    # the reference implementation: installed with the test extras; in the
    import safetensors                  # course environment (`make lab`) the library's reader judges alone
    import safetensors.numpy
except ImportError:
    safetensors = None

from tinyllm.errors import CheckpointError
from tinyllm.grading.core import CallError, Exercise, Fail, array, call, call_seeing_args, value, with_args
from tinyllm.io.safetensors import SafetensorsFile, save_file

EXERCISES: list[Exercise] = []
BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": BF16,
          "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
          "U8": np.dtype("u1"), "BOOL": np.dtype("?")}
NAMES = {dt: n for n, dt in DTYPES.items()}


def _tensor(g, dt, shape):
    if dt == np.dtype("?"):
        return g.integers(0, 2, shape).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return g.integers(info.min, int(info.max) + 1, shape, dtype=np.int64 if dt.kind == "i" else np.uint64).astype(dt)
    return (g.standard_normal(shape) * 3).astype(np.float32).astype(dt)


def _tensors(seed, n=7):
    g = np.random.default_rng(seed)
    shapes = [(), (0,), (3, 0), (5,), (2, 3), (4, 1, 3), (7, 5)]
    names = list(DTYPES)
    out = {}
    for k in range(n):
        dt = DTYPES[names[(seed + 3 * k) % len(names)]] if k else BF16
        name = ["layers.0.w", "b", "emb", "λ.scale", "z", "step", "mask", "a.b.c", "k"][(seed + k) % 9] + f"{k}"
        out[name] = _tensor(g, dt, shapes[int(g.integers(0, len(shapes)))] if k > 1 else shapes[3 + k])
    return dict(sorted(out.items(), key=lambda kv: kv[1].dtype.itemsize))      # smallest first: the writer must reorder


def _bits(x):
    x = np.ascontiguousarray(x)
    return x.reshape(-1).view(np.uint8).tobytes()


def _same_tensor(got, want):
    return tuple(got.shape) == tuple(want.shape) and _bits(got) == _bits(want)


def _file(data: bytes) -> str:
    fd, path = tempfile.mkstemp(suffix=".safetensors")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


# --- the writer -----------------------------------------------------------------------------------
WRITE_SETS = [(_tensors(61), None), (_tensors(62, 9), {"format": "np", "note": "Grüße"}), (_tensors(63, 4), {})]
ALIGN_SET = {"flag": np.ones(3, bool), "half": np.arange(3, dtype=np.float16), "idx": np.arange(5, dtype=np.int64),
             "bf": np.ones(1, BF16), "byte": np.arange(7, dtype=np.uint8), "f": np.ones(3, np.float32)}
ODD = {"t": np.arange(12, dtype=np.float32).reshape(3, 4).T, "every_other": np.arange(12, dtype=np.int16)[::3],
       "bf_t": np.arange(6, dtype=np.float32).reshape(2, 3).astype(BF16).T, "zero_d": np.array(2.5)}


def _read_back(data, what, want, metadata):
    """Read the learner's bytes with the library and the safetensors package; Fail on any difference."""
    path = _file(data)
    try:
        try:
            f = SafetensorsFile(path)
            got = {n: f.get(n, copy=True) for n in f.keys()}
            meta = f.metadata
        except CheckpointError as e:
            raise Fail(f"the library's reader refuses {what}: {str(e).split(': ', 1)[-1]}") from None
    finally:
        os.unlink(path)
    try:
        theirs = None if safetensors is None else {n: t for n, t in safetensors.deserialize(data)}
    except Exception as e:                                  # the package's own error type and message
        raise Fail(f"the safetensors package refuses {what}: {e}") from None
    if set(got) != set(want):
        raise Fail(f"{what} holds tensors {sorted(got)}, expected {sorted(want)}")
    for name, x in want.items():
        x = np.asarray(x)
        x = x.astype(x.dtype.newbyteorder("<")) if x.dtype.byteorder == ">" else x
        if got[name].dtype != x.dtype:
            raise Fail(f"{what}: tensor {name!r} has dtype {NAMES.get(got[name].dtype, got[name].dtype)}, expected {NAMES[x.dtype]}")
        if tuple(got[name].shape) != x.shape:
            raise Fail(f"{what}: tensor {name!r} has shape {list(got[name].shape)}, expected {list(x.shape)}")
        if _bits(got[name]) != _bits(x):
            raise Fail(f"{what}: tensor {name!r} holds other values than the array given (C order, little-endian: "
                       "np.ascontiguousarray(x) and a little-endian dtype)")
        t = None if theirs is None else theirs[name]
        if t is not None and t["dtype"] != NAMES[x.dtype] or list(t["shape"]) != list(x.shape) or bytes(t["data"]) != _bits(x):
            raise Fail(f"{what}: the safetensors package reads tensor {name!r} differently from the library")
    if (meta or {}) != (metadata or {}):
        raise Fail(f"{what}: the metadata reads back as {meta}, expected {metadata or {}}: write it under "
                   "\"__metadata__\" as a dict of str -> str")


def _bytes_of(r, what):
    x = array(value(r, what), what)
    if x.dtype != np.uint8 or x.ndim != 1:
        raise Fail(f"{what} is a {x.dtype} array of shape {x.shape}, expected a flat uint8 array (the file's bytes)")
    return x.tobytes()


def _unchanged(after, before):
    """Fail when the call changed one of the tensors it was given (compared bit for bit)."""
    if not isinstance(after, dict):
        return
    for name, x in before.items():
        y = after.get(name)
        if y is not None and hasattr(y, "shape") and (tuple(y.shape) != x.shape or _bits(y) != _bits(x)):
            raise Fail(f"the call changed its input tensors[{name!r}]: convert a copy (astype, ascontiguousarray) and "
                       "leave the arrays you are given as they were")


def _judge_roundtrip(rs):
    for (tensors, meta), r in zip(WRITE_SETS, rs):
        got, after = with_args(r)
        what = f"safetensors_bytes of {len(tensors)} tensors"
        _read_back(_bytes_of(got, what), "your bytes", tensors, meta)
        if after is not None:
            _unchanged(after[0], tensors)


def _judge_alignment(rs):
    data = _bytes_of(rs[0], "safetensors_bytes")
    _read_back(data, "your bytes", ALIGN_SET, None)
    (n,) = struct.unpack_from("<Q", data)
    if (8 + n) % 8:
        raise Fail(f"the data start at byte 8 + {n} = {8 + n}, not a multiple of 8: pad the header with spaces")
    if data[8:8 + n].rstrip(b" ")[-1:] != b"}":
        raise Fail("pad the header with spaces (b' '), after the JSON object")
    header = json.loads(data[8:8 + n])
    for name, info in header.items():
        if name == "__metadata__":
            continue
        size = DTYPES[info["dtype"]].itemsize
        if info["data_offsets"][0] % size:
            raise Fail(f"tensor {name!r} ({info['dtype']}) starts at data offset {info['data_offsets'][0]}, not a "
                       f"multiple of its {size}-byte items: lay the tensors out largest item size first, then by name")
    order = [n for n in header if n != "__metadata__"]
    begins = [header[n]["data_offsets"][0] for n in order]
    want = sorted(ALIGN_SET, key=lambda k: (-ALIGN_SET[k].dtype.itemsize, k))
    by_offset = [n for _, n in sorted(zip(begins, order))]
    if by_offset != want:
        raise Fail(f"the tensors lie in the order {by_offset}, expected {want}: largest item size first, then by name")


def _judge_odd(rs):
    got, after = with_args(rs[0])
    _read_back(_bytes_of(got, "safetensors_bytes of transposed, strided and 0-d arrays"), "your bytes", ODD, {"k": "v"})
    if after is not None:
        _unchanged(after[0], ODD)


def _judge_refuses(rs):
    _read_back(_bytes_of(rs[0], "safetensors_bytes"), "your bytes", {"w": np.ones(2, np.float32)}, None)
    for r, what in zip(rs[1:], ("complex64", "datetime64")):
        if isinstance(r, CallError) and r.type == "ValueError":
            continue
        if isinstance(r, CallError):
            raise Fail(f"safetensors_bytes with a {what} tensor raised {r.type}, expected ValueError naming the dtype")
        raise Fail(f"safetensors_bytes with a {what} tensor returned bytes: raise ValueError, safetensors has no {what}")


ex = Exercise("safetensors_bytes", "Write a safetensors file")
ex.test("the library and the safetensors package read your bytes back: every dtype, bfloat16, 0-d and empty "
        "tensors, metadata; inputs unchanged", 1.5, [call_seeing_args(t, m) for t, m in WRITE_SETS], _judge_roundtrip)
ex.test("data aligned: header padded to 8 bytes with spaces, largest items first so every tensor is aligned", 1,
        [call(ALIGN_SET)], _judge_alignment)
ex.test("transposed, strided and 0-d arrays", 1, [call_seeing_args(ODD, {"k": "v"})], _judge_odd)
ex.test("an unsupported dtype raises ValueError", 0.5,
        [call({"w": np.ones(2, np.float32)}), call({"w": np.ones(2, np.complex64)}),
         call({"w": np.array(["2020-01-01"], dtype="datetime64[D]")})], _judge_refuses)
EXERCISES.append(ex)


# --- the reader -----------------------------------------------------------------------------------
def _library_bytes(tensors, metadata=None):
    fd, path = tempfile.mkstemp(suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, path, metadata)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


LIB_FILES = [(_tensors(81), {"model": "tiny", "step": "12"}), (_tensors(82, 9), None)]
LIB_BYTES = [_library_bytes(t, m) for t, m in LIB_FILES]
PKG_TENSORS = {k: v for k, v in _tensors(83, 8).items() if v.dtype != BF16}
PKG_TENSORS["bf"] = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3).astype(BF16)
PKG_BYTES = (_library_bytes(PKG_TENSORS, {"source": "safetensors"}) if safetensors is None      # (`make lab`)
             else safetensors.numpy.save(PKG_TENSORS, metadata={"source": "safetensors"}))


def _corrupt():
    good = _library_bytes({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.int16)})
    (n,) = struct.unpack_from("<Q", good)
    head = json.loads(good[8:8 + n])
    body = good[8 + n:]

    def with_header(h):
        raw = json.dumps(h).encode()
        raw += b" " * (-(8 + len(raw)) % 8)
        return struct.pack("<Q", len(raw)) + raw + body

    return [
        (good[:5], "5 bytes"),
        (struct.pack("<Q", len(good)) + good[8:], "a header length past the end"),
        (good[:8] + b"{{" + good[10:], "a header that is not JSON"),
        (with_header([1, 2]), "a header that is a JSON list"),
        (with_header({**head, "w": {**head["w"], "dtype": "F12"}}), "an unknown dtype"),
        (with_header({**head, "w": {**head["w"], "shape": [3, 3]}}), "data_offsets that do not span the shape"),
        (with_header({**head, "b": {**head["b"], "data_offsets": [24, 28 + 64]}}), "data_offsets past the end"),
    ], good


CORRUPT, GOOD = _corrupt()


def _judge_read(files, tensors_list, metas, label):
    def judge(rs):
        for r, tensors, meta in zip(rs, tensors_list, metas):
            what = f"load_safetensors on {label}"
            got = value(r, what)
            if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], dict)):
                raise Fail(f"{what} returned {type(got).__name__}, expected a tuple (tensors dict, metadata dict)")
            t, m = got
            if set(t) != set(tensors):
                raise Fail(f"{what}: tensors {sorted(t)}, expected {sorted(tensors)}" +
                           (": __metadata__ is not a tensor" if "__metadata__" in t else ""))
            for name, want in tensors.items():
                x = array(t[name], f"{what}: tensor {name!r}")
                if want.dtype == BF16:
                    if x.dtype != np.dtype("V2"):
                        raise Fail(f"{what}: tensor {name!r} is BF16 but came back as {x.dtype}: make it an "
                                   "ml_dtypes.bfloat16 array (DTYPES['BF16'])")
                elif x.dtype != want.dtype:
                    raise Fail(f"{what}: tensor {name!r} has dtype {x.dtype}, expected {want.dtype}")
                if tuple(x.shape) != want.shape:
                    raise Fail(f"{what}: tensor {name!r} has shape {x.shape}, expected {want.shape}")
                if _bits(x) != _bits(want):
                    raise Fail(f"{what}: tensor {name!r} holds other values than the file's: data_offsets count "
                               "from the start of the data section, byte 8 + N")
            if m != (meta or {}):
                raise Fail(f"{what}: the metadata is {m!r}, expected {meta or {}}")
    return judge


def _judge_corrupt(rs):
    _judge_read([GOOD], [load_safe_ref(GOOD)], [None], "a valid file")(rs[:1])
    for r, (_, label) in zip(rs[1:], CORRUPT):
        if isinstance(r, CallError):
            if r.type == "ValueError" and r.message.strip():
                continue
            if r.type == "ValueError":
                raise Fail(f"load_safetensors on {label} raised ValueError without a message: say what is wrong")
            raise Fail(f"load_safetensors on {label} raised {r.type}, expected ValueError: check the header before "
                       "using it, and turn what goes wrong into a ValueError that says what is wrong")
        raise Fail(f"load_safetensors on {label} returned instead of raising ValueError: check the header length, "
                   "the JSON, each dtype, and that data_offsets span prod(shape) * itemsize bytes inside the data")


def load_safe_ref(data):
    path = _file(data)
    try:
        f = SafetensorsFile(path)
        return {n: f.get(n, copy=True) for n in f.keys()}
    finally:
        os.unlink(path)


ex = Exercise("load_safetensors", "Read a safetensors file")
ex.test("files written by the library: every dtype, bfloat16, 0-d and empty tensors, metadata", 1.5,
        [call(b) for b in LIB_BYTES], _judge_read(LIB_BYTES, [t for t, _ in LIB_FILES], [m for _, m in LIB_FILES],
                                                 "a file written by the library"))
ex.test("a file written by the safetensors package", 1, [call(PKG_BYTES)],
        _judge_read([PKG_BYTES], [PKG_TENSORS], [{"source": "safetensors"}], "a file written by the safetensors package"))
ex.test("truncated and corrupt headers raise ValueError with a message", 1.5,
        [call(GOOD)] + [call(d) for d, _ in CORRUPT], _judge_corrupt)
EXERCISES.append(ex)


# --- atomic save ----------------------------------------------------------------------------------
SAVE_A = {"w": np.arange(8, dtype=np.float32), "step": np.array(1, np.int64)}
SAVE_B = {"w": np.arange(8, dtype=np.float32) * 2, "step": np.array(2, np.int64)}
SAVE_BAD = {"w": np.zeros(8, np.float32), "z": np.ones(2, np.complex64)}


def _judge_save(rs):
    for r, what in zip(rs[:2], ("a first save", "a save over the file")):
        got = value(r, f"save_safetensors ({what})")
        if got is not None and not isinstance(got, (str, int)):
            raise Fail(f"save_safetensors ({what}) returned {type(got).__name__}; it writes a file and returns None")
    r = rs[2]
    if not (isinstance(r, CallError) and r.type == "ValueError"):
        raise Fail("save_safetensors with a complex64 tensor must raise ValueError (from safetensors_bytes), "
                   + (f"it raised {r.type}" if isinstance(r, CallError) else "it returned"))


ex = Exercise("save_safetensors", "Save a safetensors file atomically")
ex.test("saves, saves over the file, and a failing save raises ValueError", 1,
        [call(SAVE_A, "ckpt.safetensors", {"step": "1"}), call(SAVE_B, "ckpt.safetensors", {"step": "2"}),
         call(SAVE_BAD, "ckpt.safetensors")], _judge_save)
EXERCISES.append(ex)


def _run_atomic(learner):
    """A save to a fresh file must read back; then the file of the test above (SAVE_A, SAVE_B over it, then a save
    of SAVE_BAD that failed, all to ckpt.safetensors in the sandbox's folder) must still hold SAVE_B, intact."""
    fresh = f"fresh-{secrets.token_hex(6)}.safetensors"
    learner.save_safetensors(SAVE_A, fresh, {"step": "1"})
    got, meta = learner.load_safetensors(fresh)
    if not isinstance(got, dict) or meta != {"step": "1"} or not all(
            _same_tensor(got.get(k, np.zeros(0)), v) for k, v in SAVE_A.items()):
        raise Fail("a file saved by your save_safetensors does not read back with your load_safetensors")
    got, meta = learner.load_safetensors("ckpt.safetensors")
    if not isinstance(got, dict) or meta != {"step": "2"} or not all(
            _same_tensor(got.get(k, np.zeros(0)), v) for k, v in SAVE_B.items()):
        raise Fail("after a save, a save over it and a save that failed, the file does not hold the second save's "
                   "tensors and metadata: write a temporary file and os.replace it onto the target only when it is "
                   "complete")


EXERCISES[2].end_to_end("a failed save leaves the old file as it was (your load_safetensors reads it back)", 1, _run_atomic)
