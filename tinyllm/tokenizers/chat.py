"""SmolLM2's chat format (ChatML), rendered without a template engine.

An instruction-tuned model was trained on conversations written in one fixed layout, and it only
answers well when the prompt uses the same layout. SmolLM2 uses ChatML: each message is

    <|im_start|>{role}\\n{content}<|im_end|>\\n

and the prompt ends with ``<|im_start|>assistant\\n`` so that the model's next tokens are the reply.
``<|im_start|>`` (id 1) and ``<|im_end|>`` (id 2) are single special tokens; generation stops at
``<|im_end|>``.

The model file stores this as a Jinja template (metadata key ``tokenizer.chat_template``). What it
renders, and so what :func:`apply_chat_template` reproduces:

* When the first message is not a system message, a default system message comes first:
  ``You are a helpful AI assistant named SmolLM, trained by Hugging Face`` (:data:`DEFAULT_SYSTEM_PROMPT`).
* Every message as above, in order, content as given (no stripping).
* ``<|im_start|>assistant\\n`` at the end when ``add_generation_prompt`` is true.
* An empty conversation renders nothing but that final line (the default system message is
  written inside the loop over messages, so it needs at least one message).
"""
from __future__ import annotations

import re

__all__ = ["DEFAULT_SYSTEM_PROMPT", "apply_chat_template", "default_system_prompt"]

DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# The newline after "system" is a real newline in SmolLM2's file, or a Jinja "\n" escape.
_DEFAULT_IN_TEMPLATE = re.compile(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>")


def default_system_prompt(chat_template: str) -> str | None:
    """The default system prompt written into a stored ChatML template, or None if it has none."""
    m = _DEFAULT_IN_TEMPLATE.search(chat_template)
    return m.group(1) if m else None


def _message(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def apply_chat_template(messages, add_generation_prompt: bool = True, system: str | None = None) -> str:
    """Render ``messages`` (a list of ``{"role": ..., "content": ...}`` dicts) as SmolLM2's template does.

    ``system`` replaces the default system prompt (it is written as the first message); it cannot be
    combined with a conversation that already starts with a system message. The result is text: encode
    it with ``BPETokenizer.encode(text)`` (special tokens allowed, the default) to get the prompt ids.
    """
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"messages must be a list of {{'role': str, 'content': str}} dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be a dict with str 'role' and 'content', got {m!r}")
    if system is not None:
        if not isinstance(system, str):
            raise TypeError(f"system must be a str or None, got {type(system).__name__}")
        if messages and messages[0]["role"] == "system":
            raise ValueError("system= was given but messages[0] is already a system message; pass one or the other")
        messages = [{"role": "system", "content": system}, *messages]
    parts = []
    if messages and messages[0]["role"] != "system":
        parts.append(_message("system", DEFAULT_SYSTEM_PROMPT))
    parts.extend(_message(m["role"], m["content"]) for m in messages)
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)
