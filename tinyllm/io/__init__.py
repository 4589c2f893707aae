"""Reading and writing model files, written from scratch.

- :mod:`tinyllm.io.files`: generic helpers: atomic writes, JSON read with limits (depth, integer size, duplicates).
- :mod:`tinyllm.io.safetensors`: the safetensors format (JSON header + raw bytes), lazy memory-mapped
  loading, shards with an index file (replaced atomically), dtype conversion.
- :mod:`tinyllm.io.checkpoint`: training checkpoints (weights, optimiser state, step, RNG state) that resume bit for bit.
- :mod:`tinyllm.io.gguf`: the GGUF format of llama.cpp (typed metadata, tensor infos, memory-mapped quantised data).

Import the submodule you need (``from tinyllm.io.gguf import GGUFReader``).
"""
