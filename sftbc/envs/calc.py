"""Calc: a stateful calculator driven by a parity rule.

The task gives a start value, an odd number k and a count of operations. At every turn the rule is
"even: half(); odd: add(n=k)", so each decision depends on the value the last observation showed.
After the last operation, submit the value. A wrong operation (adding to an even value, or adding
the wrong n) silently puts the calculator off track; only `undo()` gets it back. Halving an odd
value is refused as a bad call (a wasted turn that changes nothing).
"""

from __future__ import annotations

import random

from sftbc.envs.base import BadCall
from sftbc.envs.tool import ToolEnv
from sftbc.types import Message, tool_call

MAX_HORIZON = 64


def _next(value: int, k: int) -> int:
    return value // 2 if value % 2 == 0 else value + k


class CalcEnv(ToolEnv):
    def __init__(self, horizon: int, max_steps: int | None = None):
        if not 1 <= horizon <= MAX_HORIZON:
            raise ValueError(f"calc horizon must be in 1..{MAX_HORIZON}, got {horizon}")
        super().__init__(horizon, max_steps)

    def start(self, seed: int) -> str:
        rng = random.Random(f"calc-{self.horizon}-{seed}")
        self.k = rng.choice([1, 3, 5])  # with a start below 20, values stay in 1..24
        self.ops = self.horizon - 1  # the last decision is the submit
        self.correct = [rng.randrange(2, 20)]
        for _ in range(self.ops):
            self.correct.append(_next(self.correct[-1], self.k))
        self.values = [self.correct[0]]  # the calculator's history, current value last
        return (f"Start at value={self.correct[0]}. Apply {self.ops} operations by the rule: if the value is even, half; "
                f"if odd, add n={self.k}. Use undo after a wrong operation. Then submit the value.")

    def _show(self) -> str:
        # "value=42" tokenizes 42 as the JSON argument "42" does (no leading space): a plain copy.
        return f"value={self.values[-1]}, {self.ops - (len(self.values) - 1)} operations left."

    # Tools, in the order the prompt lists them. n and value are strings, as the recorded recipes' base
    # models were pretrained on (`{"n": "3"}`); a typed `n: int` would render differently.
    def half(self) -> str:
        """Halve the value (even values only)."""
        if self.values[-1] % 2:
            raise BadCall(f"error: {self.values[-1]} is odd")
        self.values.append(self.values[-1] // 2)
        return self._show()

    def add(self, n: str) -> str:
        """Add n to the value.

        Args:
            n: an integer
        """
        n = n.strip()
        if not (n.lstrip("-").isascii() and n.lstrip("-").isdigit()) or len(n) > 6:
            raise BadCall(f"error: n must be an integer, got {n[:20]!r}")
        self.values.append(self.values[-1] + int(n))
        return self._show()

    def undo(self) -> str:
        """Undo the last operation."""
        if len(self.values) == 1:
            raise BadCall("error: nothing to undo")
        self.values.pop()
        return self._show()

    def submit(self, value: str) -> str:
        """Submit the final value; ends the episode.

        Args:
            value: the value
        """
        ok = value.strip() == str(self.correct[-1]) and self.values == self.correct
        self.finish(ok)
        return "correct" if ok else "wrong value"

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
