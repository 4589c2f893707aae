"""Fuzz the file readers with mutated files and count what happens.

    python scripts/fuzz_readers.py --n 10000            # every format, 10,000 mutated files each
    python scripts/fuzz_readers.py --n 500 --formats gguf,checkpoint --seed 3

Each format starts from a file made by the project's own writer (the GGUF by the ``gguf``
package's writer, as the project has none) and applies 1-3 random mutations: bit flips, random
bytes, byte insertions and deletions, truncation, edits of the JSON inside (wrong types, deep
nesting, huge numbers, deleted or duplicated keys) and, for GGUF, extreme values in the integer
fields (counts, lengths, types, dimensions, offsets). Every mutated file ends in one outcome:

* ``loaded``    it loaded, and what was loaded equals what a reference reads: the ``safetensors``
  package (safetensors, checkpoint), the ``gguf`` package (GGUF), the original tensors (a
  shard index: only the index is mutated), or the file's JSON read plainly (tokenizers);
* ``rejected``  the reader raised the project's own error (``TinyLLMError``), and nothing was
  changed (a checkpoint's model and optimiser are compared with a snapshot);
* ``stricter``  safetensors only: we reject a file that the ``safetensors`` package reads (the
  reasons are counted: e.g. an entry with extra keys, or a dtype we do not support);
* ``FAIL ...``  anything else: another exception, a partial load, a silent misread.

The script prints the counts per format and exits with status 1 if any FAIL occurred.
``tests/test_fuzz_readers.py`` drives the same mutations and checks from hypothesis.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from tinyllm.errors import TinyLLMError

Choose = Callable[[int], int]  # choose(n) -> an int in [0, n)

INTERESTING = [0, 1, 2, 3, 7, 8, 9, 31, 32, 255, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 40,
               1 << 48, 1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
_HUGE, _DEEP, _DUP = "\x00HUGE\x00", "\x00DEEP\x00", "\x00DUP\x00"
WEIRD = [None, True, False, 0, -1, 1, 1.5, -0.0, 2**63, 2**64, 1e308, "", "x", "F32", "\u00e9", [], {}, [1, [2]],
         {"a": None}, [0, 0], _HUGE, _DEEP, -(2**63)]
PROBE = "Hello world, it's 2024!  Numbers 12345 and\ttabs\n\nnew lines: caf\u00e9 \u65e5\u672c <|endoftext|> end"


# ---- mutations ----------------------------------------------------------------------

def mutate_bytes(raw: bytes, choose: Choose, regions: list[tuple[int, int]]) -> bytes:
    """One bit flip, random byte, insertion, deletion or truncation, at a position in one of ``regions``."""
    out = bytearray(raw)
    if not out:
        return bytes([choose(256)])
    lo, hi = regions[choose(len(regions))]
    lo, hi = max(0, min(lo, len(out) - 1)), max(1, min(hi, len(out)))
    pos = lo + choose(max(1, hi - lo))
    kind = choose(5)
    if kind == 0:
        out[pos] ^= 1 << choose(8) if choose(2) else 1 << choose(7)  # (low bits: ASCII text stays ASCII)
    elif kind == 1:
        out[pos] = choose(256)
    elif kind == 2:
        out[pos:pos] = bytes(choose(256) for _ in range(1 + choose(8)))
    elif kind == 3:
        del out[pos:pos + 1 + choose(8)]
    else:
        del out[pos:]
    return bytes(out)


def _nodes(obj, path=()):
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _nodes(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _nodes(v, path + (i,))


def mutate_json_file(raw: bytes, choose: Choose) -> bytes:
    """One to three edits of a JSON file: mostly structural (:func:`mutate_json`), else raw bytes."""
    for _ in range(1 + choose(3)):
        if choose(3):
            try:
                raw = mutate_json(json.loads(raw), choose)
                continue
            except (ValueError, RecursionError):
                pass
        raw = mutate_bytes(raw, choose, [(0, len(raw))])
    return raw


def mutate_json(obj, choose: Choose) -> bytes:
    """One structural edit of a JSON value: a node replaced by a wrong type, deleted, tweaked, or a
    key added or duplicated; huge numbers and deep nesting are spliced in as text."""
    obj = copy.deepcopy(obj)
    paths = list(_nodes(obj))
    path = paths[choose(len(paths))]
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    node = parent[path[-1]] if path else obj
    op = choose(5)
    dup = None
    if op == 0 or not path and op != 2:
        new = WEIRD[choose(len(WEIRD))]
        if path:
            parent[path[-1]] = new
        else:
            obj = new
    elif op == 1:
        del parent[path[-1]]
    elif op == 2:
        if isinstance(node, dict):
            if node and choose(2):
                dup = next(iter(node))
                node[_DUP] = WEIRD[choose(len(WEIRD))] if choose(2) else copy.deepcopy(node[dup])
            else:
                node["extra"] = WEIRD[choose(len(WEIRD))]
        elif isinstance(node, list):
            node.insert(choose(len(node) + 1), WEIRD[choose(len(WEIRD))] if choose(2) or not node else node[0])
        elif path:
            parent[path[-1]] = [node]
    else:  # tweak a leaf
        if isinstance(node, bool) or node is None:
            new = not node
        elif isinstance(node, int):
            new = [node + 1, node - 1, -node, node * 2, node + (1 << 32), node + (1 << 63), float(node)][choose(7)]
        elif isinstance(node, float):
            new = [node * 2, -node, math.inf, math.nan, int(node) if math.isfinite(node) else 0][choose(5)]
        elif isinstance(node, str):
            new = [node + "x", node[:-1], node * 2, node.upper(), node[::-1], "\ud800"][choose(6)]
        else:
            new = WEIRD[choose(len(WEIRD))]
        parent[path[-1]] = new
    text = json.dumps(obj, ensure_ascii=bool(choose(2)))
    text = text.replace(json.dumps(_HUGE), "1" + "0" * 5000).replace(json.dumps(_DEEP), "[" * 50_000 + "]" * 50_000)
    if dup is not None:
        text = text.replace(json.dumps(_DUP), json.dumps(dup), 1)
    return text.encode("utf-8", errors="surrogatepass")


def _same(a, b) -> bool:
    """Equality of plain values, with NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _bytes_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and \
        np.ascontiguousarray(a).view(np.uint8).tobytes() == np.ascontiguousarray(b).view(np.uint8).tobytes()


def _fail(kind: str, detail: object) -> str:
    return f"FAIL {kind}: {str(detail)[:300]}"


def _foreign(e: BaseException) -> str:
    return _fail(type(e).__name__, e)


# ---- formats --------------------------------------------------------------------------

def _st_frame(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(len(raw) + 8) % 8)
    return len(raw).to_bytes(8, "little") + raw + data


def _st_split(raw: bytes) -> tuple[int, dict, bytes]:
    n = int.from_bytes(raw[:8], "little")
    return n, json.loads(raw[8:8 + n]), raw[8 + n:]


class Safetensors:
    """safetensors files: every dtype, metadata; the reference is the ``safetensors`` package."""

    name = "safetensors"

    def __init__(self, work: Path):
        import ml_dtypes

        from tinyllm.io import safetensors as st

        self.st, self.path = st, work / "fuzz.safetensors"
        rng = np.random.default_rng(0)
        tensors = {
            "f64": rng.standard_normal(3), "f32": rng.standard_normal((2, 3)).astype(np.float32),
            "f16": rng.standard_normal(3).astype(np.float16), "bf16": rng.standard_normal(2).astype(ml_dtypes.bfloat16),
            "i64": np.array([-5, 2**40]), "i32": np.array([7], np.int32), "i16": np.array([-3, 4], np.int16),
            "u8": np.arange(5, dtype=np.uint8), "i8": np.array([-128, 127], np.int8), "bool": np.array([True, False]),
            "scalar": np.array(2.5, np.float32), "empty": np.zeros((0, 3), np.float32),
        }
        base = work / "base.safetensors"
        st.save_file(tensors, base, metadata={"format": "np", "note": "fuzz"})
        self.base = base.read_bytes()

    def mutate(self, choose: Choose) -> bytes:
        raw = self.base
        for _ in range(1 + choose(3)):
            if choose(3) == 0 and len(raw) >= 8:
                try:
                    n, header, data = _st_split(raw)
                    text = mutate_json(header, choose)
                    text += b" " * (-(len(text) + 8) % 8)
                    raw = (len(text) if choose(4) else n).to_bytes(8, "little") + text + data
                    continue
                except (ValueError, RecursionError):
                    pass
            n = int.from_bytes(raw[:8], "little") if len(raw) >= 8 else 0
            raw = mutate_bytes(raw, choose, [(0, 8), (8, 8 + n), (8 + n, len(raw)), (0, len(raw))])
        return raw

    @staticmethod
    def reference(path: Path):
        """``(tensors, metadata)`` as the ``safetensors`` package reads them, or None if it refuses."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})
        except Exception:
            return None

    def check(self, data: bytes) -> str:
        self.path.write_bytes(data)
        try:
            f = self.st.SafetensorsFile(self.path)
            ours = ({k: f.get(k, copy=True) for k in f.keys()}, f.metadata)
        except TinyLLMError as e:
            ours = e
        except Exception as e:
            return _foreign(e)
        theirs = self.reference(self.path)
        if isinstance(ours, TinyLLMError):
            if theirs is None:
                return "rejected"
            return "stricter: " + _stricter_reason(str(ours))
        if theirs is None:
            return _fail("misread", "loaded a file the safetensors package refuses")
        if ours[0].keys() != theirs[0].keys() or ours[1] != theirs[1]:
            return _fail("misread", "other tensor names or metadata than the safetensors package")
        bad = [k for k in ours[0] if not _bytes_equal(ours[0][k], theirs[0][k])]
        return _fail("misread", f"tensor {bad[0]!r} differs from the safetensors package") if bad else "loaded"


def _stricter_reason(message: str) -> str:
    for pattern, reason in [("unknown dtype", "dtype we do not support"), ("exactly dtype, shape", "entry with extra keys"),
                            ("duplicate key", "duplicate JSON key"), ("surrogate", "lone surrogate"),
                            ("nested", "deep nesting"), ("digits", "huge integer"), ("absurd", "absurd shape")]:
        if pattern in message:
            return reason
    return "other: " + message[-120:]


class ShardIndex:
    """The index of a sharded save (the shards stay intact); a load must give the original tensors."""

    name = "shard_index"

    def __init__(self, work: Path):
        from tinyllm.io import safetensors as st

        self.st, self.dir = st, work / "sharded"
        rng = np.random.default_rng(1)
        self.tensors = {f"layer{i}.w": rng.standard_normal((4, 4)).astype(np.float32) for i in range(5)}
        self.tensors["ids"] = np.arange(3)
        st.save_sharded(self.tensors, self.dir, max_shard_bytes=2 * 64, metadata={"note": "fuzz"})
        self.path = self.dir / st.INDEX_NAME
        self.base = self.path.read_bytes()
        self.index = json.loads(self.base)

    def mutate(self, choose: Choose) -> bytes:
        return mutate_json_file(self.base, choose)

    def check(self, data: bytes) -> str:
        self.path.write_bytes(data)
        try:
            got = self.st.load_sharded(self.dir, mmap=False)
        except TinyLLMError:
            return "rejected"
        except Exception as e:
            return _foreign(e)
        if got.keys() != self.tensors.keys():
            return _fail("partial load", f"tensors {sorted(got)}")
        bad = [k for k in got if not _bytes_equal(got[k], self.tensors[k])]
        return _fail("misread", f"tensor {bad[0]!r}") if bad else "loaded"


class Checkpoint:
    """Training checkpoints; a failed load must leave model and optimiser as they were, a
    successful one must put in exactly what the file holds (read by the ``safetensors`` package)."""

    name = "checkpoint"

    def __init__(self, work: Path):
        from tinyllm.io import checkpoint as ck

        self.ck, self.path = ck, work / "fuzz_ckpt.safetensors"
        model, opt = self._fresh(seed=0)
        rng = np.random.default_rng(0)
        for p in model.parameters():
            p.grad[...] = rng.standard_normal(p.data.shape).astype(p.data.dtype)
        opt.step()
        base = work / "base_ckpt.safetensors"
        ck.save_checkpoint(base, model, opt, step=3, extra={"rng": ck.rng_state(rng), "note": "fuzz"})
        self.base = base.read_bytes()

    @staticmethod
    def _fresh(seed: int):
        from tinyllm.nn import Linear, ReLU, Sequential
        from tinyllm.optim import AdamW

        rng = np.random.default_rng(seed)
        model = Sequential(Linear(3, 4, rng=rng), ReLU(), Linear(4, 2, rng=rng))
        return model, AdamW(model.parameters(), lr=1e-2)

    def mutate(self, choose: Choose) -> bytes:
        raw = self.base
        for _ in range(1 + choose(3)):
            kind = choose(4)
            if kind < 2 and len(raw) >= 8:
                try:
                    n, header, data = _st_split(raw)
                    if kind == 0 and isinstance(header, dict) and isinstance(header.get("__metadata__"), dict) and \
                            isinstance(header["__metadata__"].get("tinyllm"), str):
                        inner = json.loads(header["__metadata__"]["tinyllm"])
                        header["__metadata__"]["tinyllm"] = mutate_json(inner, choose).decode("utf-8", "surrogatepass")
                        raw = _st_frame(header, data)
                    else:
                        text = mutate_json(header, choose)
                        text += b" " * (-(len(text) + 8) % 8)
                        raw = len(text).to_bytes(8, "little") + text + data
                    continue
                except (ValueError, RecursionError, UnicodeEncodeError):
                    pass
            n = int.from_bytes(raw[:8], "little") if len(raw) >= 8 else 0
            raw = mutate_bytes(raw, choose, [(0, 8), (8, 8 + n), (8 + n, len(raw)), (0, len(raw))])
        return raw

    def check(self, data: bytes) -> str:
        self.path.write_bytes(data)
        model, opt = self._fresh(seed=1)
        before = ({k: v.copy() for k, v in model.state_dict().items()}, opt.state_dict())
        try:
            info = self.ck.load_checkpoint(self.path, model, opt)
        except TinyLLMError:
            after = (model.state_dict(), opt.state_dict())
            if not _state_equal(before, after):
                return _fail("partial load", "the model or optimiser changed before the error")
            return "rejected"
        except Exception as e:
            return _foreign(e)
        ref = Safetensors.reference(self.path)
        if ref is None:
            return _fail("misread", "loaded a file the safetensors package refuses")
        tensors, metadata = ref
        meta = json.loads(metadata["tinyllm"])
        for k, v in model.state_dict().items():
            if not _bytes_equal(v, tensors["model." + k].astype(v.dtype)):
                return _fail("misread", f"model tensor {k!r}")
        state = opt.state_dict()
        for k, v in state.items():
            want = tensors.get("optim." + k, meta["optimizer"]["scalars"].get(k))
            if hasattr(v, "dtype") and not _bytes_equal(v, want):
                return _fail("misread", f"optimiser state {k!r}")
            if not hasattr(v, "dtype") and not _same(v, float(want) if isinstance(v, float) else want):
                return _fail("misread", f"optimiser scalar {k!r}: {v!r} vs {want!r}")
        if info["step"] != meta["step"] or not _same(info["extra"], meta["extra"]):
            return _fail("misread", "step or extra")
        return "loaded"


def _state_equal(a, b) -> bool:
    (ma, oa), (mb, ob) = a, b
    return all(_bytes_equal(ma[k], mb[k]) for k in ma) and oa.keys() == ob.keys() and all(
        _bytes_equal(oa[k], ob[k]) if hasattr(oa[k], "dtype") else _same(oa[k], ob[k]) for k in oa)


class CharTokenizerFile:
    """Character tokenizer files; what loads must be what the file's JSON says."""

    name = "char_tokenizer"

    def __init__(self, work: Path):
        from tinyllm.tokenizers import CharTokenizer

        self.cls, self.path = CharTokenizer, work / "char.json"
        base = work / "base_char.json"
        CharTokenizer.from_text(PROBE, unk="?").save(base)
        self.base = base.read_bytes()

    def mutate(self, choose: Choose) -> bytes:
        return mutate_json_file(self.base, choose)

    def check(self, data: bytes) -> str:
        self.path.write_bytes(data)
        try:
            tok = self.cls.load(self.path)
        except TinyLLMError:
            return "rejected"
        except Exception as e:
            return _foreign(e)
        obj = json.loads(data)
        if tok.chars != list(obj["chars"]) or tok.unk != obj.get("unk"):
            return _fail("misread", "chars or unk differ from the file")
        if tok.unk is not None or set(PROBE) <= set(tok.chars):
            want = "".join(c if c in tok.stoi else tok.unk for c in PROBE)
            if tok.decode(tok.encode(PROBE)) != want:
                return _fail("misread", "decode(encode(text)) differs")
        return "loaded"


class BPETokenizerFile:
    """Byte-level BPE tokenizer files; what loads must be what the file's JSON says, and encode
    and decode must work (under a time limit in the script)."""

    name = "bpe_tokenizer"

    def __init__(self, work: Path):
        from tinyllm.tokenizers import BPETokenizer

        self.cls, self.path = BPETokenizer, work / "bpe.json"
        tok = BPETokenizer.train(PROBE * 3 + " the quick brown fox jumps over the lazy dog" * 5, 300,
                                 special_tokens=["<|endoftext|>"])
        tok.bos_token_id = tok.eos_token_id = tok.special_tokens["<|endoftext|>"]
        base = work / "base_bpe.json"
        tok.save(base)
        self.base = base.read_bytes()

    mutate = CharTokenizerFile.mutate

    def check(self, data: bytes) -> str:
        from tinyllm.tokenizers.bpe import PRE_TOKENIZERS, bytes_to_unicode

        self.path.write_bytes(data)
        try:
            tok = self.cls.load(self.path)
            text = tok.decode(tok.encode(PROBE))
        except TinyLLMError:
            return "rejected"
        except Exception as e:
            return _foreign(e)
        obj = json.loads(data)
        spell = bytes_to_unicode()
        pattern = obj["pattern"]
        pattern = PRE_TOKENIZERS.get(pattern, (pattern,)) if isinstance(pattern, str) else tuple(pattern)
        info = obj.get("info") or {}
        if ["".join(spell[b] for b in t) for t in tok.vocab] != obj["tokens"] or tok.pattern != pattern or \
                [[a, b, n] for (a, b), n in zip(tok.merges, tok.merge_ids)] != obj["merges"] or \
                tok.special_tokens != (obj.get("special_tokens") or {}) or \
                any(getattr(tok, k) != v for k, v in info.items() if k != "add_bos_token" or v is not None):
            return _fail("misread", "tokens, merges, specials, pattern or info differ from the file")
        if not tok.missing_bytes and text != PROBE:
            return _fail("misread", "decode(encode(text)) != text")
        return "loaded"


def _gguf_fields(raw: bytes) -> tuple[list[tuple[int, int]], int, int]:
    """Positions ``(offset, size)`` of the integer fields of a GGUF header (counts, lengths, types,
    dimensions, offsets), the end of the metadata and the end of the header."""
    fields, pos = [(4, 4), (8, 8), (16, 8)], 24
    n_tensors, n_kv = struct.unpack_from("<QQ", raw, 8)
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string():
        nonlocal pos
        fields.append((pos, 8))
        (n,) = struct.unpack_from("<Q", raw, pos)
        pos += 8 + n

    def value(t):
        nonlocal pos
        if t == 8:
            string()
        elif t == 9:
            fields.extend([(pos, 4), (pos + 4, 8)])
            et, count = struct.unpack_from("<IQ", raw, pos)
            pos += 12
            for _ in range(count):
                value(et)
        else:
            pos += sizes[t]

    for _ in range(n_kv):
        string()
        fields.append((pos, 4))
        (t,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        value(t)
    kv_end = pos
    for _ in range(n_tensors):
        string()
        fields.append((pos, 4))
        (nd,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        fields.extend((pos + 8 * i, 8) for i in range(nd))
        pos += 8 * nd
        fields.extend([(pos, 4), (pos + 4, 8)])
        pos += 12
    return fields, kv_end, pos


_GGUF_CODES = {"str": (8, None), "uint32": (4, "<I"), "int32": (5, "<i"), "uint64": (10, "<Q"), "float32": (6, "<f"),
               "bool": (7, "<?")}


def _gguf_value(kind: str, value) -> tuple[int, bytes]:
    """Type code and encoding of a metadata value (arrays: element kind from the first element)."""
    if kind == "str":
        raw = value.encode("utf-8")
        return 8, struct.pack("<Q", len(raw)) + raw
    if kind != "array":
        code, fmt = _GGUF_CODES[kind]
        return code, struct.pack(fmt, value)
    elem = {str: "str", bool: "bool", int: "int32", float: "float32", list: "array"}[type(value[0])] if value else "str"
    parts = [_gguf_value(elem, v) for v in value]
    code = parts[0][0] if parts else 8
    return 9, struct.pack("<IQ", code, len(value)) + b"".join(p for _, p in parts)


def _gguf_with_metadata(base: bytes, kv_end: int, header_end: int, metadata) -> bytes:
    """``base`` (no general.alignment key) with its metadata replaced by ``metadata``, tensors unchanged."""
    kv = b""
    for key, kind, value in metadata:
        code, raw = _gguf_value(kind, value)
        kv += _gguf_value("str", key)[1] + struct.pack("<I", code) + raw
    head = base[:16] + struct.pack("<Q", len(metadata)) + kv + base[kv_end:header_end]
    return head + b"\0" * (-len(head) % 32) + base[-(-header_end // 32) * 32:]


def _gguf_metadata() -> list[tuple[str, str, object]]:
    """``(key, kind, value)`` of a small GGUF: a byte-level BPE vocabulary and two model keys."""
    from tinyllm.tokenizers import BPETokenizer
    from tinyllm.tokenizers.bpe import bytes_to_unicode

    tok = BPETokenizer.train(PROBE * 3, 290, special_tokens=["<|im_start|>", "<|im_end|>"])
    spell = bytes_to_unicode()
    specials = set(tok.special_tokens.values())
    tokens = [t.decode() if i in specials else "".join(spell[b] for b in t) for i, t in enumerate(tok.vocab)]
    return [
        ("general.architecture", "str", "llama"), ("tokenizer.ggml.model", "str", "gpt2"), ("tokenizer.ggml.pre", "str", "smollm"),
        ("tokenizer.ggml.tokens", "array", tokens),
        ("tokenizer.ggml.token_type", "array", [3 if i in specials else 1 for i in range(len(tokens))]),
        ("tokenizer.ggml.merges", "array", [f"{tokens[a]} {tokens[b]}" for a, b in tok.merges]),
        ("tokenizer.ggml.bos_token_id", "uint32", tok.special_tokens["<|im_start|>"]),
        ("tokenizer.ggml.eos_token_id", "uint32", tok.special_tokens["<|im_end|>"]),
        ("tokenizer.ggml.add_bos_token", "bool", False), ("tokenizer.chat_template", "str", "{{ messages }}"),
        ("llama.block_count", "uint32", 1), ("llama.rope.freq_base", "float32", 10000.0),
    ]


def _write_gguf(path: Path, metadata: list[tuple[str, str, object]]) -> None:
    """A GGUF written by the ``gguf`` package: ``metadata`` and four small tensors (F32, F16, Q8_0, Q4_1)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    for key, kind, value in metadata[1:]:  # the writer adds general.architecture itself
        getattr(w, "add_" + ("string" if kind == "str" else kind))(key, value)
    rng = np.random.default_rng(0)
    for name, qt, shape in [("a.weight", "F32", (3, 5)), ("b.weight", "F16", (2, 8)), ("c.weight", "Q8_0", (2, 32)),
                            ("d.weight", "Q4_1", (1, 32))]:
        x = rng.standard_normal(shape).astype(np.float32)
        t = gguf.GGMLQuantizationType[qt]
        w.add_tensor(name, gguf.quants.quantize(x, t) if qt != "F32" else x, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# values of other GGUF types for a metadata key
_GGUF_WRONG = [("str", "gpt2"), ("str", ""), ("uint32", 7), ("uint32", 2**32 - 1), ("int32", -1), ("uint64", 2**64 - 1),
               ("float32", 1.5), ("bool", True), ("array", []), ("array", [1, 2]), ("array", ["a"]), ("array", [1.5]),
               ("array", [[1], [2]]), ("array", ["Ġ t"]), ("array", [True])]


class GGUF:
    """GGUF files; what loads must equal what the ``gguf`` package reads (metadata, tensor infos, bytes)."""

    name = "gguf"

    def __init__(self, work: Path):
        from tinyllm.io.gguf import GGUFReader

        self.reader, self.path = GGUFReader, work / "fuzz.gguf"
        self.metadata = _gguf_metadata()
        _write_gguf(work / "base.gguf", self.metadata)
        self.base = (work / "base.gguf").read_bytes()
        self.fields, self.kv_end, self.header_end = _gguf_fields(self.base)
        assert _gguf_with_metadata(self.base, self.kv_end, self.header_end, self.metadata) == self.base

    def mutate(self, choose: Choose) -> bytes:
        raw = bytearray(self.base)
        for _ in range(1 + choose(3)):
            if choose(2):  # an extreme value in an integer field
                pos, size = self.fields[choose(len(self.fields))]
                v = INTERESTING[choose(len(INTERESTING))] if choose(4) else \
                    int.from_bytes(raw[pos:pos + size], "little") + (1, -1, 2, 100)[choose(4)]
                raw[pos:pos + size] = (v % (1 << (8 * size))).to_bytes(size, "little")
            else:
                raw = bytearray(mutate_bytes(bytes(raw), choose, [(0, 24), (0, self.header_end),
                                                                 (self.header_end - 300, self.header_end), (0, len(raw))]))
        return bytes(raw)

    def load(self):
        r = self.reader(self.path)
        raws = {name: r.raw(name).tobytes() for name in r.tensors}
        for name in r.tensors:
            try:
                r.dequantize(name)
            except TinyLLMError:
                pass
        return r, raws

    def compare(self, r, raws) -> str:
        import gguf

        try:
            g = gguf.GGUFReader(str(self.path))
            theirs = {k: f.contents() for k, f in g.fields.items() if not k.startswith("GGUF.")}
            nested = {k for k, f in g.fields.items() if f.types[:2] == [gguf.GGUFValueType.ARRAY] * 2}
            their_tensors = {t.name: t for t in g.tensors}
        except Exception as e:
            return _fail("misread", f"loaded a file the gguf package refuses ({type(e).__name__}: {e})")
        if r.metadata.keys() != theirs.keys():
            return _fail("misread", "other metadata keys than the gguf package")
        # (the gguf package's contents() flattens nested arrays: compare those flattened)
        ours = {k: _flat(v) if k in nested else v for k, v in r.metadata.items()}
        bad = [k for k in theirs if not _same(_plain(ours[k]), _plain(theirs[k]))]
        if bad:
            return _fail("misread", f"metadata {bad[0]!r} differs from the gguf package")
        if r.tensors.keys() != their_tensors.keys():
            return _fail("misread", "other tensor names than the gguf package")
        for name, info in r.tensors.items():
            t = their_tensors[name]
            if (int(t.tensor_type), info.file_offset, info.nbytes, tuple(int(d) for d in t.shape)) != \
                    (int(info.ggml_type), t.data_offset, t.n_bytes, info.ne) or raws[name] != bytes(t.data.view(np.uint8)):
                return _fail("misread", f"tensor {name!r} differs from the gguf package")
        return "loaded"

    def check(self, data: bytes) -> str:
        self.path.write_bytes(data)
        try:
            r, raws = self.load()
        except TinyLLMError:
            return "rejected"
        except Exception as e:
            return _foreign(e)
        return self.compare(r, raws)


def _flat(v):
    return [y for x in v for y in _flat(x)] if isinstance(v, list) else [v]


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(np.float32(v)) if isinstance(v, np.float32) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


class GGUFTokenizer(GGUF):
    """The tokenizer built from a (mutated) GGUF's metadata, through ``smollm2.load_tokenizer``."""

    name = "gguf_tokenizer"

    def mutate(self, choose: Choose) -> bytes:
        if choose(3) == 0:  # a well-formed file whose tokenizer keys have wrong types, odd values or are missing
            metadata = list(self.metadata)
            for _ in range(1 + choose(2)):
                i = 1 + choose(9)  # the tokenizer keys
                if choose(4) == 0:
                    del metadata[i]
                else:
                    metadata[i] = (metadata[i][0], *_GGUF_WRONG[choose(len(_GGUF_WRONG))])
            return _gguf_with_metadata(self.base, self.kv_end, self.header_end, metadata)
        raw = bytearray(self.base)
        meta_fields = [f for f in self.fields if f[0] < self.header_end]
        for _ in range(1 + choose(3)):
            if choose(2):
                pos, size = meta_fields[choose(len(meta_fields))]
                v = INTERESTING[choose(len(INTERESTING))] if choose(3) else \
                    int.from_bytes(raw[pos:pos + size], "little") + (1, -1, 2)[choose(3)]
                raw[pos:pos + size] = (v % (1 << (8 * size))).to_bytes(size, "little")
            else:
                raw = bytearray(mutate_bytes(bytes(raw), choose, [(24, self.header_end)]))
        return bytes(raw)

    def check(self, data: bytes) -> str:
        from tinyllm.models.smollm2 import load_tokenizer

        self.path.write_bytes(data)
        try:
            r = self.reader(self.path)
            tok = load_tokenizer(r)
            text = tok.decode(tok.encode(PROBE))
        except TinyLLMError:
            return "rejected"
        except Exception as e:
            return _foreign(e)
        verdict = self.compare(r, {name: r.raw(name).tobytes() for name in r.tensors})
        if verdict != "loaded":
            return verdict
        if len(tok) != len(r.metadata["tokenizer.ggml.tokens"]):
            return _fail("misread", "vocabulary size differs from the token list")
        if not tok.missing_bytes and text != PROBE:
            return _fail("misread", "decode(encode(text)) != text")
        return "loaded"


FORMATS = {cls.name: cls for cls in (Safetensors, ShardIndex, Checkpoint, CharTokenizerFile, BPETokenizerFile,
                                     GGUF, GGUFTokenizer)}


# ---- the long run ---------------------------------------------------------------------

def run(fmt, n: int, seed: int, time_limit: float, save_failures: Path | None) -> Counter:
    import signal

    rng = np.random.default_rng(seed)

    def choose(k: int) -> int:
        return int(rng.integers(k))

    def alarm(signum, frame):
        raise TimeoutError(f"took more than {time_limit} s")

    signal.signal(signal.SIGALRM, alarm)
    counts: Counter = Counter()
    for i in range(n):
        data = fmt.mutate(choose)
        signal.setitimer(signal.ITIMER_REAL, time_limit)
        try:
            outcome = fmt.check(data)
        except TimeoutError as e:
            outcome = _fail("TimeoutError", e)
        except MemoryError as e:
            outcome = _fail("MemoryError", e)
        except Exception as e:  # the comparison with the reference broke on what was loaded
            outcome = _fail("misread", f"the loaded result does not fit the reference ({type(e).__name__}: {e})")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        key = outcome.split(":")[0] if outcome.startswith("FAIL") else outcome
        counts[key] += 1
        if outcome.startswith("FAIL"):
            print(f"  {fmt.name} #{i}: {outcome}", file=sys.stderr)
            if save_failures is not None:
                save_failures.mkdir(parents=True, exist_ok=True)
                (save_failures / f"{fmt.name}-{i}.bin").write_bytes(data)
    return counts


def main(argv=None) -> int:
    import resource

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="mutated files per format")
    ap.add_argument("--formats", default=",".join(FORMATS), help="comma-separated, from: " + ", ".join(FORMATS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds per file before it counts as a FAIL")
    ap.add_argument("--memory-limit-gb", type=float, default=8.0, help="address-space limit: beyond it, MemoryError")
    ap.add_argument("--save-failures", type=Path, default=None, help="folder for the files that failed")
    args = ap.parse_args(argv)
    limit = int(args.memory_limit_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    names = [s.strip() for s in args.formats.split(",") if s.strip()]
    unknown = sorted(set(names) - FORMATS.keys())
    if unknown:
        ap.error(f"unknown formats {unknown}; known: {', '.join(FORMATS)}")
    work = Path(tempfile.mkdtemp(prefix="fuzz_readers_"))
    failed = 0
    try:
        for name in names:
            t0 = time.perf_counter()
            (work / name).mkdir()
            counts = run(FORMATS[name](work / name), args.n, args.seed, args.time_limit, args.save_failures)
            fails = sum(v for k, v in counts.items() if k.startswith("FAIL"))
            failed += fails
            shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
            print(f"{name:15s} {args.n:6d} files in {time.perf_counter() - t0:6.1f} s: {shown}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("no failures" if not failed else f"{failed} FAILURES")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
