"""Byte-level BPE trained from scratch: training, encoding, decoding, special tokens, files."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from tinyllm.data import load_corpus
from tinyllm.errors import TokenizerError
from tinyllm.tokenizers import BPETokenizer
from tinyllm.tokenizers.bpe import GPT2_PATTERN, bytes_to_unicode, pre_tokenize


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()[:60_000]


@pytest.fixture(scope="module")
def tok(corpus):
    return BPETokenizer.train(corpus, 600, special_tokens=["<|endoftext|>", "<|pad|>"])


def test_bytes_to_unicode_is_gpt2s():
    spell = bytes_to_unicode()
    assert len(spell) == 256 and len(set(spell.values())) == 256
    assert spell[ord(" ")] == "Ġ" and spell[ord("\n")] == "Ċ" and spell[ord("a")] == "a"
    assert spell[0] == "Ā" and spell[0xAD] == "Ń" and spell[0xFF] == "ÿ"


def test_pre_tokenize_gpt2_and_smollm():
    assert pre_tokenize("Hi  there!") == ["Hi", " ", " there", "!"]
    assert pre_tokenize("I'm 12345 ok\n\n") == ["I", "'m", " 12345", " ok", "\n\n"]
    assert pre_tokenize("I'm 12345 ok", "smollm") == ["I", "'m", " ", "1", "2", "3", "4", "5", " ok"]
    assert pre_tokenize("ab12", [r"\d"]) == ["ab", "1", "2"]  # a custom pattern keeps the gaps
    assert pre_tokenize("") == []
    with pytest.raises(ValueError, match="regex"):
        pre_tokenize("x", "(")


def naive_train(text, n_merges):
    """Reference: full recount of all pairs for every merge (slow, obviously correct)."""
    words = Counter(pre_tokenize(text))
    seqs = {w: list(w.encode()) for w in words}
    merges = []
    for r in range(n_merges):
        counts = Counter()
        for w, f in words.items():
            s = seqs[w]
            for p in zip(s, s[1:]):
                counts[p] += f
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for w, s in seqs.items():
            out, j = [], 0
            while j < len(s):
                if j < len(s) - 1 and (s[j], s[j + 1]) == best:
                    out.append(256 + r)
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[w] = out
    return merges


def test_incremental_training_equals_full_recount():
    text = load_corpus()[:8000]
    fast = BPETokenizer.train(text, 256 + 120)
    assert fast.merges == naive_train(text, 120)


def test_training_basics(tok, corpus):
    assert tok.vocab_size == 600 and len(tok.merges) == 598 - 256
    assert tok.special_tokens == {"<|endoftext|>": 598, "<|pad|>": 599}
    assert tok.vocab[256] == b"".join(tok.vocab[i] for i in tok.merges[0])
    # the first merge is the most frequent adjacent byte pair inside pre-tokens
    counts = Counter()
    for w in pre_tokenize(corpus):
        b = w.encode()
        counts.update(zip(b, b[1:]))
    assert counts[tok.merges[0]] == max(counts.values())
    ids = tok.encode(corpus)
    assert len(corpus.encode()) / len(ids) > 2.0  # it compresses
    assert tok.decode(ids) == corpus


def test_training_is_deterministic(corpus):
    a = BPETokenizer.train(corpus[:20_000], 400)
    b = BPETokenizer.train(corpus[:20_000], 400)
    assert a.merges == b.merges


def test_training_stops_when_no_pairs_left():
    t = BPETokenizer.train("ab ab ab", 1000)
    assert t.vocab_size < 1000 and t.encode("ab ab") == [256, 257]


def test_train_errors():
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train("abc", 100)
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train("abc", 256, special_tokens=["<s>"])
    with pytest.raises(ValueError, match="special_tokens"):
        BPETokenizer.train("abc", 300, special_tokens=["<s>", "<s>"])
    with pytest.raises(TypeError, match="text"):
        BPETokenizer.train(b"abc", 300)


def test_special_tokens_split_before_pre_tokenization(tok):
    ids = tok.encode("hi<|endoftext|>there<|pad|>")
    assert ids.count(598) == 1 and ids[-1] == 599
    assert tok.decode(ids) == "hi<|endoftext|>there<|pad|>"
    only = tok.encode("a<|endoftext|><|pad|>", allowed_special={"<|pad|>"})
    assert 598 not in only and only[-1] == 599
    plain = tok.encode("<|endoftext|>", allowed_special="none")
    assert 598 not in plain and tok.decode(plain) == "<|endoftext|>"
    assert tok.encode("<|endoftext|>", allowed_special=set()) == plain == tok.encode_ordinary("<|endoftext|>")
    with pytest.raises(ValueError, match="unknown special"):
        tok.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("x", allowed_special=3)


def test_merges_apply_by_rank_not_left_to_right():
    # 'bc' is learned before 'ab', so "abc" must become a + bc even though 'ab' comes first.
    t = BPETokenizer([bytes([i]) for i in range(256)] + [b"bc", b"ab"], [(98, 99), (97, 98)])
    assert t.encode("abc") == [97, 256]
    assert t.encode("abab") == [257, 257]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",))))
def test_round_trip_any_unicode(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, allowed_special="none")) == text


@settings(max_examples=100, deadline=None)
@given(st.text())  # hypothesis' default text() has no lone surrogates either
def test_round_trip_default_text(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_lone_surrogate_is_a_clear_error(tok):
    with pytest.raises(TokenizerError, match="surrogate"):
        tok.encode("a\ud800b")


def test_decode_invalid_utf8_and_bad_ids(tok):
    euro = tok.encode("€")  # three bytes, several tokens at this vocab size
    assert tok.decode(euro) == "€"
    assert tok.decode_bytes([0xE2]) == b"\xe2" and tok.decode([0xE2]) == "\ufffd"
    with pytest.raises(TokenizerError, match=r"\[0, 600\)"):
        tok.decode([600])
    with pytest.raises(TokenizerError, match=r"\[0, 600\)"):
        tok.decode([-1])
    assert tok.decode([]) == ""
    assert tok.id_to_token(65) == "A" and tok.id_to_token(32) == "Ġ" and tok.id_to_token(598) == "<|endoftext|>"


def test_save_load(tok, tmp_path, corpus):
    path = tmp_path / "bpe.json"
    tok.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["bpe.json"]
    assert path.stat().st_size < 30_000  # a small file
    back = BPETokenizer.load(path)
    assert back.merges == tok.merges and back.vocab == tok.vocab and back.special_tokens == tok.special_tokens
    assert back.pattern == (GPT2_PATTERN,)
    text = corpus[:5000] + "<|endoftext|>"
    assert back.encode(text) == tok.encode(text)


def test_load_errors(tok, tmp_path):
    path = tmp_path / "bpe.json"
    tok.save(path)
    good = json.loads(path.read_text())

    def write(**change):
        path.write_text(json.dumps({**good, **change}))

    write(merges=[[97, 98, 99]])
    with pytest.raises(TokenizerError, match="bpe.json.*merge 0.*not the concatenation"):
        BPETokenizer.load(path)
    write(merges=[[97, 98, 100000]])
    with pytest.raises(TokenizerError, match="bpe.json.*outside the vocabulary"):
        BPETokenizer.load(path)
    write(merges=[[97, 98]])
    with pytest.raises(TokenizerError, match="bpe.json.*triples"):
        BPETokenizer.load(path)
    write(tokens=good["tokens"][:-1] + [" "])
    with pytest.raises(TokenizerError, match="bpe.json.*tokens.*599"):
        BPETokenizer.load(path)
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "pattern"}))
    with pytest.raises(TokenizerError, match="bpe.json.*missing key 'pattern'"):
        BPETokenizer.load(path)
    write(special_tokens={"<s>": 10**6})
    with pytest.raises(TokenizerError, match="special token"):
        BPETokenizer.load(path)
    write(format="tinyllm-char")
    with pytest.raises(TokenizerError, match="format"):
        BPETokenizer.load(path)


@pytest.mark.reference
def test_same_vocab_size_compresses_like_hf_tokenizers(corpus):
    """HF's ByteLevel BPE trainer on the same text and vocab size gives a similar number of tokens."""
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator([corpus], trainer)
    ours = BPETokenizer.train(corpus, 600)
    n_ours, n_hf = len(ours.encode(corpus)), len(hf.encode(corpus).ids)
    assert abs(n_ours - n_hf) / n_hf < 0.02


def test_train_with_smollm_pattern_and_progress(capsys):
    t = BPETokenizer.train("x = 12345 + 67890\n" * 20, 300, pattern="smollm", progress=True)
    assert t.pattern[0] == r"\p{N}"
    assert all(not bytes(t.vocab[i]).strip().isdigit() or len(t.vocab[i].strip()) == 1 for i in range(256, len(t)))
    assert t.decode(t.encode("y = 42")) == "y = 42"
    assert "BPE merges" in capsys.readouterr().err


def test_gguf_metadata_as_numpy_arrays():
    """The GGUF reader may hand back arrays as NumPy arrays; a tiny hand-made vocabulary."""
    np = pytest.importorskip("numpy")
    spell = bytes_to_unicode()
    tokens = ["<|endoftext|>"] + [spell[b] for b in range(256)] + ["Ġt", "Ġth"]
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt2",
        "tokenizer.ggml.tokens": np.array(tokens),
        "tokenizer.ggml.merges": np.array(["Ġ t", "Ġt h"]),
        "tokenizer.ggml.token_type": np.array([3] + [1] * 258, dtype=np.int32),
        "tokenizer.ggml.bos_token_id": np.uint32(0),
    }
    tok = BPETokenizer.from_gguf_metadata(metadata)
    assert tok.encode(" the<|endoftext|>") == [258, 1 + ord("e"), 0]
    assert tok.bos_token_id == 0 and tok.special_tokens == {"<|endoftext|>": 0}
    with pytest.raises(TokenizerError, match="token_type"):
        BPETokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.token_type": [1]})
    with pytest.raises(TokenizerError, match="bos_token_id 999 is not an id in the vocabulary"):
        BPETokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.bos_token_id": 999})


def _hostile(tok, tmp_path, **change):
    path = tmp_path / "hostile.json"
    tok.save(path)
    obj = json.loads(path.read_text())
    obj.update(change)
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize("change,match", [
    ({"merges": [[97, 98, True]]}, "triples"),
    ({"merges": [[97.0, 98, 256]]}, "triples"),
    ({"tokens": "abc"}, "must be lists"),
    ({"special_tokens": [["<s>", 1]]}, "special_tokens"),  # was TypeError
    ({"special_tokens": {"<|endoftext|>": 3}}, "token 3 holds other bytes"),
    ({"info": {"bos_token_id": "1"}}, "bos_token_id' must be int"),
    ({"info": {"bos_token_id": 10**6}}, "bos_token_id 1000000 is not an id"),
    ({"info": {"add_bos_token": 1}}, "add_bos_token' must be bool"),
    ({"info": {"colour": 1}}, "key 'info' must be an object with keys among"),
    ({"info": [1]}, "key 'info'"),
    ({"pattern": {"a": 1}}, "pattern must be a preset name"),
    ({"pattern": [r"(\w+)"]}, "no capturing group"),
    ({"pattern": ["(?r)."] * 3}, "must match forward"),  # loaded, then encode multiplied the text
    ({"pattern": ["."] * 17}, "at most 16 regexes"),
    ({"pattern": ["(?:"]}, "not a valid regex"),
])
def test_hostile_fields(tok, tmp_path, change, match):
    with pytest.raises(TokenizerError, match="hostile.json.*" + match):
        BPETokenizer.load(_hostile(tok, tmp_path, **change))


@pytest.mark.parametrize("text,match", [
    ("[" * 10_000 + "]" * 10_000, "nested 10000 levels"),  # was RecursionError
    ('{"format": "tinyllm-bpe", "version": 1, "tokens": [], "merges": [[1' + "0" * 5000 + ", 2, 3]]}",
     "integer of 5001 digits"),  # was a bare ValueError
])
def test_hostile_json(tmp_path, text, match):
    path = tmp_path / "hostile.json"
    path.write_text(text)
    with pytest.raises(TokenizerError, match="hostile.json.*" + match):
        BPETokenizer.load(path)


def test_reverse_pattern_would_have_duplicated_text():
    """Why reverse patterns are refused: their matches come last to first, so the pieces no longer
    follow the text (each stage of a pattern list multiplied it)."""
    import regex

    assert regex.findall("(?r).", "abc") == ["c", "b", "a"]
    with pytest.raises(ValueError, match="must match forward"):
        pre_tokenize("abc", "(?r).")


def _gguf_metadata():
    spell = bytes_to_unicode()
    tokens = ["<|endoftext|>"] + [spell[b] for b in range(256)] + ["Ġt", "Ġth"]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": ["Ġ t", "Ġt h"],
        "tokenizer.ggml.token_type": [3] + [1] * 258,
        "tokenizer.ggml.bos_token_id": 0,
    }


@pytest.mark.parametrize("key,value,match", [
    ("tokenizer.ggml.model", ["gpt2"], "'tokenizer.ggml.model' must be str"),
    ("tokenizer.ggml.pre", 3, "'tokenizer.ggml.pre' must be str"),
    ("tokenizer.ggml.tokens", list(range(259)), "'tokenizer.ggml.tokens' must be a list of str"),  # was str() of ints
    ("tokenizer.ggml.tokens", [], "'tokenizer.ggml.tokens' is empty"),
    ("tokenizer.ggml.merges", "Ġ t", "'tokenizer.ggml.merges' must be a list of str"),  # was TypeError
    ("tokenizer.ggml.merges", [1, 2], "must be a list of str"),
    ("tokenizer.ggml.merges", ["Ġ t h", "Ġt"], "merge 'Ġ t h' is not two tokens"),  # split in step, misread before
    ("tokenizer.ggml.token_type", "1", "'tokenizer.ggml.token_type' must be a list of int"),
    ("tokenizer.ggml.bos_token_id", "0", "'tokenizer.ggml.bos_token_id' must be int"),  # was TypeError
    ("tokenizer.ggml.bos_token_id", True, "must be int"),
    ("tokenizer.ggml.add_bos_token", 1, "'tokenizer.ggml.add_bos_token' must be bool"),
    ("tokenizer.chat_template", ["x"], "'tokenizer.chat_template' must be str"),
])
def test_gguf_metadata_wrong_types(key, value, match):
    with pytest.raises(TokenizerError, match=match):
        BPETokenizer.from_gguf_metadata({**_gguf_metadata(), key: value})


def test_gguf_metadata_without_merges_is_a_byte_tokenizer():
    """An empty merges array (was StopIteration) gives a tokenizer of bytes only."""
    tok = BPETokenizer.from_gguf_metadata({**_gguf_metadata(), "tokenizer.ggml.merges": []})
    assert tok.merges == [] and tok.encode(" th") == [1 + ord(" "), 1 + ord("t"), 1 + ord("h")]


def test_load_tokenizer_names_the_file():
    from types import SimpleNamespace

    from tinyllm.models.smollm2 import load_tokenizer

    reader = SimpleNamespace(path="broken.gguf", metadata={**_gguf_metadata(), "tokenizer.ggml.merges": "Ġ t"})
    with pytest.raises(TokenizerError, match="^broken.gguf: GGUF metadata 'tokenizer.ggml.merges'"):
        load_tokenizer(reader)
