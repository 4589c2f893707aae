"""tinyllm on CuPy against PyTorch / HF transformers on the same GPU, in one process.

    python benchmarks/gpu_bench.py [--quick] [--summary FILE]

GPU only: on a machine without a usable GPU it prints why and exits with status 2
(``benchmarks/cpu_threads.py`` measures the CPU). Everything is timed with CUDA
events recorded on each library's stream around ``repeats`` calls, then the end
event is synchronised, so the figure is GPU time including the gaps in which the
GPU waits for Python to launch the next kernel, and never the time of an
asynchronous call returning early. Measurements:

- SmolLM2-135M (architecture of the real model; random float32 weights in both
  libraries, since speed does not depend on the values - the logit parity with
  the real weights is in ``tests/test_gpu_parity.py``):
  decode tokens/s at batch 1, throughput (tokens/s) at batch 32, prefill tokens/s
  of a 512-token prompt; tinyllm (with the fused RMSNorm/RoPE/SwiGLU/softmax kernels
  of ``tinyllm.kernels`` off and on, ``kernels.set_fused``) against ``transformers.LlamaForCausalLM``;
  batch-1 decode also with the step captured as a CUDA graph (``tinyllm.generate.CudaGraphDecoder``);
- batch-1 decode with the block matrices kept as Q4_1 blocks (head Q8_0) multiplied by the
  fused dequantise-and-multiply kernel, against float32 weights (with and without the graph);
- the fused kernels against their CuPy reference (several launches), and the fused
  Q8_0 / Q4_1 dequantise-and-multiply against a float32 matrix-vector product;
- training tokens/s of tinyllm's GPT against the PyTorch eager model of
  ``benchmarks/train_throughput.py`` (imported, built on the GPU), AdamW both;
- float16 / bfloat16 matrix products: speed and relative error against float64.

Ratios are tinyllm / peer: above 1 means tinyllm is faster.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tinyllm import backend  # noqa: E402

SUMMARY: list[tuple[str, float, str]] = []  # (metric, value, unit) for the one-table summary


def record(metric: str, value: float, unit: str) -> None:
    SUMMARY.append((metric, float(value), unit))
    print(f"  {metric:<52} {value:12.3f} {unit}")


# ---------------------------------------------------------------------------
# timing with CUDA events
# ---------------------------------------------------------------------------
def cupy_time(fn, repeats: int, warmup: int = 2) -> float:
    """Seconds per call of ``fn`` on CuPy's current stream, from CUDA events."""
    import cupy as cp

    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) / 1e3 / repeats


def torch_time(fn, repeats: int, warmup: int = 2) -> float:
    """Seconds per call of ``fn`` on torch's current CUDA stream, from CUDA events."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats


def free_gpu_memory() -> None:
    import cupy as cp

    cp.get_default_memory_pool().free_all_blocks()
    try:
        import torch

        torch.cuda.empty_cache()
    except ImportError:
        pass


@contextlib.contextmanager
def fused(enabled: bool):
    """The model always calls tinyllm.kernels; this switches the fused CuPy kernels on (or off:
    CuPy then runs the NumPy reference code, several launches per function)."""
    from tinyllm import kernels

    previous = kernels.set_fused(enabled)
    try:
        yield
    finally:
        kernels.set_fused(previous)


# ---------------------------------------------------------------------------
# SmolLM2: decode, batch throughput, prefill
# ---------------------------------------------------------------------------
def hf_llama(cfg):
    """transformers' Llama with the same hyper-parameters, float32, on the GPU, eval mode."""
    import torch
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    hf_cfg = HFConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
                      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                      num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, rope_theta=cfg.rope_base,
                      rms_norm_eps=cfg.norm_eps, max_position_embeddings=cfg.context_length,
                      tie_word_embeddings=cfg.tie_embeddings)
    torch.manual_seed(0)
    return LlamaForCausalLM(hf_cfg).to(device="cuda", dtype=torch.float32).eval()


def tinyllm_decode(model, batch: int, prompt_len: int, steps: int, *, cuda_graph: bool = False) -> float:
    """Tokens/s of cached greedy decoding, ``batch`` rows (all tokens generated count).

    ``cuda_graph``: each step is one launch of a captured CUDA graph (``CudaGraphDecoder``);
    its first two steps (warm-up and capture) fall in the untimed warm-up."""
    import cupy as cp

    from tinyllm.generate import CudaGraphDecoder, decode_step, prefill

    ids = cp.asarray(np.random.default_rng(0).integers(0, model.config.vocab_size, (batch, prompt_len)))
    warmup = 2
    logits, cache = prefill(model, ids, max_new_tokens=warmup + steps + 1)
    step_fn = CudaGraphDecoder(model, cache).step if cuda_graph else (lambda nxt: decode_step(model, cache, nxt))
    state = {"nxt": logits.argmax(-1)}                                          # (B,) on the GPU

    def step():
        state["nxt"] = step_fn(state["nxt"]).argmax(-1)

    return batch / cupy_time(step, steps, warmup=warmup)


def hf_decode(model, batch: int, prompt_len: int, steps: int) -> float:
    import torch

    ids = torch.as_tensor(np.random.default_rng(0).integers(0, model.config.vocab_size, (batch, prompt_len)), device="cuda")
    with torch.inference_mode():
        out = model(ids, use_cache=True, logits_to_keep=1)
        # transformers 5 calls the cache `cache` (argument and output); 4.x called it `past_key_values`
        kw = "cache" if "cache" in out.keys() else "past_key_values"
        state = {"cache": out[kw], "nxt": out.logits[:, -1:].argmax(-1)}             # (B, 1)

        def step():
            o = model(state["nxt"], use_cache=True, logits_to_keep=1, **{kw: state["cache"]})
            state["cache"], state["nxt"] = o[kw], o.logits[:, -1:].argmax(-1)

        return batch / torch_time(step, steps)


def tinyllm_prefill(model, length: int, repeats: int) -> float:
    import cupy as cp

    from tinyllm.generate import prefill

    ids = cp.asarray(np.random.default_rng(1).integers(0, model.config.vocab_size, (1, length)))
    return length / cupy_time(lambda: prefill(model, ids, max_new_tokens=1), repeats)


def hf_prefill(model, length: int, repeats: int) -> float:
    import torch

    ids = torch.as_tensor(np.random.default_rng(1).integers(0, model.config.vocab_size, (1, length)), device="cuda")
    with torch.inference_mode():
        return length / torch_time(lambda: model(ids, use_cache=True, logits_to_keep=1), repeats)


def bench_smollm2(quick: bool) -> None:
    from tinyllm.models.llama import Llama, LlamaConfig

    cfg = LlamaConfig()
    print("SmolLM2-135M architecture, float32, random weights (tinyllm on CuPy vs transformers on torch)")
    steps = 16 if quick else 64
    ours = Llama(cfg, rng=0).to("gpu")
    results = {}
    for label, on in (("tinyllm (reference code)", False), ("tinyllm+fused", True)):
        with fused(on):
            results[label] = (tinyllm_decode(ours, 1, 16, steps), tinyllm_decode(ours, 32, 16, steps // 2),
                              tinyllm_prefill(ours, 512, 3 if quick else 10))
    with fused(True):
        graph_decode = tinyllm_decode(ours, 1, 16, steps, cuda_graph=True)
    del ours
    free_gpu_memory()
    theirs = hf_llama(cfg)
    results["transformers"] = (hf_decode(theirs, 1, 16, steps), hf_decode(theirs, 32, 16, steps // 2),
                               hf_prefill(theirs, 512, 3 if quick else 10))
    del theirs
    free_gpu_memory()
    ours_labels = [label for label in results if label != "transformers"]
    for i, what in enumerate(("decode batch 1", "decode batch 32", "prefill 512")):
        for label in results:
            record(f"SmolLM2 {what}: {label}", results[label][i], "tok/s")
        for label in ours_labels:
            record(f"SmolLM2 {what}: {label} / transformers", results[label][i] / results["transformers"][i], "x")
    record("SmolLM2 decode batch 1: tinyllm+fused+CUDA graph", graph_decode, "tok/s")
    record("SmolLM2 decode batch 1: CUDA graph / no graph (fused)", graph_decode / results["tinyllm+fused"][0], "x")
    record("SmolLM2 decode batch 1: tinyllm+fused+CUDA graph / transformers",
           graph_decode / results["transformers"][0], "x")


def bench_quantized(quick: bool) -> None:
    """Batch-1 decode with the block matrices kept as Q4_1 (head Q8_0), fused kernel, against float32."""
    from tinyllm.models.llama import Llama, LlamaConfig

    print("SmolLM2-135M architecture, random weights: Q4_1 blocks (fused dequantise-and-multiply) vs float32")
    steps = 16 if quick else 64
    model = Llama(LlamaConfig(), rng=0).to("gpu")
    with fused(True):
        fp32 = {g: tinyllm_decode(model, 1, 16, steps, cuda_graph=g) for g in (False, True)}
    model.quantize_weights("Q4_1", head="Q8_0")               # RTN (on the host), blocks stay on the GPU
    with fused(True):
        q4 = {g: tinyllm_decode(model, 1, 16, steps, cuda_graph=g) for g in (False, True)}
    weights = sum(p.data.nbytes for p in model.parameters())
    del model
    free_gpu_memory()
    for g, name in ((False, ""), (True, " + CUDA graph")):
        record(f"decode batch 1 float32{name}", fp32[g], "tok/s")
        record(f"decode batch 1 Q4_1 fused{name}", q4[g], "tok/s")
        record(f"decode batch 1 Q4_1 / float32{name}", q4[g] / fp32[g], "x")
    record("Q4_1 model: bytes of weights (embedding float32 for the lookup)", weights / 1e6, "MB")


# ---------------------------------------------------------------------------
# fused kernels: one launch against the reference's several
# ---------------------------------------------------------------------------
def bench_kernels(quick: bool) -> None:
    import cupy as cp

    from tinyllm import kernels
    from tinyllm.io import ggml

    print("fused kernels vs the CuPy reference (same function, fusion off)")
    rng = np.random.default_rng(0)
    r = 50 if quick else 200

    def randn(*shape):
        return cp.asarray(rng.standard_normal(shape).astype(np.float32))

    x1, w = randn(1, 1, 576), randn(576)
    xq, cos, sin = randn(1, 1, 12, 64), randn(1, 1, 1, 32), randn(1, 1, 1, 32)
    g, u = randn(1, 1, 1536), randn(1, 1, 1536)
    att = randn(1, 3, 3, 1, 512)
    cases = {"rms_norm (1,1,576)": lambda: kernels.rms_norm(x1, w, 1e-5),
             "rope (1,1,12,64)": lambda: kernels.rope(xq, cos, sin),
             "swiglu (1,1,1536)": lambda: kernels.swiglu(g, u),
             "softmax (1,3,3,1,512)": lambda: kernels.softmax(att)}
    for name, fn in cases.items():
        kernels.set_fused(False)
        t_ref = cupy_time(fn, r)
        kernels.set_fused(True)
        t_fused = cupy_time(fn, r)
        record(f"kernel {name}: fused time", t_fused * 1e6, "us")
        record(f"kernel {name}: reference / fused", t_ref / t_fused, "x")
    for OUT, IN in ((1536 * 2, 576), (49152, 576)):
        w32 = rng.standard_normal((OUT, IN)).astype(np.float32) * 0.05
        x = cp.asarray(rng.standard_normal((1, IN)).astype(np.float32))
        dense = cp.asarray(w32)
        t_dense = cupy_time(lambda: x @ dense.T, r)
        for qtype in kernels.QUANT_TYPES:
            blocks = cp.asarray(ggml.quantize(w32, qtype))
            t_q = cupy_time(lambda: kernels.q_matvec(x, blocks, qtype), r)
            record(f"q_matvec {qtype.name} ({OUT},{IN}) batch 1: GB/s of weights", blocks.nbytes / t_q / 1e9, "GB/s")
            record(f"q_matvec {qtype.name} ({OUT},{IN}) batch 1: float32 / fused time", t_dense / t_q, "x")


# ---------------------------------------------------------------------------
# GPT training
# ---------------------------------------------------------------------------
def bench_training(quick: bool) -> None:
    import cupy as cp
    import torch

    from train_throughput import build_torch  # h4's PyTorch eager GPT, imported not copied

    from tinyllm.models.gpt import GPT, GPTConfig
    from tinyllm.optim import AdamW

    torch.backends.cuda.matmul.allow_tf32 = False                # float32 on both sides
    print("GPT training step (forward + backward + AdamW), float32")
    configs = {"bench B=16": (GPTConfig.preset("bench"), 16),
               "6L-384 T=256 B=32": (GPTConfig.preset("bench", n_layers=6, n_heads=6, dim=384, context_length=256), 32)}
    steps = 5 if quick else 20
    for name, (cfg, B) in configs.items():
        T = cfg.context_length
        rng = np.random.default_rng(0)
        x = rng.integers(0, cfg.vocab_size, size=(B, T))
        y = rng.integers(0, cfg.vocab_size, size=(B, T))
        model = GPT(cfg, rng=0).to("gpu")
        opt = AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        gx, gy = cp.asarray(x), cp.asarray(y)

        def ours():
            model.zero_grad()
            model.loss(gx, gy)
            model.backward()
            opt.step()

        t_ours = cupy_time(ours, steps)
        del model, opt
        previous = torch.get_default_device()
        torch.set_default_device("cuda")                         # build_torch makes its model on the GPU
        try:
            theirs = build_torch(cfg, 1e-3)
            tx, ty = torch.as_tensor(x, device="cuda"), torch.as_tensor(y, device="cuda")
            t_theirs = torch_time(lambda: theirs(tx, ty), steps)
        finally:
            torch.set_default_device(previous)
        free_gpu_memory()
        record(f"GPT train {name}: tinyllm", B * T / t_ours, "tok/s")
        record(f"GPT train {name}: pytorch eager", B * T / t_theirs, "tok/s")
        record(f"GPT train {name}: tinyllm / pytorch", t_theirs / t_ours, "x")


# ---------------------------------------------------------------------------
# reduced precision
# ---------------------------------------------------------------------------
def bench_precision(quick: bool) -> None:
    import torch

    print("matrix product n x n: speed and relative error ||C - C64|| / ||C64|| (torch, cuBLAS)")
    n = 2048 if quick else 4096
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(n, n, device="cuda", generator=g)
    b = torch.randn(n, n, device="cuda", generator=g)
    ref = a.double() @ b.double()
    base = None
    for label, dtype, tf32 in (("float32", torch.float32, False), ("tf32", torch.float32, True),
                               ("float16", torch.float16, False), ("bfloat16", torch.bfloat16, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        aa, bb = a.to(dtype), b.to(dtype)
        t = torch_time(lambda: aa @ bb, 5 if quick else 20)
        err = float(torch.linalg.norm((aa @ bb).double() - ref) / torch.linalg.norm(ref))
        base = base or t
        record(f"matmul {n} {label}: TFLOP/s", 2 * n ** 3 / t / 1e12, "TFLOP/s")
        record(f"matmul {n} {label}: relative error", err, "")
        record(f"matmul {n} {label}: speed-up over float32", base / t, "x")
    torch.backends.cuda.matmul.allow_tf32 = False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (used by scripts/gpu_check.sh)")
    ap.add_argument("--summary", help="also write 'metric<TAB>value<TAB>unit' lines to this file")
    parts = ["smollm2", "quantized", "kernels", "training", "precision"]
    ap.add_argument("--only", nargs="+", choices=parts, default=parts)
    args = ap.parse_args(argv)
    if not backend.gpu_available():
        print(f"gpu_bench: no usable GPU here ({backend.gpu_problem()}). This benchmark measures the GPU "
              f"only; run benchmarks/cpu_threads.py for the CPU.", file=sys.stderr)
        return 2
    import cupy as cp

    print(backend.describe("gpu"))
    print(f"CuPy {cp.__version__}, CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}")
    t0 = time.perf_counter()
    benches = {"smollm2": bench_smollm2, "quantized": bench_quantized, "kernels": bench_kernels,
               "training": bench_training, "precision": bench_precision}
    failed = []
    for name in args.only:
        try:
            benches[name](args.quick)
        except Exception as exc:  # one failing part must not hide the others' numbers
            failed.append(name)
            print(f"  {name} FAILED: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        free_gpu_memory()
    if args.summary:
        tmp = args.summary + ".tmp"
        with open(tmp, "w") as f:
            for metric, value, unit in SUMMARY:
                f.write(f"{metric}\t{value:.4g}\t{unit}\n")
            for name in failed:
                f.write(f"{name}\tFAILED\t\n")
        Path(tmp).replace(args.summary)
    print(f"gpu_bench: {time.perf_counter() - t0:.0f} s" + (f", failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
