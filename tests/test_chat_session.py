"""ChatSession keeps its KV cache across turns: the same tokens and logits as a fresh full
re-read of the conversation, only the new tokens prefilled, a growing cache, /reset, and a
reply cut by Ctrl-C that leaves the session usable."""
from __future__ import annotations

import re

import numpy as np
import pytest

from tinyllm.chat import ChatSession, ContextFullError
from tinyllm.generate import grow_cache, prefill, rewind_cache, stream_generate
from tinyllm.models.llama import Llama, LlamaConfig


class SpecialByteTokenizer:
    """Bytes as ids 3..258; the special tokens <|endoftext|>, <|im_start|>, <|im_end|> are ids 0, 1, 2."""

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    _split = re.compile("(" + "|".join(re.escape(s) for s in specials) + ")")

    def encode(self, text, allowed_special="all"):
        ids = []
        for part in self._split.split(text):
            ids += [self.specials.index(part)] if part in self.specials else [b + 3 for b in part.encode("utf-8")]
        return ids

    def decode(self, ids):
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def model():
    cfg = LlamaConfig(vocab_size=259, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64,
                      context_length=400)
    return Llama(cfg, rng=0)


def fresh_logits(model, ids):
    """Logits of the last position from a plain pass over all of ``ids`` (no cache)."""
    return model.forward(np.asarray([ids]), last_only=True)[0, -1]


def test_turns_equal_a_fresh_full_read(model):
    tok = SpecialByteTokenizer()
    chat = ChatSession(model, tok, system="Be brief.", max_new_tokens=12, cache_size=64)
    for turn, text in enumerate(["hello", "and again?", "a third, longer message than the others"]):
        before = list(chat.ids)
        cached_before = chat.cache.length if chat.cache is not None else 0
        reply = chat.send(text)
        prompt = chat.ids[:len(chat.ids) - chat.last_num_tokens]
        assert prompt[:len(before)] == before                       # the history is extended, never re-encoded
        fresh = list(stream_generate(model, prompt, 12, stop_ids=chat.stop_ids))
        assert chat.ids[len(prompt):] == fresh                        # same greedy reply as a fresh re-read
        assert reply == tok.decode(fresh)
        # the prefill read only what the cache did not hold: the template, the message, a reply token not fed
        assert chat.last_turn.prefill_tokens == len(prompt) - cached_before
        assert len(prompt) - len(before) <= chat.last_turn.prefill_tokens <= len(prompt) - len(before) + 1
        # the cache holds a prefix of ids; its next logits equal a fresh pass over ids
        n = chat.cache.length
        assert n <= len(chat.ids)
        cached = model.forward(np.asarray([chat.ids[n:n + 1]]), cache=chat.cache, last_only=True)[0, -1]
        np.testing.assert_allclose(cached, fresh_logits(model, chat.ids[:n + 1]), rtol=1e-4, atol=1e-5)
        rewind_cache(chat.cache, n)
    assert chat.cache.max_len > 64                                    # it grew past cache_size
    assert [m["role"] for m in chat.messages] == ["system"] + ["user", "assistant"] * 3


def test_prefill_counts_only_new_tokens(model):
    tok = SpecialByteTokenizer()
    chat = ChatSession(model, tok, max_new_tokens=5)
    chat.send("hi")
    first = chat.last_turn.prefill_tokens
    assert first == len(chat.ids) - chat.last_num_tokens             # turn 1 reads the whole template
    n_before = len(chat.ids)
    unfed = n_before - chat.cache.length                              # 1 when the reply hit max_new_tokens
    chat.send("hi")
    suffix = tok.encode("<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert chat.last_turn.prefill_tokens == len(suffix) + unfed
    assert chat.last_turn.ttft_s > 0 and chat.last_turn.new_tokens == chat.last_num_tokens


def test_reset_clears_the_conversation_and_the_cache(model):
    tok = SpecialByteTokenizer()
    chat = ChatSession(model, tok, system="sys", max_new_tokens=6)
    first = chat.send("hello")
    chat.send("more")
    cache = chat.cache
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "sys"}] and chat.ids == [] and cache.length == 0
    assert chat.send("hello") == first and chat.cache is cache       # same answer, same memory


def test_interrupted_reply_keeps_the_session(model):
    """Ctrl-C inside a decode step (the forward pass cut half way) and inside on_text."""
    tok = SpecialByteTokenizer()
    chat = ChatSession(model, tok, max_new_tokens=20)
    calls = {"n": 0}
    real = model._forward

    def breaking_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:                 # the third decode step: after valid/n_valid were written
            cache = kwargs.get("cache", args[1] if len(args) > 1 else None)
            cache.valid[:, cache.length] = True
            cache.n_valid += 1
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    model._forward = breaking_forward
    try:
        with pytest.raises(KeyboardInterrupt):
            chat.send("hello")
    finally:
        del model._forward
    assert chat.messages[-1]["role"] == "assistant" and chat.last_num_tokens == 3
    assert chat.cache.length <= len(chat.ids) and int(chat.cache.n_valid[0]) == chat.cache.length

    pieces = []

    def stop_after_two(piece):
        pieces.append(piece)
        if len(pieces) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        chat.send("next", on_text=stop_after_two)
    # the session goes on: the next reply is what a fresh read of the whole conversation gives
    chat.send("go on")
    prompt = chat.ids[:len(chat.ids) - chat.last_num_tokens]
    assert chat.ids[len(prompt):] == list(stream_generate(model, prompt, 20, stop_ids=chat.stop_ids))


def test_context_limit(model):
    tok = SpecialByteTokenizer()
    chat = ChatSession(model, tok, max_new_tokens=100)
    chat.send("x" * 250)                     # 400-token context: the reply is cut where it ends
    assert chat.cache.length == chat.cache.max_len == 400 and len(chat.ids) == 401   # the last token never fed
    with pytest.raises(ContextFullError, match="reset"):
        chat.send("more")
    assert chat.messages[-1]["role"] == "assistant"          # nothing was changed by the failed turn
    chat.reset()
    chat.send("fits again")


def test_grow_and_rewind_cache(model):
    ids = np.arange(3, 13)[None]
    logits, cache = prefill(model, ids, max_len=10)
    big = grow_cache(model, cache, 20)
    assert big.max_len == 20 and big.length == 10
    nxt = model.forward(np.asarray([[5]]), cache=big, last_only=True)[0, -1]
    np.testing.assert_allclose(nxt, fresh_logits(model, list(range(3, 13)) + [5]), rtol=1e-4, atol=1e-5)
    rewind_cache(big, 4)
    assert big.length == 4 and int(big.n_valid[0]) == 4 and not big.valid[0, 4:].any()
    again = model.forward(np.asarray([[7]]), cache=big, last_only=True)[0, -1]
    np.testing.assert_allclose(again, fresh_logits(model, [3, 4, 5, 6, 7]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="smaller"):
        grow_cache(model, big, 3)
    with pytest.raises(ValueError, match="length"):
        rewind_cache(big, 21)


def test_smollm2_turns_equal_a_fresh_read_of_the_rendered_conversation():
    """With the real BPE tokenizer: the ids the session built equal the whole conversation rendered and
    encoded afresh, and each reply equals greedy decoding from that fresh encoding."""
    from tinyllm.models.smollm2 import ModelNotInstalledError, load_smollm2
    from tinyllm.tokenizers.chat import apply_chat_template

    try:
        smol, tok = load_smollm2("cpu")
    except ModelNotInstalledError as exc:
        pytest.skip(str(exc))
    chat = ChatSession(smol, tok, max_new_tokens=10)
    for text in ("What is the capital of France?", "And of Italy?"):
        fresh = tok.encode(apply_chat_template(chat.messages + [{"role": "user", "content": text}]))
        chat.send(text)
        assert chat.ids[:len(fresh)] == fresh
        assert chat.ids[len(fresh):] == list(stream_generate(smol, fresh, 10, stop_ids=chat.stop_ids))


def test_stream_generate_continues_a_cache(model):
    prompt = [5, 6, 7, 8, 9, 10]
    whole = list(stream_generate(model, prompt, 8))
    _, cache = prefill(model, [prompt[:4]], max_len=20)
    assert list(stream_generate(model, prompt, 8, cache=cache)) == whole      # reads only tokens 4 and 5
    assert cache.length == len(prompt) + 7                                     # the last token is not fed
    with pytest.raises(ValueError, match="fewer than the 6 prompt tokens"):
        list(stream_generate(model, prompt, 2, cache=cache))
    with pytest.raises(ValueError, match="make room with grow_cache"):
        list(stream_generate(model, prompt, 30, cache=prefill(model, [prompt[:2]], max_len=20)[1]))
    with pytest.raises((ValueError, TypeError)):
        list(stream_generate(model, prompt, 2, cache=prefill(model, [prompt[:2]], max_len=20)[1], cuda_graph=True))


def test_speculative_chat_gives_the_greedy_replies(model, monkeypatch):
    """With prompt-lookup drafts the session's replies, ids and cache equal plain greedy decoding's, turn by
    turn; drafts were both accepted and rejected."""
    from tinyllm import speculative
    from tinyllm.speculative import PromptLookup, SpecStats

    stats = SpecStats()
    real = speculative.speculative_generate
    monkeypatch.setattr("tinyllm.chat.speculative_generate", lambda *a, **kw: real(*a, **kw, stats=stats))
    class Noisy(PromptLookup):              # every other draft ends in a wrong token: rejections too
        calls = 0

        def propose(self, context, k):
            draft, self.calls = super().propose(context, k), self.calls + 1
            return draft[:-1] + [(draft[-1] + 1) % 259] if draft and self.calls % 2 else draft

    tok = SpecialByteTokenizer()
    plain = ChatSession(model, tok, system="Copy.", max_new_tokens=40, cache_size=64)
    fast = ChatSession(model, tok, system="Copy.", max_new_tokens=40, cache_size=64, drafter=Noisy(3, 1),
                       draft_k=6)
    for text in ["abcabcabcabc", "hello hello hello", "0123456789 0123456789"]:
        assert fast.send(text) == plain.send(text)
        assert fast.ids == plain.ids and fast.last_turn.prefill_tokens == plain.last_turn.prefill_tokens
        assert fast.cache.length == plain.cache.length
    assert stats.verify_passes > 0 and 0 < stats.accepted < stats.drafted
    fast.reset()
    assert fast.send("abcabc") == ChatSession(model, tok, system="Copy.", max_new_tokens=40).send("abcabc")


@pytest.mark.parametrize("options", [dict(temperature=0.7), dict(repetition_penalty=1.3), dict(draft_k=0)])
def test_speculative_chat_refuses_sampling(model, options):
    from tinyllm.speculative import PromptLookup

    with pytest.raises(ValueError, match="drafter=None|draft_k must be an int >= 1"):
        ChatSession(model, SpecialByteTokenizer(), drafter=PromptLookup(), **options)
