"""Core data: messages in the Hugging Face chat format, steps and trajectories.

Everything here validates itself on construction so that a malformed record fails where it is
made, not three modules later inside a chat template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
Actor = Literal["student", "teacher", "noise"]  # noise: a DART perturbation executed in the teacher's place
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ToolCall:
    """One function call: `arguments` is always a dict (OpenAI's JSON string is decoded on the way in)."""

    name: str
    arguments: dict[str, Any]

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"tool call name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.arguments, dict):
            raise ValueError(f"tool call arguments must be a dict, got {type(self.arguments).__name__}")

    def to_dict(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    @classmethod
    def from_dict(cls, d: dict) -> ToolCall:
        fn = d.get("function", d)
        args = fn.get("arguments", {})
        if isinstance(args, str):  # OpenAI-style (and our datasets) keep arguments as a JSON string
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError(f"tool call arguments are not valid JSON: {e}") from None
        return cls(name=fn.get("name"), arguments=args)


@dataclass(frozen=True)
class Message:
    """A chat message. Assistant messages carry either text, tool calls, or both."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    name: str | None = None  # tool name, on role="tool" results

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"message role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise ValueError(f"message content must be a string, got {type(self.content).__name__}")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages carry tool_calls, not {self.role!r}")
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))

    def to_dict(self, json_arguments: bool = False) -> dict:
        """HF chat dict. `json_arguments=True` writes arguments as JSON strings (for Arrow datasets,
        where dicts with different keys per tool would be merged into one struct full of nulls)."""
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.role == "assistant":
            calls = [c.to_dict() for c in self.tool_calls]
            if json_arguments:
                for c in calls:
                    c["function"]["arguments"] = json.dumps(c["function"]["arguments"], ensure_ascii=False)
            d["tool_calls"] = calls or None
        if self.name is not None:
            d["name"] = self.name
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Message:
        if not isinstance(d, dict) or "role" not in d:
            raise ValueError(f"a message must be a dict with a 'role', got {d!r:.80}")
        return cls(
            role=d["role"],
            content=d.get("content") or "",
            tool_calls=tuple(ToolCall.from_dict(c) for c in (d.get("tool_calls") or ())),
            name=d.get("name"),
        )

    @property
    def call(self) -> ToolCall | None:
        """The single tool call of an action, or None when there is not exactly one."""
        return self.tool_calls[0] if len(self.tool_calls) == 1 else None


def tool_call(name: str, /, **arguments) -> Message:
    """Shorthand for an assistant action that makes one tool call (an argument may be called `name` too)."""
    return Message(role="assistant", tool_calls=(ToolCall(name, arguments),))


@dataclass(frozen=True)
class Episode:
    """Which episode a state belongs to: enough to rebuild it exactly (environments are seeded)."""

    env: str
    horizon: int
    seed: int

    def __post_init__(self):
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")


@dataclass(frozen=True)
class Context:
    """What a teacher is asked about: the conversation so far (ending before an assistant turn)."""

    messages: tuple[Message, ...]
    tools: tuple[dict, ...]
    episode: Episode

    def __post_init__(self):
        if not self.messages:
            raise ValueError("a context needs at least one message")
        if self.messages[-1].role == "assistant":
            raise ValueError("a context must end before an assistant turn, not after one")


@dataclass(frozen=True)
class Step:
    """One decision: the state, what was executed there, and what the teacher says is right."""

    context: Context
    action: Message  # the action that was executed
    label: Message | None  # the teacher's action at this state; None in unlabelled rollouts (distillation)
    actor: Actor  # who produced `action`
    student_action: Message | None = None  # the student's own choice, when it was asked (even if not executed)

    def __post_init__(self):
        if self.actor not in ("student", "teacher", "noise"):
            raise ValueError(f"actor must be 'student', 'teacher' or 'noise', got {self.actor!r}")
        for what, m in (("action", self.action), ("label", self.label or self.action)):
            if m.role != "assistant":
                raise ValueError(f"step {what} must be an assistant message")

    @property
    def agrees(self) -> bool:
        if self.label is None:
            raise ValueError("an unlabelled step has no teacher label to agree with")
        return same_action(self.action, self.label)


@dataclass(frozen=True)
class Trajectory:
    """A finished (or budget-cut) episode."""

    episode: Episode
    steps: tuple[Step, ...]
    messages: tuple[Message, ...]  # the whole conversation, final tool results included
    tools: tuple[dict, ...]
    success: bool
    stop_reason: Literal["answer", "step_limit", "budget"]  # budget: cut when the teacher-label budget ran out
    tool_errors: int = 0  # turns where a tool raised an exception (an error observation; the episode went on)

    def __post_init__(self):
        if self.stop_reason not in ("answer", "step_limit", "budget"):
            raise ValueError(f"stop_reason must be 'answer', 'step_limit' or 'budget', got {self.stop_reason!r}")
        if not self.steps:
            raise ValueError("a trajectory has at least one step")
        n_assistant = sum(m.role == "assistant" for m in self.messages)
        if n_assistant != len(self.steps):
            raise ValueError(f"{len(self.steps)} steps but {n_assistant} assistant messages")

    @property
    def horizon(self) -> int:
        return self.episode.horizon

    @property
    def seed(self) -> int:
        return self.episode.seed


def same_action(a: Message, b: Message) -> bool:
    """Two actions agree when they make the same tool calls (text around the calls does not matter)."""
    if a.tool_calls or b.tool_calls:
        return a.tool_calls == b.tool_calls
    return a.content.strip() == b.content.strip()
