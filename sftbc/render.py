"""Chat template, action parsing, and tokenization with the assistant-only loss mask.

One ChatML template serves every student: the tiny built-in model and SmolLM2 (whose own template
has no tool support). Tool calls are rendered Hermes-style, `<tool_call>{json}</tool_call>`, which
is also what `parse_action` reads back from generated text. The assistant turn, its end-of-turn
token included, sits inside `{% generation %}` so `return_assistant_tokens_mask` (ours and TRL's
`assistant_only_loss`) trains exactly the actions, never the prompt or the tool outputs.
"""

from __future__ import annotations

import json
import re

from sftbc.types import Message, ToolCall

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"

# Arguments may arrive as a dict (HF format) or a JSON string (our Arrow datasets, OpenAI): both
# render to the same characters, because json.dumps and HF's tojson share their defaults.
CHAT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools:"
    "{%- for t in tools %} {{ t.function.name }}({{ t.function.parameters.properties | list | join(', ') }})"
    "{%- endfor %}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}<|im_start|>assistant\n{% generation %}"
    "{%- if m.content %}{{ m.content }}{% endif %}"
    "{%- for tc in m.tool_calls or [] %}<tool_call>{\"name\": {{ tc.function.name | tojson }}, \"arguments\": "
    "{% if tc.function.arguments is string %}{{ tc.function.arguments }}{% else %}{{ tc.function.arguments | tojson }}"
    "{%- endif %}}</tool_call>{% endfor %}<|im_end|>{% endgeneration %}{{ '\\n' }}"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CALL_RE = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)
MAX_ACTION_CHARS = 4096  # longer generations are not parsed (a runaway model is a malformed action)


def parse_action(text: str) -> Message:
    """Generated assistant text -> an assistant Message. Never raises and never evaluates anything:
    text that is not a well-formed call is kept as plain content, which the environment answers
    with an error observation (a wasted turn)."""
    text = text.split(IM_END, 1)[0]
    if len(text) > MAX_ACTION_CHARS:
        return Message(role="assistant", content=text[:MAX_ACTION_CHARS])
    calls = []
    for raw in _CALL_RE.findall(text):
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
                raise ValueError
            calls.append(ToolCall.from_dict({"function": obj}))
        except (ValueError, TypeError, RecursionError):
            return Message(role="assistant", content=text.strip())
    if not calls:
        return Message(role="assistant", content=text.strip())
    rest = _CALL_RE.sub("", text).strip()
    return Message(role="assistant", content=rest, tool_calls=tuple(calls))


def to_chat(messages) -> list[dict]:
    return [m.to_dict() for m in messages]


def render(tokenizer, messages, tools, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        to_chat(messages), tools=list(tools) or None, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def tokenize_conversation(tokenizer, messages: list[dict], tools) -> tuple[list[int], list[int]]:
    """(input_ids, assistant_mask) for one HF-format conversation, exactly as TRL's assistant_only_loss sees it."""
    if isinstance(tools, str):
        tools = json.loads(tools)
    out = tokenizer.apply_chat_template(
        messages, tools=tools or None, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return list(out["input_ids"]), list(out["assistant_masks"])
