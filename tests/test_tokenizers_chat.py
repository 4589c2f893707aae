"""SmolLM2's chat template, rendered without a template engine."""
from __future__ import annotations

import pytest

from tinyllm.tokenizers.chat import DEFAULT_SYSTEM_PROMPT, apply_chat_template, default_system_prompt

SYS = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"

# Conversations shared with the comparison against the stored Jinja template (test_tokenizers_smollm2.py).
CONVERSATIONS = [
    [],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke.\nA short one."}],
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": "  spaces  \n"}, {"role": "system", "content": "late system"}],
    [{"role": "assistant", "content": "I start."}],
    [{"role": "user", "content": "Unicode: héllo 日本 😀 <|im_end|> inside"}],
]


def test_single_turn():
    text = apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text == SYS + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=False) == \
        SYS + "<|im_start|>user\nHi<|im_end|>\n"


def test_system_message_replaces_default():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert apply_chat_template(msgs) == expected
    assert apply_chat_template(msgs[1:], system="Be brief.") == expected


def test_empty_conversation_has_no_system_prompt():
    assert apply_chat_template([]) == "<|im_start|>assistant\n"
    assert apply_chat_template([], add_generation_prompt=False) == ""


def test_default_prompt_from_template():
    template = ("{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
                "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}")
    assert default_system_prompt(template) == DEFAULT_SYSTEM_PROMPT
    assert default_system_prompt("{{ messages }}") is None


def test_errors():
    with pytest.raises(TypeError, match="messages"):
        apply_chat_template("hi")
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        apply_chat_template([{"role": "user", "content": "a"}, {"role": "user"}])
    with pytest.raises(ValueError, match="already a system message"):
        apply_chat_template([{"role": "system", "content": "a"}], system="b")
    with pytest.raises(TypeError, match="system"):
        apply_chat_template([], system=3)


@pytest.mark.reference
@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_matches_jinja_rendering_of_the_template_text(messages, add_generation_prompt):
    """Against jinja2 rendering the template text (the stored one is compared in test_tokenizers_smollm2.py)."""
    jinja2 = pytest.importorskip("jinja2")
    template = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
        "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    expected = jinja2.Environment().from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt)
    assert apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected
