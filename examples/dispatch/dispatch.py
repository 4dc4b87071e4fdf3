"""Dispatch: route each incoming call to the desk on duty.

Written for issue 30 as a task of the maze's shape that the tiny base did not learn to copy in: each
observation lists the desks with their lines (bare words, not quoted) and names the desk on duty; the
call must copy the on-duty desk's line. A wrong line drops the caller and ends the episode.
Horizon T is the number of calls to route.
"""

from __future__ import annotations

import random

from sftbc import BadCall, Message, ToolEnv, tool_call

DESKS = ("north", "south", "east", "west")
LINES = ("amber", "coral", "olive", "ivory", "cedar", "maple", "slate", "jade")


class Dispatch(ToolEnv):
    def start(self, seed: int) -> str:
        rng = random.Random(f"dispatch-{self.horizon}-{seed}")
        self.calls = []  # per call: ({desk: line} for three desks, the desk on duty)
        for _ in range(self.horizon):
            desks = rng.sample(DESKS, 3)
            self.calls.append((dict(zip(desks, rng.sample(LINES, 3))), rng.choice(desks)))
        self.at = 0
        return f"Route {self.horizon} calls, each to the line of the desk on duty. {self._show()}"

    def route(self, line: str) -> str:
        """Put the caller through to a line.

        Args:
            line: the line to connect, e.g. amber
        """
        lines, duty = self.calls[self.at]
        if line not in lines.values():
            raise BadCall(f"error: no desk has the line {line[:20]!r} now")
        if line != lines[duty]:
            self.finish(False)
            return f"{line} is not on duty: the caller hung up."
        self.at += 1
        if self.at == self.horizon:
            self.finish(True)
            return "connected. All calls routed."
        return f"connected. {self._show()}"

    def _show(self) -> str:
        lines, duty = self.calls[self.at]
        desks = ", ".join(f"{d} desk line {v}" for d, v in lines.items())
        return f"Call {self.at + 1} of {self.horizon}: {desks}; on duty: {duty}."

    def noisy_action(self, rng: random.Random) -> Message:
        """Base-pretraining behaviour: the on-duty desk's line half the time, else any desk's line."""
        lines, duty = self.calls[self.at]
        return tool_call("route", line=lines[duty] if rng.random() < 0.5 else rng.choice(list(lines.values())))

    def oracle_action(self) -> Message:
        lines, duty = self.calls[self.at]
        return tool_call("route", line=lines[duty])
