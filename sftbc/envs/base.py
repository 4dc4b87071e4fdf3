"""The environment protocol and the pieces every built-in tool-use task shares.

An environment is a seeded, deterministic episode: `reset(seed)` gives the opening messages and the
tool schemas, `step(action)` executes the assistant's tool call and answers with tool messages.
Every built-in environment also knows its own optimal policy (`oracle_action`), in *any* state,
including states the expert never reaches: that is what makes DAgger's relabeling possible.
An environment may name a `privileged_view`: another env with the same episodes per seed that shows
more of them, which a privileged teacher is shown (`teacher.privileged`; maze_smudged -> maze_trail).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sftbc.types import Message


@dataclass
class StepResult:
    messages: list[Message]  # tool results to append to the conversation
    done: bool
    info: dict[str, Any] = field(default_factory=dict)  # "success" (bool) once done, "error" on a malformed call


class Env(Protocol):
    name: str
    horizon: int  # tool-using decisions a correct episode takes
    max_steps: int  # the episode is cut after this many assistant turns

    def reset(self, seed: int) -> tuple[list[Message], list[dict]]: ...

    def step(self, action: Message) -> StepResult: ...

    def oracle_action(self) -> Message: ...

    def noisy_action(self, rng) -> Message: ...  # base-pretraining behaviour: valid calls, no policy

    def random_action(self, rng) -> Message | None: ...  # DART's perturbation: a random valid non-final call, if any


def tool_schema(name: str, description: str, **params: str) -> dict:
    """A JSON-schema tool description in the format chat templates and OpenAI expect; all params are strings."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {p: {"type": "string", "description": d} for p, d in params.items()},
                "required": list(params),
            },
        },
    }


class BadCall(Exception):
    """A malformed action; its message becomes the error observation."""


def check_call(action: Message, tools: list[dict]) -> tuple[str, dict[str, str]]:
    """Validate an action against the tool schemas; returns (name, arguments) or raises BadCall."""
    if not action.tool_calls:
        raise BadCall("error: no tool call found; call one of the tools")
    if len(action.tool_calls) > 1:
        raise BadCall("error: make exactly one tool call per turn")
    call = action.tool_calls[0]
    schema = next((t["function"] for t in tools if t["function"]["name"] == call.name), None)
    if schema is None:
        raise BadCall(f"error: unknown tool {call.name[:40]!r}")
    expected = set(schema["parameters"]["properties"])
    if set(call.arguments) != expected:
        want = ", ".join(sorted(expected)) or "no arguments"
        raise BadCall(f"error: {call.name} takes {want}")
    args = {}
    for k, v in call.arguments.items():
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise BadCall(f"error: argument {k} must be a string")
        args[k] = str(v).strip()
    return call.name, args


def tool_result(text: str, name: str | None = None) -> Message:
    return Message(role="tool", content=text, name=name)


def default_max_steps(horizon: int) -> int:
    """Room for a few recoveries: a correct episode takes `horizon` turns."""
    return 2 * horizon + 4
