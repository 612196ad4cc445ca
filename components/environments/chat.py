"""Rendering episodes through the model's own chat template.

Tool format: the embedded SmolLM2 template (and the tiny models' ChatML one) ignores ``tools=``
and renders a role "tool" message as ``<|im_start|>tool\\n{content}<|im_end|>\\n``; it declares
no tool-call format. For such templates the tool schemas go into the system message in the
Hermes/Qwen form (``<tools>...</tools>`` and ``<tool_call>`` instructions). A template that
mentions ``tools`` renders them itself through ``apply_chat_template(..., tools=...)``.

Tool results are appended as the template renders them: ``tool_turn_ids`` renders a probe
conversation with and without the tool messages and keeps the text the template adds after the
assistant's content (its end-of-turn marker, the tool messages and the next generation prompt),
so the tokens match what the template gives for the whole conversation.
"""

from __future__ import annotations

import json
from typing import Any

from components.environments.base import Message

HERMES_SYSTEM = (
    "You are a helpful assistant with access to tools. You may call one or more functions to assist "
    "with the user query. Function signatures are within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n"
    "For each function call, return a JSON object with the function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}}\n</tool_call>\nWhen you know the answer, reply with it without a tool call."
)
_PROBE = "\u2063probe\u2063"  # an assistant content that no template alters


def template_handles_tools(tokenizer: Any) -> bool:
    return "tools" in str(getattr(tokenizer, "chat_template", "") or "")


def with_tool_prompt(messages: list[Message], tools: list[dict[str, Any]],
                     system: str | None = None) -> list[Message]:
    """``messages`` with the tool block (``system`` or the Hermes one) in the system message."""
    if not tools:
        return list(messages)
    block = (system or HERMES_SYSTEM).format(tools="\n".join(json.dumps(t, separators=(", ", ": ")) for t in tools))
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": block + "\n\n" + messages[0]["content"]}] + list(messages[1:])
    return [{"role": "system", "content": block}] + list(messages)


def _ids(out: Any) -> list[int]:
    if isinstance(out, dict) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    return list(out)


def prompt_ids(tokenizer: Any, messages: list[Message], tools: list[dict[str, Any]],
               system: str | None = None) -> list[int]:
    """The opening prompt's token ids, ending in the assistant generation prompt."""
    if tools and template_handles_tools(tokenizer):
        return _ids(tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True))
    return _ids(tokenizer.apply_chat_template(with_tool_prompt(messages, tools, system), add_generation_prompt=True,
                                              tokenize=True))


def tool_turn_text(tokenizer: Any, tool_messages: list[Message]) -> str:
    """The text the template puts after an assistant turn's content when tool messages follow it."""
    base = [{"role": "user", "content": "q"}]
    opening = tokenizer.apply_chat_template(base, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(base + [{"role": "assistant", "content": _PROBE}] + list(tool_messages),
                                         add_generation_prompt=True, tokenize=False)
    head = opening + _PROBE
    if not full.startswith(head):
        raise ValueError("chat template does not render the assistant turn after its generation prompt; "
                         "multi-turn episodes need a template that appends turns")
    return full[len(head):]


def tool_turn_ids(tokenizer: Any, tool_messages: list[Message]) -> list[int]:
    """Token ids of ``tool_turn_text`` (end of the assistant turn, tool results, next generation prompt)."""
    return list(tokenizer(tool_turn_text(tokenizer, tool_messages), add_special_tokens=False)["input_ids"])
