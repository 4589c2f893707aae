"""Compressing SmolLM2-135M: fp32, round-to-nearest, GPTQ (per calibration set), AWQ and W8A8, in one table.

    python benchmarks/compression_quality.py [--quick] [--only NAME[,NAME...]] [--save]

Every variant is scored in one process on the same model:

- perplexity on 1,024 held-out documentation tokens (the end of the pydoc text, never
  used for calibration) and on a short story unlike it (``tinyllm.evaluate.heldout_text()``);
- multiple-choice accuracy (``tinyllm.evaluate.choice_accuracy``, 24 items);
- bytes of the weights: block weights in their format, the embedding (also the head)
  and the norms kept in float32.

4-bit variants use asymmetric groups of 64. Calibration sets are 16 x 128 tokens:
"docs" (random windows of the documentation), "self" (text sampled from SmolLM2 itself
from random first tokens, no data set needed) and "mix" (8 of each). GPTQ's dampening
is chosen by measurement: GPTQ is fitted on 12 of the docs set's rows and its output error
measured on the other 4, for the weights of blocks 0 and 29. "mix x4" has four times the
tokens (32 windows of the documentation and 32 new self-generated sequences). Two rows test what
makes GPTQ carry to other text:

- "docs+chat": 8 rows of the documentation and 8 of SmolLM2's replies to 16 diverse instructions
  (``tinyllm.compress.calibrate.chat_calibration``: stories, explanations, letters, dialogue,
  recipes, code), with the dampening whose GPTQ, fitted on one of the two texts, has the least
  output error on the other (``tinyllm.compress.gptq.cross_domain_damp``);
- "docs ... + c diag": the docs set, with the correlations of ``H`` shrunk, ``H + c diag(H)``
  (``channel_damp``; dampening 0.01), ``c`` chosen by the held-out measurement above;
- "docs+chat ... + c diag" (``--calib "docs+chat diag"``): both, the docs+chat set with that ``c``.

The rows run in order of importance (a partial ``--save`` run keeps the rows it finished).

``--quick`` runs fp32, RTN and the two W8A8 rows; the full run adds the damp search,
GPTQ (sequential on docs, mix, self, mix x4, docs with shrunk correlations and docs+chat; the old one on docs)
and AWQ, several times longer. ``--save`` writes the table to
``benchmarks/results/compression_quality.md`` (row by row, so a partial run keeps its rows);
lesson 11 shows that file and ``tests/test_compression_table.py`` re-measures one row.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinyllm.compress import fold  # noqa: E402
from tinyllm.compress.awq import awq_apply, rtn_weight  # noqa: E402
from tinyllm.compress.calibrate import (chat_calibration, mixed_calibration, record_inputs,  # noqa: E402
                                        self_generated_calibration, text_calibration)
from tinyllm.compress.gptq import cross_domain_damp, damp_errors, gptq_model  # noqa: E402
from tinyllm.compress.patch import linear_weights, replace_weights, restore_weights  # noqa: E402
from tinyllm.compress.smoothquant import w8a8_apply  # noqa: E402
from tinyllm.data import load_corpus  # noqa: E402
from tinyllm.evaluate import choice_accuracy, format_table, heldout_text, perplexity  # noqa: E402
from tinyllm.models.smollm2 import load_smollm2  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "compression_quality.md"
COLUMNS = ["method", "calibration", "docs ppl", "docs vs fp32", "story ppl", "story vs fp32", "choice acc", "MB"]
BITS, GROUP, SYM = 4, 64, False
DAMPS = (0.001, 0.01, 0.03, 0.1, 0.3, 1.0)
X_DAMPS = DAMPS + (3.0,)                                                    # the cross-domain search's grid
CHANNEL_DAMPS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)                            # H + c diag(H), with damp 0.01


def parse_table(text: str) -> list[dict[str, str]]:
    """The rows of a Markdown table written by ``format_table`` (cells as strings)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def setup():
    """The model, its tokenizer, the calibration text and the two evaluation texts (as lesson 11 makes them)."""
    model, tok = load_smollm2("cpu")
    corpus = load_corpus("pydoc")
    calib_text, eval_text = corpus[:-20_000], corpus[-20_000:]             # as in notebook 11
    texts = {"docs": tok.encode(eval_text)[:1024], "story": tok.encode(heldout_text())}
    return model, tok, calib_text, texts


def score(model, tok, texts, name, calibration, nbytes, base=None) -> dict:
    row = {"method": name, "calibration": calibration}
    for k, ids in texts.items():
        p = perplexity(model, ids, window=512)
        row[f"{k} ppl"] = f"{p:.2f}"
        row[f"{k} vs fp32"] = "-" if base is None else f"{p / base[k] - 1:+.1%}"
        row[f"_{k}"] = p
    row["choice acc"] = f"{choice_accuracy(lambda x: model(x), tok.encode):.0%}"
    row["MB"] = f"{nbytes / 1e6:.1f}"
    return row


def other_bytes(model) -> int:
    """Bytes of what every variant keeps in float32: the embedding (tied head) and the norms."""
    n = model.tok_embd.data.nbytes + model.norm.data.nbytes
    return n + sum(b.attn_norm.data.nbytes + b.ffn_norm.data.nbytes for b in model.blocks)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fp32, RTN and the two W8A8 rows only")
    ap.add_argument("--only", default="", help="comma-separated method names to run (fp32, RTN 4-bit asym g64, ...)")
    ap.add_argument("--save", action="store_true", help=f"write the table to {RESULTS.relative_to(ROOT)}")
    ap.add_argument("--calib", type=lambda v: v.split(","), default=None,
                    help="GPTQ's calibration sets to run (docs,self,mix,mix x4,docs diag,docs+chat,docs+chat diag; default all)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where --save writes (to run parts in parallel)")
    ap.add_argument("--merge", nargs="+", type=Path, help="only join the rows of these saved tables into --out")
    args = ap.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    header = f"Made by `python benchmarks/compression_quality.py{' --quick' if args.quick else ''} --save` " \
             "(SmolLM2-135M-Instruct, CPU, float32).\n\n"
    if args.merge:
        merged = [row for path in args.merge for row in parse_table(path.read_text(encoding="utf-8"))]
        header = ("Made by `python benchmarks/compression_quality.py --save`, rows of partial runs (`--only`, `--calib`) "
                  "joined with `--merge` (SmolLM2-135M-Instruct, CPU, float32).\n\n")
        args.out.write_text(header + format_table(merged, COLUMNS) + "\n", encoding="utf-8")
        return 0

    t_start = time.perf_counter()
    model, tok, calib_text, texts = setup()
    targets = linear_weights(model)
    n_weights = sum(getattr(b, k).data.size for b, k in targets)
    bytes_4bit = n_weights * (BITS + (16 + 8) / GROUP) / 8 + other_bytes(model)   # fp16 scale + 8-bit zero a group
    bytes_8bit = sum(getattr(b, k).data.size + 2 * getattr(b, k).data.shape[1] for b, k in targets) + other_bytes(model)
    rows: list[dict] = []

    def wanted(name: str) -> bool:
        return not only or name in only

    def emit(row: dict) -> None:
        rows.append(row)
        print(f"[{time.perf_counter() - t_start:5.0f} s] " + " | ".join(str(row[c]) for c in COLUMNS), flush=True)
        if args.save:
            args.out.parent.mkdir(exist_ok=True)
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(header + format_table(rows, COLUMNS) + "\n", encoding="utf-8")
            tmp.replace(args.out)

    def with_weights(weights, name, calibration, nbytes):
        old = replace_weights(targets, lambda w, it=iter(weights): next(it))
        try:
            emit(score(model, tok, texts, name, calibration, nbytes, base))
        finally:
            restore_weights(targets, old)

    bytes_fp32 = sum(getattr(b, k).data.nbytes for b, k in targets) + other_bytes(model)
    if wanted("fp32"):
        base_row = score(model, tok, texts, "fp32", "-", bytes_fp32)
        base = {k: base_row[f"_{k}"] for k in texts}
        emit(base_row)
    else:                                                                   # only the reference perplexities
        base = {k: perplexity(model, ids, window=512) for k, ids in texts.items()}

    if wanted("RTN 4-bit asym g64"):
        with_weights([rtn_weight(getattr(b, k).data, BITS, GROUP, SYM) for b, k in targets],
                     "RTN 4-bit asym g64", "-", bytes_4bit)

    calib = {"docs": text_calibration(tok.encode, calib_text, 16, 128, seed=0)}

    def w8a8(name: str, alpha: float | None) -> None:
        if not wanted(name):
            return
        recs = None if alpha is None else record_inputs(model, calib["docs"])
        saved = [fold.block_arrays(b) for b in model.blocks]
        w8a8_apply(model, recs, alpha=alpha)
        try:
            emit(score(model, tok, texts, name, "-" if alpha is None else "docs", bytes_8bit, base))
        finally:
            for b, a in zip(model.blocks, saved):
                fold.set_block_arrays(b, a)

    w8a8("naive W8A8", None)
    w8a8("SmoothQuant W8A8 a=0.5", 0.5)
    if args.quick:
        print()
        print(format_table(rows, COLUMNS))
        return 0

    def runs(name: str, cname: str | None = None) -> bool:
        return wanted(name) and (cname is None or not args.calib or cname in args.calib)

    probe = [j for i in (0, 29) for j in range(4 * i, 4 * i + 4)]         # the weights of blocks 0 and 29
    held: dict = {}

    def held_out():
        """Recorders of the probe weights on 12 rows of the docs set (to fit) and on the other 4 (to measure)."""
        if not held:
            held["fit"] = record_inputs(model, calib["docs"][:12], [targets[j] for j in probe])
            held["val"] = record_inputs(model, calib["docs"][12:], [targets[j] for j in probe])
        return zip(probe, held["fit"], held["val"])

    damp = None                                                             # set by the search when a row uses it
    if any(runs("GPTQ sequential", c) for c in ("docs", "mix", "self", "mix x4")):
        # dampening by measurement: GPTQ fitted on 12 rows of the docs set, its output error measured on the other 4
        errs = np.array([damp_errors(np.ascontiguousarray(getattr(*targets[j]).data.T), f.hessian(), v.hessian(),
                                     DAMPS, bits=BITS, group_size=GROUP, symmetric=SYM, act_order=True)
                         for j, f, v in held_out()])                        # (8, len(DAMPS))
        mean_err = errs.mean(axis=0)
        damp = DAMPS[int(np.argmin(mean_err))]
        print("held-out output error of GPTQ by dampening (mean over the 8 weights of blocks 0 and 29): "
              + ", ".join(f"{d}: {e:.4f}" for d, e in zip(DAMPS, mean_err)) + f" -> damp {damp}", flush=True)

    def gptq(cname: str, sequential: bool, d: float, c: float = 0.0, key: str | None = None) -> None:
        name = "GPTQ sequential" if sequential else "GPTQ (old: float inputs)"
        if runs(name, key or cname):
            w = gptq_model(model, calib[cname], BITS, group_size=GROUP, symmetric=SYM, damp=d, sequential=sequential,
                           channel_damp=c)
            with_weights(w, name, f"{cname}, damp {d}" + (f" + {c} diag" if c else ""), bytes_4bit)

    gptq("docs", True, damp)
    gptq("docs", False, 0.01)
    if runs("GPTQ sequential", "mix") or runs("GPTQ sequential", "self") or runs("AWQ (RTN after scaling)"):
        t0 = time.perf_counter()
        calib["self"] = self_generated_calibration(model, 16, 128, seed=0)
        print(f"self-generated calibration: {calib['self'].size} tokens sampled in {time.perf_counter() - t0:.0f} s;"
              f" the first: {tok.decode(calib['self'][0, :40].tolist())!r}", flush=True)
        calib["mix"] = mixed_calibration(calib["docs"][:8], calib["self"][:8], seed=0)
    gptq("mix", True, damp)
    if wanted("AWQ (RTN after scaling)"):
        recs = record_inputs(model, calib["mix"])
        saved = [fold.block_arrays(b) for b in model.blocks]
        alphas = awq_apply(model, recs, bits=BITS, group_size=GROUP, symmetric=SYM)
        mean_alpha = {k: round(float(np.mean([a[k] for a in alphas])), 2) for k in fold.KINDS}
        print(f"AWQ: mean alpha per weight kind {mean_alpha}", flush=True)
        try:
            emit(score(model, tok, texts, "AWQ (RTN after scaling)", "mix", bytes_4bit, base))
        finally:
            for b, a in zip(model.blocks, saved):
                fold.set_block_arrays(b, a)
    gptq("self", True, damp)
    if runs("GPTQ sequential", "mix x4"):                                  # four times the tokens
        t0 = time.perf_counter()
        more_self = self_generated_calibration(model, 32, 128, seed=1)
        calib["mix x4"] = mixed_calibration(text_calibration(tok.encode, calib_text, 32, 128, seed=1), more_self, seed=0)
        print(f"mix x4: {calib['mix x4'].size} tokens ({time.perf_counter() - t0:.0f} s to sample)", flush=True)
        gptq("mix x4", True, damp)
    def channel_search() -> float:
        """``c`` of ``H + c diag H`` (damp 0.01) by the held-out measurement on the docs set (searched once)."""
        if "c" not in held:
            cerr = np.array([[damp_errors(np.ascontiguousarray(getattr(*targets[j]).data.T), f.hessian(),
                                          v.hessian(), [0.01], bits=BITS, group_size=GROUP, symmetric=SYM,
                                          act_order=True, channel_damp=c)[0] for c in CHANNEL_DAMPS]
                             for j, f, v in held_out()]).mean(axis=0)       # (len(CHANNEL_DAMPS),)
            held["c"] = CHANNEL_DAMPS[int(np.argmin(cerr))]
            print("held-out output error of GPTQ by channel damp c (damp 0.01, blocks 0 and 29): "
                  + ", ".join(f"{c}: {e:.4f}" for c, e in zip(CHANNEL_DAMPS, cerr)) + f" -> c {held['c']}", flush=True)
        return held["c"]

    if runs("GPTQ sequential", "docs diag"):                                 # the correlations shrunk
        gptq("docs", True, 0.01, channel_search(), key="docs diag")
    if runs("GPTQ sequential", "docs+chat") or runs("GPTQ sequential", "docs+chat diag"):
        t0 = time.perf_counter()
        calib["chat"] = chat_calibration(model, tok, 16, 128, seed=0)
        print(f"chat calibration: {calib['chat'].size} tokens in {time.perf_counter() - t0:.0f} s; the first: "
              f"{tok.decode(calib['chat'][0, :40].tolist())!r}", flush=True)
        calib["docs+chat"] = mixed_calibration(calib["docs"][:8], calib["chat"][:8], seed=0)
        if runs("GPTQ sequential", "docs+chat"):
            xdamp, xerr = cross_domain_damp(model, [calib["docs"], calib["chat"]], X_DAMPS, probe, bits=BITS,
                                            group_size=GROUP, symmetric=SYM, act_order=True)
            print("output error of GPTQ fitted on one text, measured on the other (docs <-> chat, blocks 0 and 29): "
                  + ", ".join(f"{d}: {e:.4f}" for d, e in zip(X_DAMPS, xerr)) + f" -> damp {xdamp}", flush=True)
            gptq("docs+chat", True, xdamp)
        if runs("GPTQ sequential", "docs+chat diag"):                        # both: varied text, shrunk correlations
            gptq("docs+chat", True, 0.01, channel_search(), key="docs+chat diag")

    print()
    print(format_table(rows, COLUMNS))
    print(f"\n{time.perf_counter() - t_start:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
