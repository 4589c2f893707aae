"""The generic file helpers: atomic writes that leave nothing behind, JSON parsing with limits."""
from __future__ import annotations

import json
import os

import pytest

from tinyllm.errors import CheckpointError, TokenizerError
from tinyllm.io.files import atomic_write, json_depth, parse_json, read_json, write_json


def test_atomic_write_cleans_up_and_removes_stale_temporaries(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"x": 1})
    stale = tmp_path / ".a.json.abcd1234.tmp"  # what a SIGKILL during a write leaves
    stale.write_bytes(b"\0" * 1000)
    other = tmp_path / ".b.json.abcd1234.tmp"  # another target's: not ours to delete
    other.write_bytes(b"")

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert json.loads(target.read_text()) == {"x": 1}
    assert sorted(os.listdir(tmp_path)) == [".b.json.abcd1234.tmp", "a.json"]


@pytest.mark.parametrize("raw,depth", [
    (b"1", 0), (b"[]", 1), (b'{"a": [1, {"b": []}]}', 4), (b'["]]]", "[[[\\"["]', 1), (b'"\\\\"', 0),
])
def test_json_depth_ignores_strings(raw, depth):
    assert json_depth(raw) == depth


@pytest.mark.parametrize("raw,match", [
    (b"[" * 65 + b"]" * 65, "nested 65 levels deep, more than the 64"),
    (b"[" * 100_000, "nested 100000 levels"),
    (b'{"a": 1' + b"0" * 64 + b"}", "integer of 65 digits"),
    (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
    (b'["\\udc00"]', "surrogate"),
    (b"[NaN]", "NaN is not a JSON number"),
    (b"\xff", "not UTF-8"),
    (b"{", "invalid JSON"),
])
def test_parse_json_limits(raw, match):
    with pytest.raises(TokenizerError, match="^where: .*" + match):
        parse_json(raw, "where", TokenizerError)


def test_parse_json_accepts_what_it_should():
    assert parse_json(b'{"a": [1' + b"0" * 63 + b', -1.5e300, "\\ud83d\\ude00"]}', "w", TokenizerError) == \
        {"a": [10**63, -1.5e300, "\U0001F600"]}
    assert parse_json(b"[NaN, Infinity]", "w", TokenizerError, allow_nan=True)[1] == float("inf")


def test_read_json_checks_the_size_before_reading(tmp_path):
    p = tmp_path / "big.json"
    p.write_bytes(b"[" + b"0," * 1000 + b"0]")
    with pytest.raises(CheckpointError, match="big.json: 2003 bytes, more than the 1000"):
        read_json(p, CheckpointError, max_bytes=1000)
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json", CheckpointError)
