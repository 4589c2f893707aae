"""Tokenizers: characters (:class:`CharTokenizer`) and byte-level BPE (:class:`BPETokenizer`),
trained from scratch or built from a real model's GGUF metadata, plus SmolLM2's chat template."""
from tinyllm.tokenizers.bpe import BPETokenizer, bytes_to_unicode, pre_tokenize
from tinyllm.tokenizers.char import CharTokenizer
from tinyllm.tokenizers.chat import DEFAULT_SYSTEM_PROMPT, apply_chat_template

__all__ = ["BPETokenizer", "CharTokenizer", "DEFAULT_SYSTEM_PROMPT", "apply_chat_template", "bytes_to_unicode",
           "pre_tokenize"]
