"""CharTokenizer."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinyllm.errors import TokenizerError
from tinyllm.tokenizers.char import CharTokenizer


def test_vocab_is_sorted_chars():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.vocab_size == len(tok) == 8
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.decode([3, 2, 4, 4, 5]) == "hello"
    assert tok.decode(np.array([[3, 2]])) == "he"
    assert tok.decode([]) == ""


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1))
def test_round_trip(text):
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text


def test_unknown_chars():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(TokenizerError, match=r"2 character\(s\).*'x', 'é'.*unk="):
        tok.encode("abxé")
    tok = CharTokenizer.from_text("abc", unk="?")
    assert tok.vocab_size == 4 and tok.unk_id == 3
    assert tok.encode("axb") == [0, 3, 1]
    assert tok.decode(tok.encode("axb")) == "a?b"


def test_bad_inputs():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(TokenizerError, match=r"\[0, 3\)"):
        tok.decode([0, 5])
    with pytest.raises(TokenizerError, match="integers"):
        tok.decode([0.5])
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"abc")
    with pytest.raises(TokenizerError, match="empty"):
        CharTokenizer.from_text("")
    with pytest.raises(TokenizerError, match="repeat"):
        CharTokenizer(["a", "a"])
    with pytest.raises(TokenizerError, match="unk"):
        CharTokenizer.from_text("ab", unk="??")


def test_save_load(tmp_path):
    tok = CharTokenizer.from_text("héllo\n wörld ✓", unk="\ufffd")
    path = tmp_path / "char.json"
    tok.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["char.json"]  # no temporary file left behind
    back = CharTokenizer.load(path)
    assert back.chars == tok.chars and back.unk == tok.unk
    assert back.encode("wörld?") == tok.encode("wörld?")


def test_load_errors(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(TokenizerError, match="bad.json.*invalid JSON"):
        CharTokenizer.load(path)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(TokenizerError, match="format"):
        CharTokenizer.load(path)
    path.write_text(json.dumps({"format": "tinyllm-char", "version": 2}))
    with pytest.raises(TokenizerError, match="version"):
        CharTokenizer.load(path)
    path.write_text(json.dumps({"format": "tinyllm-char", "version": 1, "chars": 5}))
    with pytest.raises(TokenizerError, match="chars"):
        CharTokenizer.load(path)
    path.write_text(json.dumps({"format": "tinyllm-char", "version": 1, "chars": "aa"}))
    with pytest.raises(TokenizerError, match="bad.json.*repeat"):
        CharTokenizer.load(path)
    with pytest.raises(FileNotFoundError):
        CharTokenizer.load(tmp_path / "missing.json")


@pytest.mark.parametrize("text,match", [
    ('{"format": "tinyllm-char", "version": 1, "chars": ' + "[" * 10_000 + "]" * 10_000 + "}",
     "nested 10001 levels"),  # was RecursionError
    ('{"format": "tinyllm-char", "version": 1' + "0" * 5000 + ', "chars": "ab"}', "integer of 5001 digits"),  # was ValueError
    ('{"format": "tinyllm-char", "version": true, "chars": "ab"}', "version True"),
    ('{"format": "tinyllm-char", "version": 1, "chars": "ab", "unk": ["a"]}', "'unk'"),  # was TypeError
    ('{"format": "tinyllm-char", "version": 1, "chars": "ab", "unk": "ab"}', "'unk'"),
    ('{"format": "tinyllm-char", "version": 1, "chars": "ab", "chars": "cd"}', "duplicate key 'chars'"),
    ('{"format": ["tinyllm-char"], "version": 1, "chars": "ab"}', "format"),
])
def test_hostile_files(tmp_path, text, match):
    path = tmp_path / "hostile.json"
    path.write_text(text)
    with pytest.raises(TokenizerError, match="hostile.json.*" + match):
        CharTokenizer.load(path)
