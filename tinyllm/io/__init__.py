"""Reading and writing model files, written from scratch.

- :mod:`tinyllm.io.files`: generic helpers: atomic writes, JSON read with limits (depth, integer size, duplicates).
- :mod:`tinyllm.io.safetensors`: the safetensors format (JSON header + raw bytes), lazy memory-mapped
  loading, shards with an index file (replaced atomically), dtype conversion.
- :mod:`tinyllm.io.checkpoint`: training checkpoints (weights, optimiser state, step, RNG state) that resume bit for bit.
- :mod:`tinyllm.io.gguf`: the GGUF format of llama.cpp (typed metadata, tensor infos, memory-mapped quantised data).
- :mod:`tinyllm.io.ggml`: the GGML block codec (Q8_0, Q4_0, Q4_1, F16, BF16): type names, block sizes, quantise,
  and dequantise on NumPy or CuPy, bit for bit as ggml and the ``gguf`` package.

Import the submodule you need (``from tinyllm.io.gguf import GGUFReader``).
"""
