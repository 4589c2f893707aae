"""tinyllm: a large language model built from scratch in NumPy, running on a GPU through CuPy.

Start with :mod:`tinyllm.backend` (CPU or GPU), :mod:`tinyllm.init` and
:mod:`tinyllm.nn`. The legend of the shape letters used in comments, ``(B, T, C)``
and friends, is in :mod:`tinyllm.shapes`.
"""
__version__ = "0.1.0"
