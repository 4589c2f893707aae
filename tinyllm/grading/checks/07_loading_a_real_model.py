"""Graded checks for exercises/07_loading_a_real_model.ipynb.

References are the library's own: GGUF metadata as :class:`tinyllm.io.gguf.GGUFReader` reads it (the hidden
files are written here byte by byte from fixed seeds, then read back by the library from a temporary file), and
Q8_0 / Q4_1 blocks as :mod:`tinyllm.io.ggml` decodes them (bit-exact with ggml and the ``gguf``
package), on random blocks and on the real tensors of SmolLM2. A message names a mistake only when the learner's
result equals what that mistake computes on the same input.
"""
from __future__ import annotations

import os
import struct
import tempfile

import numpy as np

from tinyllm import plug
from tinyllm.grading.core import (CallError, Exercise, Fail, array, call, call_seeing_args, diagnose_cases,
                                  unchanged, value, with_args)
from tinyllm.io import ggml
from tinyllm.io.gguf import GGUFReader, GGUFValueType as VT
from tinyllm.models.smollm2 import open_gguf

rng = np.random.default_rng(7007)
EXERCISES: list[Exercise] = []
READER = open_gguf()

# --- GGUF metadata ---------------------------------------------------------------------------------
_FMT = {VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I", VT.INT32: "<i",
        VT.FLOAT32: "<f", VT.BOOL: "<?", VT.UINT64: "<Q", VT.INT64: "<q", VT.FLOAT64: "<d"}


def _string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _value(vtype, v) -> bytes:
    if vtype == VT.STRING:
        return _string(v)
    if isinstance(vtype, tuple):                                     # (ARRAY, element type)
        etype = vtype[1]
        head = struct.pack("<IQ", etype[0] if isinstance(etype, tuple) else etype, len(v))
        return head + b"".join(_value(etype, x) for x in v)
    return struct.pack(_FMT[vtype], v)


def _gguf(pairs, version=3, n_tensors=0) -> bytes:
    """The bytes of a GGUF header: magic, version, counts and ``pairs`` [(key, vtype, value)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(pairs))
    for key, vtype, v in pairs:
        out += _string(key) + struct.pack("<I", vtype[0] if isinstance(vtype, tuple) else vtype) + _value(vtype, v)
    return out


def _library_read(data: bytes):
    """(metadata, types, offset after the metadata) as the library reads the file."""
    fd, path = tempfile.mkstemp(suffix=".gguf")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        r = GGUFReader(path)
        return dict(r.metadata), dict(r.metadata_types), r.header_size
    finally:
        os.unlink(path)


def _scalars_file(seed, version):
    g = np.random.default_rng(seed)
    f32 = float(np.float32(g.standard_normal() * 1e3 + 0.1))
    pairs = [("general.architecture", VT.STRING, "llama"),
             ("x.u8", VT.UINT8, int(g.integers(128, 256))), ("x.i8", VT.INT8, int(g.integers(-128, -1))),
             ("x.u16", VT.UINT16, int(g.integers(40_000, 65_536))), ("x.i16", VT.INT16, int(g.integers(-32_768, -300))),
             ("x.u32", VT.UINT32, int(g.integers(3_000_000_000, 4_294_967_296))),
             ("x.i32", VT.INT32, int(g.integers(-2**31, -70_000))), ("x.f32", VT.FLOAT32, f32),
             ("x.flag", VT.BOOL, True), ("x.off", VT.BOOL, False),
             ("x.u64", VT.UINT64, int(g.integers(2**40, 2**61))), ("x.i64", VT.INT64, -int(g.integers(2**40, 2**61))),
             ("x.f64", VT.FLOAT64, float(g.standard_normal() / 3)),
             (f"名前.{seed}", VT.STRING, "Grüße 🙂 " + "ab" * int(g.integers(1, 30))), ("x.empty", VT.STRING, "")]
    order = g.permutation(len(pairs))
    return _gguf([pairs[i] for i in order], version=version)


def _arrays_file(seed):
    g = np.random.default_rng(seed)
    pairs = [("a.i32", (VT.ARRAY, VT.INT32), [int(v) for v in g.integers(-2**31, 2**31, 7)]),
             ("a.f32", (VT.ARRAY, VT.FLOAT32), [float(np.float32(v)) for v in g.standard_normal(5)]),
             ("a.u8", (VT.ARRAY, VT.UINT8), [int(v) for v in g.integers(0, 256, 9)]),
             ("a.bool", (VT.ARRAY, VT.BOOL), [bool(v) for v in g.integers(0, 2, 6)]),
             ("a.u64", (VT.ARRAY, VT.UINT64), [int(v) for v in g.integers(2**33, 2**60, 3)]),
             ("a.empty", (VT.ARRAY, VT.INT16), []),
             ("tokenizer.ggml.tokens", (VT.ARRAY, VT.STRING), ["<|im_start|>", "Ġthe", "é", "", "日本"]),
             ("a.nested", (VT.ARRAY, (VT.ARRAY, VT.STRING)), [["a", "bc"], [], ["😀"]]),
             ("a.after", VT.UINT32, int(g.integers(1, 1000)))]
    return _gguf(pairs, version=2)


SMOL_META_END = READER.header_size - sum(
    8 + len(n.encode()) + 4 + 8 * len(t.shape) + 4 + 8 for n, t in READER.tensors.items())   # tensor infos' start
META_FILES = [_scalars_file(71, 3), _scalars_file(72, 2)]
ARRAY_FILES = [_arrays_file(73), _arrays_file(74) + b"\x00" * 40]     # bytes after the metadata are not metadata
SMOL_HEAD = bytes(READER._mmap[:SMOL_META_END + 1000])
BAD_FILES = [(b"GGFU" + META_FILES[0][4:], "a wrong magic"),
             (META_FILES[0][:4] + struct.pack("<I", 1) + META_FILES[0][8:], "version 1"),
             (META_FILES[0][:4] + struct.pack("<I", 7) + META_FILES[0][8:], "version 7"),
             (ARRAY_FILES[0][:len(ARRAY_FILES[0]) - 60], "bytes that end inside the metadata")]


def _same(got, want) -> bool:
    """Equal values of equal Python kinds (True is not 1, 1.0 is not 1), recursively."""
    if isinstance(want, bool) or isinstance(got, bool):
        return type(got) is type(want) and got == want
    if isinstance(want, list):
        return isinstance(got, (list, tuple)) and len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want))
    if isinstance(want, float):
        return isinstance(got, float) and (got == want or (got != got and want != want))
    if isinstance(want, int):
        return isinstance(got, int) and got == want
    return type(got) is type(want) and got == want


def _judge_metadata(data_list, label, reference=_library_read):
    def judge(rs):
        for data, r in zip(data_list, rs):
            what = f"read_gguf_metadata on {label}"
            got = value(r, what)
            if not (isinstance(got, tuple) and len(got) == 2):
                raise Fail(f"{what} returned {type(got).__name__}, expected a tuple (metadata dict, offset)")
            meta, offset = got
            want, types, want_offset = reference(data)
            if not isinstance(meta, dict):
                raise Fail(f"{what}: the metadata is a {type(meta).__name__}, expected a dict")
            missing = [k for k in want if k not in meta]
            extra = [k for k in meta if k not in want]
            if missing or extra:
                raise Fail(f"{what}: keys {missing[:3]} are missing" if missing else f"{what}: unexpected keys {extra[:3]}")
            for key in want:
                g, w, t = meta[key], want[key], types[key].name
                if _same(g, w):
                    continue
                if t == "BOOL" and g in (0, 1) and not isinstance(g, bool):
                    raise Fail(f"{what}: key {key!r} (BOOL) is {g!r}, expected {w!r}: a GGUF bool is one byte, "
                               "return a Python bool (struct format '<?')")
                if isinstance(w, list) and isinstance(g, (list, tuple)) and len(g) != len(w):
                    raise Fail(f"{what}: key {key!r} (ARRAY) has {len(g)} elements, expected {len(w)}")
                if t == "FLOAT32" and isinstance(g, float) and abs(g - w) <= 1e-6 * abs(w):
                    raise Fail(f"{what}: key {key!r} (FLOAT32) is {g!r}, expected {w!r}: return the float32 value "
                               "exactly as stored (struct '<f' gives it), not rounded")
                raise Fail(f"{what}: key {key!r} ({t}) is {str(g)[:80]}, expected {str(w)[:80]}")
            if isinstance(offset, bool) or not isinstance(offset, int):
                raise Fail(f"{what}: the offset is {type(offset).__name__}, expected an int")
            if offset != want_offset:
                raise Fail(f"{what}: the offset is {offset}, expected {want_offset}: return the position just after "
                           "the last key/value pair")
    return judge


def _judge_errors(rs):
    try:
        _judge_metadata(META_FILES[:1], "a valid file")(rs[:1])
    except Fail as e:
        raise Fail(f"{e} (raising ValueError counts only when valid files are read)") from None
    for (data, label), r in zip(BAD_FILES, rs[1:]):
        if isinstance(r, CallError):
            if r.type == "ValueError":
                continue
            if r.type in ("NotImplementedError", "Missing", "TimeLimit"):
                raise Fail(r.describe("read_gguf_metadata"))
            raise Fail(f"read_gguf_metadata on {label} raised {r.type}, expected ValueError: turn the failure into "
                       "a ValueError that says what is wrong")
        raise Fail(f"read_gguf_metadata on {label} returned instead of raising ValueError: check the magic b'GGUF', "
                   "the version (2 or 3) and that every read stays inside the data")


ex = Exercise("read_gguf_metadata", "Parse the metadata of a GGUF file")
ex.test("every scalar type and strings, versions 3 and 2, the offset after the metadata", 1.5,
        [call(d) for d in META_FILES], _judge_metadata(META_FILES, "a file of every scalar type"))
ex.test("arrays of numbers, bools and strings, empty and nested arrays", 1,
        [call(d) for d in ARRAY_FILES], _judge_metadata(ARRAY_FILES, "a file of arrays"))
ex.test("SmolLM2's metadata (its tokenizer included) equals the library reader's", 1,
        [call(SMOL_HEAD)], _judge_metadata([SMOL_HEAD], "the first bytes of SmolLM2's file",
                                           lambda data: (READER.metadata, READER.metadata_types, SMOL_META_END)))
ex.test("a wrong magic, an unsupported version and truncated bytes raise ValueError", 0.5,
        [call(META_FILES[0])] + [call(d) for d, _ in BAD_FILES], _judge_errors)
EXERCISES.append(ex)


# --- Q8_0 and Q4_1 --------------------------------------------------------------------------------
def _random_blocks(qtype, nb, seed):
    """``nb`` random blocks: scales of every size and sign (subnormal, zero, large), every code."""
    g = np.random.default_rng(seed)
    size = ggml.BLOCK_SIZES[ggml.to_ggml_type(qtype)][1]
    raw = g.integers(0, 256, (nb, size), dtype=np.uint8)
    scales = (g.standard_normal((nb, 2)) * 10.0 ** g.integers(-7, 3, (nb, 2))).astype(np.float16)
    scales[0, 0] = np.float16(0)
    scales[-1] = np.float16(6e-6)                                   # subnormal float16
    raw[:, :4 if qtype == "Q4_1" else 2] = scales.view(np.uint8)[:, :4 if qtype == "Q4_1" else 2]
    return raw.reshape(-1)


def _real(name, rows, seed):
    """Raw bytes of ``rows`` random rows of a SmolLM2 tensor (every row is whole blocks)."""
    t = READER.tensors[name]
    raw = READER.raw(name).reshape(t.shape[0], -1)
    pick = np.sort(np.random.default_rng(seed).choice(t.shape[0], rows, replace=False))
    return np.ascontiguousarray(raw[pick]).reshape(-1)


def _halves(b):
    return b[:, :2].copy().view(np.float16).astype(np.float32), b[:, 2:4].copy().view(np.float16).astype(np.float32)


def _q8_mistakes(raw):
    b = raw.reshape(-1, 34)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    dbe = b[:, :2].copy().view(">f2").astype(np.float32)
    q = b[:, 2:].view(np.int8).astype(np.float32)
    with np.errstate(all="ignore"):
        return [
            ("the codes are read as unsigned bytes: Q8_0 codes are int8 (view the 32 bytes as np.int8)",
             (d * b[:, 2:].astype(np.float32)).reshape(-1)),
            ("the scale is read big-endian: GGUF is little-endian, view the 2 bytes as np.float16 ('<f2')",
             (dbe * q).reshape(-1)),
            ("the scale is missing: multiply every code by its block's float16 scale d", q.reshape(-1)),
            ("each block has 32 codes after a 2-byte scale: the block is 34 bytes, scale first",
             (b[:, 32:].copy().view(np.float16).astype(np.float32) * b[:, :32].view(np.int8)).reshape(-1)),
            ("the scale is divided, not multiplied: w = d * q", (q / d).reshape(-1)),
        ]


def _q41_mistakes(raw):
    b = raw.reshape(-1, 20)
    d, m = _halves(b)
    qs = b[:, 4:]
    lo, hi = (qs & 0x0F).astype(np.float32), (qs >> 4).astype(np.float32)
    q = np.concatenate([lo, hi], axis=1)
    with np.errstate(all="ignore"):
        return [
            ("the nibbles are interleaved: the low nibbles of the 16 bytes are codes 0-15, the high nibbles codes 16-31",
             (d * np.stack([lo, hi], axis=-1).reshape(-1, 32) + m).reshape(-1)),
            ("the high nibbles come first: the low nibble of byte i is code i, the high nibble code i + 16",
             (d * np.concatenate([hi, lo], axis=1) + m).reshape(-1)),
            ("the minimum m is missing: Q4_1 weights are d * q + m", (d * q).reshape(-1)),
            ("d and m are swapped: the scale d is bytes 0-1, the minimum m bytes 2-3", (m * q + d).reshape(-1)),
            ("the codes are centred by 8 as in Q4_0: Q4_1 codes are unsigned, w = d * q + m",
             (d * (q - 8) + m).reshape(-1)),
            ("m is subtracted: w = d * q + m", (d * q - m).reshape(-1)),
        ]


def _judge_dequant(qtype, fn, inputs, mistakes, label):
    def judge(rs):
        gots, wants, wrongs = [], [], None
        for raw, r in zip(inputs, rs):
            what = f"{fn} on {label} ({raw.size} bytes)"
            got, after = with_args(r)
            want = ggml.dequantize(raw, qtype, (raw.size // ggml.BLOCK_SIZES[ggml.to_ggml_type(qtype)][1] * 32,))
            x = array(got, what)
            if x.size == want.size and x.shape != want.shape:
                raise Fail(f"{what} has shape {x.shape}, expected {want.shape}: flatten it back (reshape(-1))")
            x = array(got, what, shape=want.shape, dtype=np.float32)
            gots.append(x)
            wants.append(want)
            if np.array_equal(x, want, equal_nan=True) and after is not None:
                unchanged(after[0], raw, "raw", "read the bytes through views and copies; never write into raw")
        if all(np.array_equal(g, w, equal_nan=True) for g, w in zip(gots, wants)):
            return
        variants = [(msg, [mistakes(raw)[k][1] for raw in inputs]) for k, (msg, _) in enumerate(mistakes(inputs[0]))]
        k = next(i for i, (g, w) in enumerate(zip(gots, wants)) if not np.array_equal(g, w, equal_nan=True))
        diagnose_cases(gots, wants, variants, what=f"{fn} on {label}", rtol=0, atol=0)
        bad = np.flatnonzero(~((gots[k] == wants[k]) | (np.isnan(gots[k]) & np.isnan(wants[k]))))
        i = int(bad[0])
        raise Fail(f"{fn} on {label}: {bad.size} of {wants[k].size} weights differ, the first at index {i} (block "
                   f"{i // 32}, weight {i % 32}): got {gots[k][i]!r}, expected {wants[k][i]!r}; results must be "
                   "bit for bit the library's")
    return judge


def _dequant_exercise(qtype, fn, title, tensor, mistakes):
    ex = Exercise(fn, title)
    rand = [_random_blocks(qtype, nb, 100 + nb) for nb in (1, 5, 67)]
    ex.test(f"random {qtype} blocks (every code, scales of every size and sign), bit for bit; raw unchanged", 1.5,
            [call_seeing_args(r) for r in rand], _judge_dequant(qtype, fn, rand, mistakes, f"random {qtype} blocks"))
    real = [_real(tensor, 24, 5), _real(tensor, 3, 6)]
    ex.test(f"rows of SmolLM2's {tensor} bit for bit as the library decodes them", 1.5,
            [call(r) for r in real], _judge_dequant(qtype, fn, real, mistakes, f"rows of SmolLM2's {tensor}"))
    EXERCISES.append(ex)


_dequant_exercise("Q8_0", "dequantize_row_q8_0", "Dequantise GGML Q8_0 blocks", "token_embd.weight", _q8_mistakes)
_dequant_exercise("Q4_1", "dequantize_row_q4_1", "Dequantise GGML Q4_1 blocks", "blk.11.ffn_down.weight", _q41_mistakes)


# --- end to end: SmolLM2 loaded through the learner's dequantisers ------------------------------------
E2E_VOCAB = 8192                                                     # the embedding's first rows: a smaller transfer


def _get_tensor(name):
    """A SmolLM2 tensor decoded by the library (through the plug points): the embedding cut to E2E_VOCAB rows."""
    if name != "token_embd.weight":
        return READER.dequantize(name)
    t = READER.tensors[name]
    raw = READER.raw(name).reshape(t.shape[0], -1)[:E2E_VOCAB]
    return ggml.dequantize(raw, t.ggml_type, (E2E_VOCAB, t.shape[1]))


def _smol(n_layers=2):
    """SmolLM2 with its first ``n_layers`` blocks, its final norm and the first E2E_VOCAB rows of its tied
    embedding, built by the library's loader."""
    from tinyllm.models.gguf_map import llama_from_gguf

    meta = {**READER.metadata, "llama.block_count": n_layers, "llama.vocab_size": E2E_VOCAB}
    return llama_from_gguf(meta, _get_tensor, threads=1)


E2E_IDS = np.array([[504, 3575, 282, 4649, 314]])                    # "The capital of France is"
E2E_REF = _smol().forward(E2E_IDS)


def _run_smollm2(learner):
    with plug.use(dequantize_row_q8_0=learner.dequantize_row_q8_0, dequantize_row_q4_1=learner.dequantize_row_q4_1):
        try:
            model = _smol()
        except Exception as e:                                       # the library's check of the returned arrays
            raise Fail(f"the library could not load SmolLM2 through your dequantisers: {e}") from None
    logits = model.forward(E2E_IDS)
    if not np.array_equal(logits, E2E_REF):
        err = float(np.nanmax(np.abs(logits - E2E_REF)))
        raise Fail(f"SmolLM2 (2 blocks) loaded through your dequantisers gives other logits than the library's "
                   f"(off by up to {err:.3g}): the weights must be bit for bit the library's")


EXERCISES[2].end_to_end("SmolLM2 (2 blocks, 8192 rows of its embedding) loaded through your dequantisers gives "
                        "the library's logits exactly", 1, _run_smollm2, budget=60)
