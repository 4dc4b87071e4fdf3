"""Greenhouse: tend a row of plants whose needs you only learn by inspecting them.

A task of a kind the built-in envs do not cover: what each plant needs is hidden until a tool
reports it. `inspect()` reads the current plant's meter (dry, parched, pests or healthy), and the
care that reading calls for is the next call: `water(amount="little")` when dry, `water(amount="lots")`
when parched, `spray()` for pests, `leave()` when healthy. The right care moves on to the next plant;
the episode succeeds when every plant has had it. Sometimes the meter flickers between two readings,
and any student guesses there (the expert, who knows the plants, never has to). Wrong care is
recoverable: the plant reports it, `undo()` reverses it and the meter then reads true. The oracle acts
from any state: undo wrong care, inspect a plant not yet read, else give the care its need calls for.

Horizon T is the number of plants, so a correct episode takes 2T calls.
"""

from __future__ import annotations

import random
from typing import Literal

from sftbc import BadCall, Message, ToolEnv, tool_call

PLANTS = ("fern", "rose", "mint", "basil", "ivy", "sage", "palm", "lily")
CARE = {"dry": ("water", {"amount": "little"}), "parched": ("water", {"amount": "lots"}), "pests": ("spray", {}),
        "healthy": ("leave", {})}
# What the meter shows for each need: the reading and the care it calls for, spelled as the call is (as the
# maze's note spells `go "teal"`): the tiny student learns to act on what it can copy from the observation.
SHOWN = {"dry": 'dry: water "little"', "parched": 'parched: water "lots"', "pests": "pests: spray",
         "healthy": "healthy: leave"}
P_FLICKER = 0.1  # the chance that a plant's meter flickers between its true reading and another


class Greenhouse(ToolEnv):
    def __init__(self, horizon: int, max_steps: int | None = None):
        if not 1 <= horizon <= 64:
            raise ValueError(f"greenhouse horizon (plants) must be in 1..64, got {horizon}")
        super().__init__(horizon, max_steps)

    def start(self, seed: int) -> str:
        rng = random.Random(f"greenhouse-{self.horizon}-{seed}")
        self.plants = [(rng.choice(PLANTS), rng.choice(list(CARE))) for _ in range(self.horizon)]
        self.flicker = {}  # plant index -> the needs its meter shows: the true one and another, in either order
        for i, (_, need) in enumerate(self.plants):
            if rng.random() < P_FLICKER:
                pair = [need, rng.choice([n for n in CARE if n != need])]
                rng.shuffle(pair)
                self.flicker[i] = pair
        self.at, self.read, self.wrong = 0, False, None  # current plant; read since we came; wrong care given
        return (f"Tend the {self.horizon} plants in the row: inspect each, then water it a little if dry, lots if "
                f"parched, spray it for pests, or leave it if healthy. Undo wrong care. Next: {self._plant()}.")

    # -- tools ---------------------------------------------------------------------------------
    def inspect(self) -> str:
        """Read the meter of the current plant."""
        if self.wrong:
            return f"the {self.plants[self.at][0]} got the wrong care ({self.wrong})."
        self.read = True
        shown = self.flicker.get(self.at, [self.plants[self.at][1]])
        return f"{self._plant()}: {' or '.join(SHOWN[n] for n in shown)}{' (the meter flickers)' if len(shown) > 1 else ''}."

    def water(self, amount: Literal["little", "lots"]) -> str:
        """Water the current plant.

        Args:
            amount: how much water
        """
        return self._care("water", {"amount": amount}, f"watered it {amount}")

    def spray(self) -> str:
        """Spray the current plant against pests."""
        return self._care("spray", {}, "sprayed it")

    def leave(self) -> str:
        """Leave the current plant as it is."""
        return self._care("leave", {}, "left it")

    def undo(self) -> str:
        """Undo the wrong care just given to the current plant."""
        if not self.wrong:
            raise BadCall("error: there is no wrong care to undo")
        self.wrong, self.read = None, True
        self.flicker.pop(self.at, None)  # after a wrong guess, the meter reads true
        return f"undid it. {self._plant()}: {SHOWN[self.plants[self.at][1]]}."

    def _care(self, tool: str, args: dict, done: str) -> str:
        if self.wrong:
            raise BadCall(f"error: undo the wrong care to the {self.plants[self.at][0]} first")
        name, need = self.plants[self.at]
        if CARE[need] != (tool, args):
            self.wrong = done
            return f"{done}: the {name} got the wrong care."
        self.at, self.read = self.at + 1, False
        if self.at == self.horizon:
            self.finish(True)
            return f"{done}. All plants tended."
        return f"{done}. Next: {self._plant()}."

    def _plant(self) -> str:
        return f"the {self.plants[self.at][0]} (plant {self.at + 1} of {self.horizon})"

    # -- behaviours -------------------------------------------------------------------------------
    def noisy_action(self, rng: random.Random) -> Message:
        """Base-pretraining behaviour: after a reading, the care the reading shows half the time (either
        one of a flickering pair), else a random call. The base learns to act on what a tool reports, as
        the maze's base learns to follow a note, but not the policy: when to inspect, the guess at a
        flicker, and undoing wrong care. ToolEnv's default (random calls only) was measured first: its
        students did not learn the reading, 0.27 success at T = 1 (README)."""
        if self.read and not self.wrong and rng.random() < 0.5:
            tool, args = CARE[rng.choice(self.flicker.get(self.at, [self.plants[self.at][1]]))]
            return tool_call(tool, **args)
        return super().noisy_action(rng)

    # -- the expert ------------------------------------------------------------------------------
    def oracle_action(self) -> Message:
        if self.wrong:
            return tool_call("undo")
        if not self.read:
            return tool_call("inspect")
        tool, args = CARE[self.plants[self.at][1]]
        return tool_call(tool, **args)
