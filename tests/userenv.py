"""Environments as a user writes them, outside the sftbc package: the tests reference this file by path
(tests/userenv.py:Relay) and by module (userenv:Relay, with tests/ on the path)."""

from __future__ import annotations

import random
from typing import Literal

from sftbc import BadCall, ToolEnv, tool_call

WORDS = ("alpha", "bravo", "delta", "echo", "golf", "hotel", "kilo", "lima")


class Relay(ToolEnv):
    """Pass on each word the last answer shows, then close: T - 1 words and the close are T decisions.
    A wrong word is recoverable with undo; the oracle acts from any state."""

    def start(self, seed: int) -> str:
        rng = random.Random(f"relay-{self.horizon}-{seed}")
        self.words = [rng.choice(WORDS) for _ in range(self.horizon - 1)]
        self.said: list[str] = []
        self.volume = 1
        return f"Relay each word, then close. {self._next()}"

    def say(self, word: str) -> str:
        """Pass a word on.

        Args:
            word: the word to pass on
        """
        self.said.append(word)
        return f'said "{word}". {self._next()}'

    def undo(self) -> str:
        """Take back the last word said."""
        if not self.said:
            raise BadCall("error: nothing to undo")
        self.said.pop()
        return self._next()

    def tune(self, level: int, mode: Literal["soft", "loud"], gain: float = 1.0, tags: list[str] | None = None,
             mute: bool = False) -> str:
        """Set the volume (every argument type a schema has, for the validation tests).

        Args:
            level: a volume from 0 to 9
            mode: how to speak
            gain: a factor
            tags: labels to attach
            mute: whether to mute
        """
        if not 0 <= level <= 9:
            raise BadCall("error: level must be in 0..9")
        self.volume = 0 if mute else level
        return f"volume {self.volume} ({mode}, gain {gain}, tags {tags or []})"

    def close(self) -> str:
        """Close the relay; ends the episode."""
        self.finish(self.said == self.words)
        return "closed"

    def _next(self) -> str:
        if self.said != self.words[: len(self.said)]:
            return "Off track."
        if len(self.said) == len(self.words):
            return "All passed on."
        return f'Word: "{self.words[len(self.said)]}".'

    def oracle_action(self):
        if self.said != self.words[: len(self.said)]:
            return tool_call("undo")
        if len(self.said) == len(self.words):
            return tool_call("close")
        return tool_call("say", word=self.words[len(self.said)])


class FlakyRelay(Relay):
    """Relay whose `say` raises on its first call of every episode (a user's tool with a bug)."""

    def start(self, seed: int) -> str:
        self.calls = 0
        return super().start(seed)

    def say(self, word: str) -> str:
        """Pass a word on.

        Args:
            word: the word to pass on
        """
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("sensor offline")
        return super().say(word)


class LegacyRelay:
    """Written against the Env protocol directly (no ToolEnv): it must keep working by reference."""

    def __init__(self, horizon: int, max_steps: int | None = None):
        self.inner = Relay(horizon, max_steps)
        self.horizon, self.max_steps = horizon, self.inner.max_steps

    def reset(self, seed):
        return self.inner.reset(seed)

    def step(self, action):
        return self.inner.step(action)

    def oracle_action(self):
        return self.inner.oracle_action()

    def noisy_action(self, rng):
        return self.inner.noisy_action(rng)

    def random_action(self, rng):
        return self.inner.random_action(rng)


class NotAnEnv:
    """No reset, no step."""


# -- a class written for TRL's GRPO environment_factory, and the thin adapter sftbc needs --------------
class CounterForTRL:
    """As TRL expects it: reset(**row) returns text added to the prompt, public methods are tools,
    get_reward() scores the episode. It has no oracle: it runs with LM teachers."""

    def reset(self, **kwargs) -> str | None:
        self.target, self.value = kwargs["target"], 0
        return f" Reach {self.target}."

    def increment(self, step: int) -> str:
        """Add to the counter.

        Args:
            step: how much to add, 1 to 3
        """
        if not 1 <= step <= 3:
            raise ValueError("step must be 1 to 3")
        self.value += step
        return f"value {self.value}"

    def get_reward(self) -> float:
        return float(self.value == self.target)


class Counter(ToolEnv, CounterForTRL):
    """The adapter: a seeded reset (the TRL class reads its task from a dataset row, here drawn from the
    seed) and an outcome; the horizon sizes the target. Its tool is the TRL class's own."""

    def start(self, seed: int) -> str:
        row = {"prompt": "Count up with increment.", "target": random.Random(seed).randint(self.horizon, 3 * self.horizon)}
        return row["prompt"] + (CounterForTRL.reset(self, **row) or "")

    def outcome(self) -> bool | None:
        return None if self.value < self.target else self.get_reward() > 0
