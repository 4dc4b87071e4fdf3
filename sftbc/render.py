"""Chat formats, action parsing, and tokenization with the assistant-only loss mask.

A model keeps its own chat format when its template renders tool calls (`chat_template: auto`):
Qwen2.5/3 and the other templates TRL knows are made training-ready by TRL's
`get_training_chat_template` (generation markers, prefix-preserving; Llama 3.2 by sftbc's own
`templates/llama3_2_training.jinja`, which TRL lacks) and parsed by the tokenizer's response template
(TRL's `add_response_schema`, transformers' `parse_response`), as vLLM and `transformers serve` parse
that model. A model whose template has no tool support (the tiny student, SmolLM2-135M) gets sftbc's
ChatML template: tool calls are Hermes-style `<tool_call>{json}</tool_call>`, read back by a regex.
Either way each assistant turn, its end-of-turn token included, sits inside `{% generation %}`, so
`return_assistant_tokens_mask` (ours and TRL's `assistant_only_loss`) trains exactly the actions,
never the prompt or the tool outputs.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass
from pathlib import Path

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


# Training versions of templates TRL has none for, keyed by the original's file in trl/chat_templates
# (matched exactly, as TRL matches templates).
OWN_TRAINING_TEMPLATES = {"llama3_2.jinja": "llama3_2_training.jinja"}
CHAT_TEMPLATE_CHOICES = "auto, native, sftbc or a path to a .jinja"


def set_chat_format(tok, choice: str = "auto", model: str = "model") -> None:
    """Give `tok` the template a run trains, decodes and parses with (config `chat_template`):
    'auto': the model's own when it renders tool calls, else sftbc's; 'native': the model's own or a
    clear error; 'sftbc': sftbc's ChatML; a path: that .jinja (with generation markers), parsed by the
    tokenizer's response template if it has one, else as Hermes calls."""
    from trl.chat_template_utils import has_generation_markers, supports_tool_calling

    tools = tok.chat_template != CHAT_TEMPLATE and supports_tool_calling(tok)  # its own template renders calls
    if choice == "sftbc" or (choice == "auto" and not tools):
        if IM_END not in tok.get_vocab():
            raise ValueError(f"{model}: sftbc's ChatML template needs a {IM_END} token, which its tokenizer lacks; "
                             "give chat_template=<path to a .jinja> with generation markers")
        tok.chat_template = CHAT_TEMPLATE
    elif choice in ("auto", "native"):
        if not tools:
            raise ValueError(f"{model}: its own chat template does not render tool calls; use chat_template=sftbc "
                             "or a path to a .jinja")
        tok.chat_template = _training_template(tok, model)
    else:
        path = Path(choice)
        if not path.is_file():
            raise ValueError(f"chat_template={choice!r}: not one of {CHAT_TEMPLATE_CHOICES}")
        tok.chat_template = path.read_text()
        if not has_generation_markers(tok.chat_template):
            raise ValueError(f"chat_template={choice}: no {{% generation %}} markers around the assistant's turn, so "
                             "the loss cannot be kept to the actions")


def _training_template(tok, model: str) -> str:
    """The model's own template, training-ready, with a response parser set on `tok` (must be known
    before the template is swapped: TRL recognises templates by their exact text)."""
    from trl.chat_template_utils import add_response_schema, get_training_chat_template

    own = tok.chat_template
    if getattr(tok, "response_template", None) is None:
        try:
            add_response_schema(tok)
        except ValueError:
            raise ValueError(f"{model}: no response parser is known for its chat template; set response_template in "
                             "its tokenizer_config.json, or use chat_template=sftbc") from None
    try:
        return get_training_chat_template(tok) or own
    except ValueError:
        import trl

        originals = Path(trl.__file__).parent / "chat_templates"
        for original, training in OWN_TRAINING_TEMPLATES.items():
            if own == (originals / original).read_text():
                return (Path(__file__).parent / "templates" / training).read_text()
    raise ValueError(f"{model}: its chat template cannot be made training-ready (no generation markers, and neither "
                     "TRL nor sftbc has a training version of it); use chat_template=sftbc or a path to a .jinja "
                     "with generation markers")


@dataclass(frozen=True)
class TurnFormat:
    """What decoding and parsing need to know of a tokenizer's chat template."""

    end: str  # the special token that ends an assistant turn (<|im_end|>, <|eot_id|>): decoding stops there
    prompt: str  # a generation prompt: the context a response parser reads an assistant turn after
    hermes: bool  # parsed by the Hermes regex (sftbc's template, or one without a response template)


_FORMATS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (its template, TurnFormat)


def turn_format(tok) -> TurnFormat:
    """The template's end-of-turn token is the last special token the loss mask covers in an
    assistant turn (a template may train a newline after it, which decoding never reaches)."""
    hit = _FORMATS.get(tok)
    if hit is not None and hit[0] == tok.chat_template:
        return hit[1]
    user = {"role": "user", "content": "hi"}
    ids, mask = tokenize_conversation(tok, [user, {"role": "assistant", "content": "ok"}], None)
    special = {i for i, t in tok.added_tokens_decoder.items() if t.special}
    ends = [i for i, m in zip(ids, mask) if m and i in special]
    if not ends:
        raise ValueError("the chat template's assistant turn has no special end-of-turn token inside its "
                         "{% generation %} markers, so decoding could not stop")
    fmt = TurnFormat(end=tok.convert_ids_to_tokens(ends[-1]),
                     prompt=tok.apply_chat_template([user], tokenize=False, add_generation_prompt=True),
                     hermes=tok.chat_template == CHAT_TEMPLATE or getattr(tok, "response_template", None) is None)
    _FORMATS[tok] = (tok.chat_template, fmt)
    return fmt


def parse_action(text: str, tokenizer=None) -> Message:
    """Generated assistant text -> an assistant Message, in the format of `tokenizer`'s template
    (sftbc's Hermes calls when none is given). Never raises and never evaluates anything: text that
    is not a well-formed call is kept as plain content, which the environment answers with an error
    observation (a wasted turn)."""
    fmt = turn_format(tokenizer) if tokenizer is not None else None
    end = fmt.end if fmt else IM_END
    text = text.split(end, 1)[0]
    if len(text) > MAX_ACTION_CHARS:
        return Message(role="assistant", content=text[:MAX_ACTION_CHARS])
    if fmt is None or fmt.hermes:
        return _parse_hermes(text)
    try:
        parsed = tokenizer.parse_response(text + end, prefix=fmt.prompt)
        calls = tuple(ToolCall.from_dict(c) for c in parsed.get("tool_calls") or ())
        return Message(role="assistant", content=(parsed.get("content") or "").strip(), tool_calls=calls)
    except Exception:  # the response parser on arbitrary model output: any failure is a malformed action
        return Message(role="assistant", content=text.strip())


def _parse_hermes(text: str) -> Message:
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


def _drop_nulls(messages: list[dict]) -> list[dict]:
    """A dataset row carries every key of every message, null where unused; templates test keys
    (Llama 3.2: `'tool_calls' in message`), so a null or an empty list of calls must not be a key."""
    return [{k: v for k, v in m.items() if v is not None and not (k == "tool_calls" and not v)} for m in messages]


def render(tokenizer, messages, tools, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        _drop_nulls(to_chat(messages)), tools=list(tools) or None, tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def tokenize_conversation(tokenizer, messages: list[dict], tools) -> tuple[list[int], list[int]]:
    """(input_ids, assistant_mask) for one HF-format conversation, exactly as TRL's assistant_only_loss sees it."""
    if isinstance(tools, str):
        tools = json.loads(tools)
    out = tokenizer.apply_chat_template(
        _drop_nulls(messages), tools=tools or None, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return list(out["input_ids"]), list(out["assistant_masks"])
