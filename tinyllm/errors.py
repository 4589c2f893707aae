"""The library's own exceptions.

Each names the problem and what to do about it. They subclass the built-in
exception a caller would expect (``ValueError`` for bad data, ``RuntimeError``
for a failed run), so ``except ValueError`` keeps working.
"""


class TinyLLMError(Exception):
    """Base class of every error raised on purpose by tinyllm."""


class CheckpointError(TinyLLMError, ValueError):
    """A checkpoint (safetensors, sharded index, optimiser state) is unreadable or does not fit."""


class GGUFError(TinyLLMError, ValueError):
    """A GGUF file is truncated, corrupt, or uses something this reader does not support."""


class TokenizerError(TinyLLMError, ValueError):
    """A tokenizer file or vocabulary is invalid."""


class TrainingError(TinyLLMError, RuntimeError):
    """Training went wrong (NaN/inf loss or gradients, diverging run)."""


class QuantizationError(TinyLLMError, ValueError):
    """A tensor cannot be quantised as asked (bad block size, NaN/inf weights, empty tensor)."""


class ConfigError(TinyLLMError, ValueError):
    """A setting (an environment variable such as ``TINYLLM_DECODE_THREADS``) has a value tinyllm cannot use."""


class TranslationError(TinyLLMError, ValueError):
    """A translation catalogue (i18n/) is missing a cell, is stale, breaks the glossary, or is malformed."""
