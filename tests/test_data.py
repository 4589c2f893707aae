"""tinyllm.data: the default corpus, user files, the split and batches."""
from __future__ import annotations

import numpy as np
import pytest

from tinyllm import data
from tinyllm.data import CorpusError, clean_text, get_batch, load_corpus, train_val_split


def test_pydoc_corpus_is_clean_and_reproducible():
    text = load_corpus()
    assert text == load_corpus()  # same string every call
    assert len(text) > 300_000
    assert "\r" not in text and "\t" not in text and "\n\n\n" not in text
    assert not any(line != line.rstrip() for line in text.split("\n"))
    assert text.endswith("\n") and not text.endswith("\n\n")
    assert "assert" in text and "Assert statements" in text


def test_clean_text_rules():
    assert clean_text("a\r\nb\rc") == "a\nb\nc"
    assert clean_text("x  \t\ny") == "x\ny"
    assert clean_text("a\n\n\n\n\nb") == "a\n\nb"
    assert clean_text("\tx") == "x"  # stripped ends
    assert clean_text("a\n\tb") == "a\n        b"  # tabs expand, indentation kept
    with pytest.raises(TypeError, match="text"):
        clean_text(b"bytes")


def test_load_user_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("héllo\r\nwörld ✓\n".encode())
    assert load_corpus(p) == "héllo\nwörld ✓\n"
    assert load_corpus(str(p)) == "héllo\nwörld ✓\n"
    p.write_bytes(b"\xef\xbb\xbfbom")
    assert load_corpus(p) == "bom"


def test_load_user_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_corpus(tmp_path / "nope.txt")
    with pytest.raises(IsADirectoryError, match="directory"):
        load_corpus(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(CorpusError, match="empty.txt.*empty"):
        load_corpus(empty)
    blank = tmp_path / "blank.txt"
    blank.write_bytes(b" \n\n ")
    with pytest.raises(CorpusError, match="whitespace"):
        load_corpus(blank)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("abc café".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1.txt.*not UTF-8.*0xe9 at offset 7"):
        load_corpus(latin)
    assert issubclass(CorpusError, ValueError)
    with pytest.raises(TypeError, match="source"):
        load_corpus(3)


def test_train_val_split():
    train, val = train_val_split("abcdefghij", 0.2)
    assert (train, val) == ("abcdefgh", "ij")
    arr = np.arange(100)
    train, val = train_val_split(arr, 0.1)
    assert train.shape == (90,) and val.shape == (10,) and val[0] == 90
    for bad in (0, 1, 1.5, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match="val_fraction"):
            train_val_split(arr, bad)
    with pytest.raises(ValueError, match="too short"):
        train_val_split("ab", 0.01)
    with pytest.raises(ValueError, match="1-D"):
        train_val_split(np.zeros((3, 3)), 0.5)


def test_get_batch_shapes_targets_and_seed(xp):
    tokens = xp.arange(1000, dtype=xp.int64) * 3  # (N,)
    x, y = get_batch(tokens, context_length=16, batch_size=8, rng=np.random.default_rng(0))
    assert x.shape == (8, 16) and y.shape == (8, 16)
    assert x.dtype == tokens.dtype and type(x) is type(tokens)
    assert bool((y[:, :-1] == x[:, 1:]).all())  # y is x shifted by one
    assert bool((y[:, -1] == x[:, -1] + 3).all())  # contiguous windows
    x2, _ = get_batch(tokens, 16, 8, np.random.default_rng(0))
    assert bool((x == x2).all())  # seeded
    x3, _ = get_batch(tokens, 16, 8, np.random.default_rng(1))
    assert not bool((x == x3).all())


def test_get_batch_covers_the_last_window():
    tokens = np.arange(11)
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y = get_batch(tokens, 10, 4, rng)
        seen.update(int(v) for v in x[:, 0])
        assert int(y.max()) <= 10
    assert seen == {0}  # only one window fits: N - T = 1 start
    x, y = get_batch(np.arange(12), 10, 64, rng)
    assert set(x[:, 0].tolist()) == {0, 1} and y[:, -1].max() == 11


def test_get_batch_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="1-D"):
        get_batch(np.zeros((2, 5), dtype=np.int64), 2, 2, rng)
    with pytest.raises(TypeError, match="integer dtype"):
        get_batch(np.zeros(20), 2, 2, rng)
    with pytest.raises(ValueError, match="context_length"):
        get_batch(np.arange(20), 0, 2, rng)
    with pytest.raises(ValueError, match="batch_size"):
        get_batch(np.arange(20), 2, -1, rng)
    with pytest.raises(ValueError, match="at least 21"):
        get_batch(np.arange(20), 20, 2, rng)
    with pytest.raises(TypeError, match="Generator"):
        get_batch(np.arange(20), 2, 2, 0)


def test_module_docstring_documents_cleaning():
    assert "sorted key order" in data.__doc__
