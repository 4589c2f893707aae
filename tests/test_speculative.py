"""Speculative decoding with greedy verification gives exactly the tokens of plain greedy decoding,
with either drafter, on a random small Llama and on SmolLM2, for several prompts and draft lengths."""
from __future__ import annotations

import numpy as np
import pytest

from tinyllm.generate import stream_generate
from tinyllm.models.llama import Llama, LlamaConfig
from tinyllm.speculative import EarlyExitDraft, PromptLookup, SpecStats, speculative_generate


@pytest.fixture(scope="module")
def model():
    cfg = LlamaConfig(vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64,
                      context_length=256)
    return Llama(cfg, rng=1)


class Oracle:
    """Proposes the true greedy continuation with every ``wrong``-th draft token changed: accepted
    prefixes of every length, and rejections at every position, are exercised."""

    def __init__(self, prompt, greedy, wrong):
        self.full, self.wrong, self.calls = list(prompt) + list(greedy), wrong, 0

    def propose(self, context, k):
        self.calls += 1
        start = len(context)
        draft = self.full[start:start + k]
        if self.wrong and draft and self.calls % self.wrong == 0:
            j = self.calls % len(draft)
            draft[j] = (draft[j] + 1) % 64
        return draft


PROMPTS = [[5, 6, 7, 8, 5, 6, 7], [1] * 12, list(range(3, 40)), [9, 2, 9, 2, 9]]


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("p", range(len(PROMPTS)))
def test_same_tokens_as_greedy_random_model(model, p, k):
    prompt = PROMPTS[p]
    greedy = list(stream_generate(model, prompt, 40))
    for drafter in (PromptLookup(3, 1), EarlyExitDraft(model, 1), EarlyExitDraft(model, 3),
                    Oracle(prompt, greedy, 0), Oracle(prompt, greedy, 2)):
        stats = SpecStats()
        got = list(speculative_generate(model, prompt, 40, drafter, k=k, stats=stats, min_gain=0.0))
        assert got == greedy, type(drafter).__name__
        assert stats.accepted <= stats.drafted and stats.verify_passes + stats.plain_steps <= 40


def test_accepted_drafts_save_passes(model):
    prompt = PROMPTS[2]
    greedy = list(stream_generate(model, prompt, 40))
    stats = SpecStats()
    assert list(speculative_generate(model, prompt, 40, Oracle(prompt, greedy, 0), k=8, stats=stats)) == greedy
    assert stats.acceptance == 1.0 and stats.verify_passes == 5 and stats.plain_steps == 0   # 9 tokens a pass
    full = SpecStats()        # the draft with all the layers is the model itself: (nearly) everything accepted
    assert list(speculative_generate(model, prompt, 40, EarlyExitDraft(model, 3), k=4, stats=full)) == greedy
    assert full.acceptance > 0.9


def test_stop_tokens_and_limits(model):
    prompt = PROMPTS[0]
    greedy = list(stream_generate(model, prompt, 30))
    stop = greedy[7]
    want = greedy[:greedy.index(stop)]
    assert list(speculative_generate(model, prompt, 30, Oracle(prompt, greedy, 0), k=8, stop_ids=[stop])) == want
    for n in (0, 1, 2, 9):
        assert list(speculative_generate(model, prompt, n, Oracle(prompt, greedy, 0), k=8)) == greedy[:n]
    with pytest.raises(ValueError, match="k >= 1"):
        list(speculative_generate(model, prompt, 5, PromptLookup(), k=0))
    with pytest.raises(ValueError, match="min_ngram"):
        PromptLookup(2, 3)
    with pytest.raises(ValueError, match="n_layers"):
        EarlyExitDraft(model, 4)


def test_backoff_when_drafts_fail(model):
    """A drafter that is always wrong: drafting pauses, so most tokens come from plain steps."""

    class Wrong:
        def propose(self, context, k):
            return [63] * k

    prompt = PROMPTS[3]
    greedy = list(stream_generate(model, prompt, 60))
    if 63 in greedy:
        pytest.skip("token 63 is in the greedy text")
    stats = SpecStats()
    assert list(speculative_generate(model, prompt, 60, Wrong(), k=4, stats=stats)) == greedy
    assert stats.accepted == 0 and stats.verify_passes < 12 and stats.plain_steps > 45
    short = SpecStats()                  # pauses of one step at most: a probe every other step
    assert list(speculative_generate(model, prompt, 60, Wrong(), k=4, stats=short, max_backoff=1)) == greedy
    assert short.verify_passes > 25
    never = SpecStats()                  # no draft token is that sure: the early-exit draft proposes nothing
    assert list(speculative_generate(model, prompt, 60, EarlyExitDraft(model, 1, min_confidence=1.0), k=4,
                                     stats=never)) == greedy
    assert never.drafted == 0 and never.plain_steps == 59


def test_prompt_lookup_proposes_the_latest_match():
    look = PromptLookup(max_ngram=2, min_ngram=1)
    assert look.propose([1, 2, 3, 9, 1, 2, 4, 5, 1, 2], 3) == [4, 5, 1]      # the 2-gram (1, 2), latest
    assert look.propose([7, 8, 9, 8], 5) == [9, 8]                             # the 1-gram 8
    assert look.propose([1, 2, 3], 4) == [] and look.propose([5], 2) == []
    assert PromptLookup(3, 3).propose([1, 2, 3, 4, 2, 3], 2) == []


def test_same_tokens_as_greedy_smollm2():
    from tinyllm.models.smollm2 import ModelNotInstalledError, load_smollm2
    from tinyllm.tokenizers.chat import apply_chat_template

    try:
        smol, tok = load_smollm2("cpu")
    except ModelNotInstalledError as exc:
        pytest.skip(str(exc))
    code = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n"
    prompts = [tok.encode(apply_chat_template([{"role": "user", "content": f"Rename add to plus:\n{code}"}])),
               tok.encode("The capital of France is"),
               tok.encode("one two three four one two three four one two")]
    eos = [tok.encode("<|im_end|>")[0]]
    draft = EarlyExitDraft(smol, 8)
    for i, prompt in enumerate(prompts):
        greedy = list(stream_generate(smol, prompt, 24, stop_ids=eos))
        for drafter, k in ((PromptLookup(), 8), (PromptLookup(3, 1), 3), (draft, 4)):
            if i and drafter is draft:
                continue
            got = list(speculative_generate(smol, prompt, 24, drafter, k=k, stop_ids=eos, min_gain=0.0))
            assert got == greedy, (i, type(drafter).__name__, k)


def test_continues_a_cache(model):
    """Given a cache holding part of the prompt (a chat's history), only the rest is read: same tokens."""
    from tinyllm.generate import prefill

    prompt = PROMPTS[0] * 3
    greedy = list(stream_generate(model, prompt, 30))
    _, cache = prefill(model, [prompt[:10]], max_len=len(prompt) + 29)
    stats = SpecStats()
    assert list(speculative_generate(model, prompt, 30, PromptLookup(3, 1), k=4, cache=cache, stats=stats,
                                     min_gain=0.0)) == greedy
    assert stats.verify_passes > 0 and len(prompt) + 29 >= cache.length >= len(prompt) + 29 - 4
    with pytest.raises(ValueError, match="fewer than the 21 prompt tokens"):
        list(speculative_generate(model, prompt, 2, PromptLookup(), cache=cache))
    with pytest.raises(ValueError, match="make room with grow_cache"):
        list(speculative_generate(model, prompt, 40, PromptLookup(), cache=prefill(model, [prompt[:2]], max_len=30)[1]))
