"""Tokenizers: characters (:class:`CharTokenizer`) and byte-level BPE (:class:`BPETokenizer`),
trained from scratch or built from a real model's GGUF metadata, plus SmolLM2's chat template."""
from tinyllm.tokenizers.bpe import BPETokenizer
from tinyllm.tokenizers.char import CharTokenizer

__all__ = ["BPETokenizer", "CharTokenizer"]
