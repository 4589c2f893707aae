"""tinyllm.generate's one generation loop: batches, streams and per-row stops are the same steps."""
from __future__ import annotations

import numpy as np
import pytest

from tinyllm.generate import STOPPED, generate_batch, generation_steps, prefill, stream_generate
from tinyllm.models.llama import Llama, LlamaConfig

TINY = LlamaConfig(vocab_size=97, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, head_dim=8, ffn_dim=80,
                   rope_base=10000.0, norm_eps=1e-5, context_length=128)
PROMPTS = [[5, 17, 3], [40, 2, 9, 11, 60, 7, 1, 8, 30], [1, 96, 50, 4, 22, 13], [70]]


@pytest.fixture(scope="module")
def model():
    return Llama(TINY, rng=0)


def test_batch_and_stream_agree_token_for_token_on_greedy(model):
    free = [list(stream_generate(model, p, 12)) for p in PROMPTS]
    assert generate_batch(model, PROMPTS, 12) == free
    # a stop token that ends each row at a different step (or never): the same cut rows
    stop = [free[0][4], free[1][1]]
    streamed = [list(stream_generate(model, p, 12, stop_ids=stop)) for p in PROMPTS]
    assert generate_batch(model, PROMPTS, 12, stop_ids=stop) == streamed
    assert len(streamed[0]) <= 4 and len(streamed[1]) <= 1
    assert streamed != free


def test_generation_steps_yields_b_ids_and_marks_stopped_rows(model):
    free = generate_batch(model, PROMPTS, 8)
    stop = free[2][3]
    steps = list(generation_steps(model, PROMPTS, 8, stop_ids=[stop]))
    assert all(s.shape == (len(PROMPTS),) and s.dtype == np.int64 for s in steps)
    for b, row in enumerate(np.stack(steps, axis=1)):                      # (B, steps)
        cut = free[b].index(stop) if stop in free[b] else len(free[b])
        assert row[:cut].tolist() == free[b][:cut]
        assert (row[cut:] == STOPPED).all()                               # once stopped, always STOPPED
    # every row stopped: the loop ends without yielding
    firsts = [f[0] for f in free]
    assert list(generation_steps(model, PROMPTS, 8, stop_ids=firsts)) == []
    assert list(generation_steps(model, PROMPTS, 0)) == []


def test_a_closed_loop_leaves_the_tokens_read_in_the_cache(model):
    prompt = PROMPTS[1]
    _, cache = prefill(model, [prompt[:5]], max_len=len(prompt) + 10)
    steps = generation_steps(model, prompt, 10, cache=cache)
    first = [int(next(steps)[0]) for _ in range(3)]
    assert cache.length == len(prompt) + 2                    # the third token is chosen, not fed
    steps.close()
    assert cache.length == len(prompt) + 2
    assert first == list(stream_generate(model, prompt, 3))


def test_generation_steps_rejects_bad_arguments(model):
    _, cache = prefill(model, [PROMPTS[0][:2]], max_len=20)
    with pytest.raises(ValueError, match="continues one prompt"):
        next(generation_steps(model, PROMPTS[:2], 4, cache=cache))
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0"):
        next(generation_steps(model, PROMPTS, -1))
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0"):
        next(generation_steps(model, PROMPTS, 2.5))
    with pytest.raises(ValueError, match="non-empty"):
        next(generation_steps(model, [[1, 2], []], 4))
