"""4-bit quantisation of SmolLM2-135M: round-to-nearest against GPTQ, and what calibration does to GPTQ.

    python benchmarks/compression_quality.py [--quick]

Notebook 11 shows one configuration (GPTQ, asymmetric groups of 64, 2,048 calibration
tokens of documentation). This script measures the neighbours that the notebook only
mentions, in one process on the same model:

- grids: symmetric groups of 32 (Q4_0's layout) and asymmetric groups of 64;
- GPTQ with and without act-order;
- calibration: 16 x 128 and 64 x 128 tokens of the pydoc documentation (never the
  held-out part), and, as a diagnostic only, the story that is also scored;
- perplexity on two texts: 1,024 held-out documentation tokens and the story
  (``tinyllm.evaluate.heldout_text()``).

Perplexity is deterministic, so one run is enough; the seconds are for orientation
(about 5 minutes on a 2-core CPU, 2 with --quick).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinyllm.compress.gptq import gptq_quantize  # noqa: E402
from tinyllm.compress.patch import InputRecorder, linear_weights, replace_weights, restore_weights  # noqa: E402
from tinyllm.compress.quantize import fake_quantize  # noqa: E402
from tinyllm.data import load_corpus  # noqa: E402
from tinyllm.evaluate import format_table, heldout_text, perplexity  # noqa: E402
from tinyllm.models.smollm2 import load_smollm2  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the notebook's calibration set")
    args = ap.parse_args()

    model, tok = load_smollm2("cpu")
    targets = linear_weights(model)
    fp32 = [getattr(b, k).data for b, k in targets]                         # (IN, OUT) each
    corpus = load_corpus("pydoc")
    calib_text, eval_text = corpus[:-20_000], corpus[-20_000:]              # as in notebook 11
    texts = {"docs": tok.encode(eval_text)[:1024], "story": tok.encode(heldout_text())}

    def scores(weights=None) -> dict[str, float]:
        old = None if weights is None else replace_weights(targets, lambda w, it=iter(weights): next(it))
        out = {name: perplexity(model, ids, window=512) for name, ids in texts.items()}
        if old is not None:
            restore_weights(targets, old)
        return out

    def record(calib: np.ndarray) -> list[InputRecorder]:                   # calib (N, T) token ids
        recs = replace_weights(targets, lambda w: InputRecorder(w, keep_inputs=False))
        for i in range(0, len(calib), 8):
            model(calib[i:i + 8], last_only=True)
        out = [getattr(b, k).data for b, k in targets]
        restore_weights(targets, recs)
        return out

    rng = np.random.default_rng(0)

    def docs_calibration(n: int) -> np.ndarray:                            # (n, 128) ids from the calibration part
        starts = rng.integers(0, len(calib_text) - 3000, n)
        return np.array([tok.encode(calib_text[s:s + 3000])[:128] for s in starts])

    calibrations = {"docs 16x128": docs_calibration(16)}
    if not args.quick:
        calibrations["docs 64x128"] = docs_calibration(64)
        story = texts["story"]
        calibrations["story itself (diagnostic)"] = np.array(story[:256]).reshape(2, 128)
    grids = {"sym g32": (True, 32), "asym g64": (False, 64)}

    base = scores()
    rows = [{"method": "fp32", "calibration": "-", **base}]
    for grid, (sym, gs) in grids.items():
        w_rtn = [fake_quantize(np.ascontiguousarray(w.T), 4, symmetric=sym, granularity="group", group_size=gs).T
                 for w in fp32]
        rows.append({"method": f"RTN {grid}", "calibration": "-", **scores(w_rtn)})
    for cname, calib in calibrations.items():
        t0 = time.perf_counter()
        recs = record(calib)
        print(f"calibration {cname}: {calib.size} tokens recorded in {time.perf_counter() - t0:.0f} s", flush=True)
        variants = [(g, True) for g in grids] + ([("asym g64", False)] if cname == "docs 16x128" else [])
        for grid, act_order in variants:
            sym, gs = grids[grid]
            t0 = time.perf_counter()
            w_gptq = [gptq_quantize(np.ascontiguousarray(w.T), r.hessian(), 4, group_size=gs, symmetric=sym,
                                    damp=0.01, act_order=act_order)[1].T for w, r in zip(fp32, recs)]
            dt = time.perf_counter() - t0
            name = f"GPTQ {grid}" + ("" if act_order else " no act-order")
            rows.append({"method": name, "calibration": cname, **scores(w_gptq)})
            print(f"  {name}: quantised in {dt:.0f} s", flush=True)
    for r in rows:
        for k in texts:
            r[f"{k} vs fp32"] = f"{r[k] / base[k] - 1:+.1%}"
            r[k] = f"{r[k]:.2f}"
    print()
    print(format_table(rows, ["method", "calibration", "docs", "docs vs fp32", "story", "story vs fp32"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
