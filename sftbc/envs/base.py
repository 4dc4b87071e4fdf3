"""The environment protocol every env keeps, and the pieces envs share.

An environment is a seeded, deterministic episode: `reset(seed)` gives the opening messages and the
tool schemas, `step(action)` executes the assistant's tool call and answers with tool messages. The
contract, which every teacher, replay and `--resume` relies on:
- it is constructed as `Cls(horizon, max_steps)` (max_steps None: the env's own default);
- `reset(seed)` and then the same actions give the same messages, every time, in every process (the
  oracle and a privileged teacher rebuild any state by replaying its actions in a fresh env);
- `oracle_action()` (optional) is the expert's action in the current state, any state, including
  ones the expert never reaches: that is what DAgger's relabelling asks of it. Without it the env runs
  with LM teachers only;
- `noisy_action(rng)` (optional) plays the base model's pretraining corpus, `random_action(rng)`
  (optional) is DART's perturbation: a random valid call that does not end the episode, or None.
`sftbc.ToolEnv` implements all of it from plain Python tool methods; a class written directly against
this protocol works by reference too. An env may name a `privileged_view`: another env (a reference)
with the same episodes per seed that shows more of them, which a privileged teacher is shown
(`teacher.privileged`; maze_smudged -> maze_trail).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sftbc.types import Message


@dataclass
class StepResult:
    messages: list[Message]  # tool results to append to the conversation
    done: bool
    # "success" (bool) once done; "error" on a wasted turn (a malformed or refused call, or a tool that
    # raised); "tool_error" too when a tool raised an exception
    info: dict[str, Any] = field(default_factory=dict)


class Env(Protocol):
    horizon: int  # tool-using decisions a correct episode takes
    max_steps: int  # the episode is cut after this many assistant turns

    def reset(self, seed: int) -> tuple[list[Message], list[dict]]: ...

    def step(self, action: Message) -> StepResult: ...


class BadCall(Exception):
    """A call the env refuses (a malformed call, or a tool saying the call makes no sense here): its
    message becomes the error observation, a wasted turn. Raise it from a tool to refuse a call."""


def tool_result(text: str, name: str | None = None) -> Message:
    return Message(role="tool", content=text, name=name)


def default_max_steps(horizon: int) -> int:
    """Room for a few recoveries: a correct episode takes `horizon` turns."""
    return 2 * horizon + 4
