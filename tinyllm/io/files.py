"""Generic file helpers: atomic writes and JSON read with limits.

* :func:`atomic_write` writes a temporary file beside the target, flushes and fsyncs it, then
  ``os.replace``-s it onto the target, so a reader sees the old file or the new one, never half of one.
  An exception removes the temporary file. A process killed outright (SIGKILL, power loss) can
  leave one ``.<name>.<random>.tmp`` beside the target; the next write to the same target deletes
  it. One writer per target at a time.
* :func:`parse_json` / :func:`read_json` parse untrusted JSON into plain Python values, refusing
  what would exhaust the parser or mislead the caller: nesting deeper than ``max_depth`` (Python's
  parser would recurse until ``RecursionError``), integers longer than ``max_int_digits`` digits,
  duplicate object keys (which value wins differs between parsers), lone surrogates (not
  Unicode), and files bigger than ``max_bytes`` (checked before reading). Every problem raises the
  caller's :class:`~tinyllm.errors.TinyLLMError` subclass, naming the file.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any, Callable

import numpy as np

from tinyllm.errors import TinyLLMError

__all__ = ["atomic_write", "remove_stale_temps", "write_json", "json_depth", "parse_json", "read_json",
           "MAX_JSON_DEPTH", "MAX_INT_DIGITS", "MAX_JSON_BYTES"]

MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 64  # a 128-bit RNG state has 39
MAX_JSON_BYTES = 100_000_000  # as the safetensors header; a 262k-token BPE file takes about 10 MB
_TMP_SUFFIX = ".tmp"


def _stale_temp_pattern(name: str) -> re.Pattern:
    # tempfile.mkstemp's random part: 8 characters of [a-z0-9_]
    return re.compile(r"\." + re.escape(name) + r"\.[a-z0-9_]{8}" + re.escape(_TMP_SUFFIX) + r"\Z")


def remove_stale_temps(path: str | os.PathLike[str]) -> None:
    """Delete temporary files that an interrupted :func:`atomic_write` of ``path`` left behind."""
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    pattern = _stale_temp_pattern(name)
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        if pattern.match(entry):
            try:
                os.unlink(os.path.join(directory, entry))
            except OSError:
                pass


def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], Any]) -> None:
    """Call ``write(f)`` on a temporary binary file next to ``path``, fsync it, then rename it onto ``path``."""
    path = os.fspath(path)
    remove_stale_temps(path)
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + name + ".", suffix=_TMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = None) -> None:
    """Write ``obj`` as UTF-8 JSON, atomically."""
    separators = (",", ":") if indent is None else (",", ": ")
    data = json.dumps(obj, ensure_ascii=False, indent=indent, separators=separators, allow_nan=False).encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # a JSON string, escapes included
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def json_depth(raw: bytes) -> int:
    """The deepest nesting of ``[`` and ``{`` in JSON text (brackets inside strings do not count)."""
    brackets = np.frombuffer(_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS), dtype=np.uint8)
    if not brackets.size:
        return 0
    step = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(step).max())


def parse_json(raw: bytes, where: str, error: type[TinyLLMError], *, max_depth: int = MAX_JSON_DEPTH,
               max_int_digits: int = MAX_INT_DIGITS, allow_nan: bool = False) -> Any:
    """Parse UTF-8 JSON ``raw`` with the limits above; any problem raises ``error("<where>: ...")``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    depth = json_depth(raw)
    if depth > max_depth:
        raise error(f"{where}: JSON nested {depth} levels deep, more than the {max_depth} allowed")

    def parse_int(s: str) -> int:
        if len(s.lstrip("-")) > max_int_digits:
            raise ValueError(f"an integer of {len(s.lstrip('-'))} digits, more than the {max_int_digits} allowed")
        return int(s)

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            dup = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise ValueError(f"duplicate key {dup!r}")
        return obj

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        obj = json.loads(text, parse_int=parse_int, object_pairs_hook=no_duplicates,
                         **({} if allow_nan else {"parse_constant": no_constants}))
        if _SURROGATE_ESCAPE.search(raw):  # a lone surrogate ("\ud800" alone) is not Unicode
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError) as e:  # json.JSONDecodeError is a ValueError
        raise error(f"{where}: invalid JSON ({str(e)[:200]})") from None
    return obj


def read_json(path: str | os.PathLike[str], error: type[TinyLLMError], *, max_bytes: int = MAX_JSON_BYTES,
              **limits: Any) -> Any:
    """Read and parse the JSON file ``path`` (at most ``max_bytes``) with :func:`parse_json`'s limits."""
    path = os.fspath(path)
    with open(path, "rb") as f:  # OSError (a missing file...) is the caller's to handle
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise error(f"{path}: {size} bytes, more than the {max_bytes} a JSON file here may have")
        raw = f.read()
    return parse_json(raw, path, error, **limits)
