"""Calc: a stateful calculator driven by a parity rule.

The task gives a start value, an odd number k and a count of operations. At every turn the rule is
"even: half(); odd: add(n=k)", so each decision depends on the value the last observation showed.
After the last operation, submit the value. A wrong operation (adding to an even value, or adding
the wrong n) silently puts the calculator off track; only `undo()` gets it back. Halving an odd
value is refused as a bad call (a wasted turn that changes nothing).
"""

from __future__ import annotations

import random

from sftbc.envs.base import BadCall, StepResult, check_call, default_max_steps, tool_result, tool_schema
from sftbc.types import Message, tool_call

MAX_HORIZON = 64
TOOLS = [
    tool_schema("half", "Halve the value (even values only)."),
    tool_schema("add", "Add n to the value.", n="an integer"),
    tool_schema("undo", "Undo the last operation."),
    tool_schema("submit", "Submit the final value; ends the episode.", value="the value"),
]


def _next(value: int, k: int) -> int:
    return value // 2 if value % 2 == 0 else value + k


class CalcEnv:
    name = "calc"

    def __init__(self, horizon: int, max_steps: int | None = None):
        if not 1 <= horizon <= MAX_HORIZON:
            raise ValueError(f"calc horizon must be in 1..{MAX_HORIZON}, got {horizon}")
        self.horizon = horizon
        self.max_steps = max_steps or default_max_steps(horizon)

    def reset(self, seed: int) -> tuple[list[Message], list[dict]]:
        rng = random.Random(f"calc-{self.horizon}-{seed}")
        self.k = rng.choice([1, 3, 5])  # with a start below 20, values stay in 1..24
        self.ops = self.horizon - 1  # the last decision is the submit
        self.correct = [rng.randrange(2, 20)]
        for _ in range(self.ops):
            self.correct.append(_next(self.correct[-1], self.k))
        self.values = [self.correct[0]]  # the calculator's history, current value last
        self.done = False
        intro = (
            f"Start at value={self.correct[0]}. Apply {self.ops} operations by the rule: if the value is even, half; "
            f"if odd, add n={self.k}. Use undo after a wrong operation. Then submit the value."
        )
        return [Message(role="user", content=intro)], TOOLS

    def _show(self) -> str:
        # "value=42" tokenizes 42 as the JSON argument "42" does (no leading space): a plain copy.
        return f"value={self.values[-1]}, {self.ops - (len(self.values) - 1)} operations left."

    def step(self, action: Message) -> StepResult:
        if self.done:
            raise RuntimeError("step() called on a finished episode; call reset()")
        try:
            name, args = check_call(action, TOOLS)
            v = self.values[-1]
            if name == "submit":
                self.done = True
                ok = args["value"] == str(self.correct[-1]) and self.values == self.correct
                return StepResult([tool_result("correct" if ok else "wrong value", name)], True, {"success": ok})
            if name == "undo":
                if len(self.values) == 1:
                    raise BadCall("error: nothing to undo")
                self.values.pop()
            elif name == "half":
                if v % 2:
                    raise BadCall(f"error: {v} is odd")
                self.values.append(v // 2)
            else:
                n = args["n"]
                if not (n.lstrip("-").isascii() and n.lstrip("-").isdigit()) or len(n) > 6:
                    raise BadCall(f"error: n must be an integer, got {n[:20]!r}")
                self.values.append(v + int(n))
            return StepResult([tool_result(self._show(), name)], False)
        except BadCall as e:
            return StepResult([tool_result(str(e))], False, {"error": str(e)})

    def _on_track(self) -> bool:
        return self.values == self.correct[: len(self.values)]

    def oracle_action(self) -> Message:
        """Undo while off track; otherwise apply the rule, and submit when no operations are left."""
        if not self._on_track():
            return tool_call("undo")
        if len(self.values) - 1 == self.ops:
            return tool_call("submit", value=str(self.values[-1]))
        v = self.values[-1]
        return tool_call("half") if v % 2 == 0 else tool_call("add", n=str(self.k))

    def noisy_action(self, rng: random.Random) -> Message:
        """Base-pretraining behaviour: apply the rule to the shown value half the time (never undo,
        never check the track), else a random call."""
        v, left = self.values[-1], self.ops - (len(self.values) - 1)
        u = rng.random()
        if left <= 0 and u < 0.6:
            return tool_call("submit", value=str(v))
        if u < 0.5:
            return tool_call("half") if v % 2 == 0 else tool_call("add", n=str(self.k))
        if u < 0.7:
            return tool_call("half")
        if u < 0.85:
            return tool_call("add", n=str(rng.choice([1, 3, 5])))
        if u < 0.95:
            return tool_call("undo")
        return tool_call("submit", value=str(v))

    def random_action(self, rng: random.Random) -> Message | None:
        """A uniformly random operation this value allows (never submit: ending the episode teaches no recovery)."""
        v = self.values[-1]
        moves = [tool_call("add", n=str(k)) for k in (1, 3, 5)] + ([tool_call("half")] if v % 2 == 0 else [])
        if len(self.values) > 1:
            moves.append(tool_call("undo"))
        return rng.choice(moves)
