"""Maze: follow the trusted notes from room to room to the vault code.

Each room shows its doors and a signed note. The task names whose notes to trust. A trusted note
says which door to take, so every move is decided by the latest observation; the last trusted
room holds the code. Taking the wrong door leads into rooms
whose notes are signed by someone else and point deeper into the maze: the only way out is
`back()`, once per wrong step. A student that has only seen the expert's path never learns to
check the signature, follows the untrusted notes, and wanders until the step limit: the
compounding error that DAgger's relabeling fixes.
"""

from __future__ import annotations

import random

from sftbc.envs.base import BadCall
from sftbc.envs.tool import ToolEnv
from sftbc.types import Message, tool_call

NAMES = ("ana", "bob", "cy", "dee", "eve", "fay", "gus", "hal", "ivy", "jo")
N_ROOMS = 100  # room ids r0..r99
# Doors are coloured and the code is a colour: copying the code from the last note is the same skill
# as copying a door, which a small model learns from far more examples than it sees codes.
COLORS = ("red", "blue", "green", "gold", "gray", "pink", "teal", "white")
N_DECOYS = 16
MAX_HORIZON = N_ROOMS - N_DECOYS


class MazeEnv(ToolEnv):
    def __init__(self, horizon: int, max_steps: int | None = None):
        if not 1 <= horizon <= MAX_HORIZON:
            raise ValueError(f"maze horizon must be in 1..{MAX_HORIZON}, got {horizon}")
        super().__init__(horizon, max_steps)

    # -- episode ------------------------------------------------------------------------------
    def start(self, seed: int) -> str:
        rng = random.Random(f"maze-{self.horizon}-{seed}")
        self.trusted, *others = self._signers(rng.sample(NAMES, 4))
        rooms = rng.sample(range(N_ROOMS), self.horizon + N_DECOYS)
        self.path, decoys = rooms[: self.horizon], rooms[self.horizon :]
        self.code = rng.choice(COLORS)
        # room -> (doors {door: room}, signer, note); the note names a door, or gives the code
        self.rooms: dict[int, tuple[dict[str, int], str, str]] = {}
        for i, r in enumerate(self.path):
            if i == self.horizon - 1:
                self.rooms[r] = ({}, self.trusted, f'code "{self.code}"')
            else:
                right, wrong = rng.sample(COLORS, 2)
                doors = {right: self.path[i + 1], wrong: rng.choice(decoys)}
                self.rooms[r] = (doors, self.trusted, f'go "{right}"')
        for r in decoys:  # untrusted rooms only lead to other untrusted rooms
            a, b = rng.sample(COLORS, 2)
            doors = dict(zip((a, b), rng.sample([d for d in decoys if d != r], 2)))
            self.rooms[r] = (doors, rng.choice(others), f'go "{rng.choice((a, b))}"')
        self.rivals = self._rival_notes(seed, others)
        self._variant_reset(seed)
        self.stack = [self.path[0]]  # rooms walked, the current one last
        return (f"Find the vault code. Trust only notes by {self.trusted}; use back when a note is by anyone else. "
                f"{self._describe(self.path[0])}")

    def _signers(self, names: list[str]) -> list[str]:
        """The trusted name, then the three untrusted ones; the plain maze draws them per episode."""
        return names

    def _rival_notes(self, seed: int, others: list[str]) -> dict[int, tuple[str, str, bool]]:
        """room -> (signer, note, shown first) of a second note; the plain maze has none."""
        return {}

    def _variant_reset(self, seed: int):
        """Per-episode state of a variant, drawn after (so without changing) the plain maze's layout."""

    def _back(self):
        """Walk back one room (a variant may also change the maze as it does)."""
        self.stack.pop()

    def _notes(self, room: int) -> list[tuple[str, str]]:
        """The room's notes as (signer, note), in the order they are shown."""
        _, signer, note = self.rooms[room]
        if room not in self.rivals:
            return [(signer, note)]
        r_signer, r_note, first = self.rivals[room]
        return [(r_signer, r_note), (signer, note)] if first else [(signer, note), (r_signer, r_note)]

    def _describe(self, room: int) -> str:
        doors = self.rooms[room][0]
        # Values are quoted as in the JSON call, so "red" is the same token in both: a plain copy.
        ways = f"doors {', '.join(f'{chr(34)}{d}{chr(34)}' for d in sorted(doors))}; " if doors else ""
        # The trusted name is repeated next to the signer: checking a note is a comparison of two nearby
        # words, which a small student can learn from DAgger's relabelled detours; a BC student of the
        # plain maze never needs it, since every room the expert shows it is trusted.
        notes = "; ".join(f"note by {s} (trusted: {self.trusted}): {n}" for s, n in self._notes(room))
        return f"You are in r{room}: {ways}{notes}."

    # -- tools ---------------------------------------------------------------------------------
    def go(self, door: str) -> str:
        """Walk through a door of the current room.

        Args:
            door: the colour of a door here, e.g. red
        """
        doors = self.rooms[self.stack[-1]][0]
        if door.strip() not in doors:
            raise BadCall(f"error: r{self.stack[-1]} has no door {door.strip()[:20]!r}")
        self.stack.append(doors[door.strip()])
        return self._describe(self.stack[-1])

    def back(self) -> str:
        """Return to the room you came from."""
        if len(self.stack) == 1:
            raise BadCall("error: there is no room to go back to")
        self._back()
        return self._describe(self.stack[-1])

    def submit(self, code: str) -> str:
        """Submit the vault code (a colour); ends the episode.

        Args:
            code: the code
        """
        self.finish(code.strip() == self.code)
        return "correct" if code.strip() == self.code else "wrong code"

    # -- policies -----------------------------------------------------------------------------
    def oracle_action(self) -> Message:
        """Forward along the trusted path; from an untrusted room, back."""
        here = self.stack[-1]
        if here not in self.path:
            return tool_call("back")
        i = self.path.index(here)
        if i == self.horizon - 1:
            return tool_call("submit", code=self.code)
        return tool_call("go", door=_quoted(self.rooms[here][2]))

    def noisy_action(self, rng: random.Random) -> Message:
        """Base-pretraining behaviour: follow a note of the room half the time, whoever signed it (the
        copying skill, but not the policy: no signature check, no back-tracking), else a random call."""
        doors = self.rooms[self.stack[-1]][0]
        notes = self._notes(self.stack[-1])  # a draw only where there is a choice: the plain maze's corpus stays as it was
        note = (rng.choice(notes) if len(notes) > 1 else notes[0])[1]
        u = rng.random()
        if not doors:
            return tool_call("submit", code=_quoted(note)) if u < 0.9 else tool_call("back")
        if u < 0.5:
            return tool_call("go", door=_quoted(note))
        if u < 0.85:
            return tool_call("go", door=rng.choice(sorted(doors)))
        return tool_call("back")

    def random_action(self, rng: random.Random) -> Message | None:
        """A uniformly random move this room allows, None where there is none (never submit: ending the
        episode teaches no recovery)."""
        moves = [tool_call("go", door=d) for d in sorted(self.rooms[self.stack[-1]][0])]
        if len(self.stack) > 1:
            moves.append(tool_call("back"))
        return rng.choice(moves) if moves else None


class RivalMazeEnv(MazeEnv):
    """The maze with a second note in every room, signed by someone untrusted: on the path it names
    the wrong door (in the last room, a wrong code), in a decoy room the other door. Following the
    expert now takes a skill the plain maze never asks for on its path, picking the trusted note out
    of two, so a BC student's error on the expert's own states is set by how well it learned that check
    (not zero by construction, as on the plain maze for any student that copies), and each error leads
    it into rooms where it has never seen the right move (`back`)."""

    def _rival_notes(self, seed: int, others: list[str]) -> dict[int, tuple[str, str, bool]]:
        rng = random.Random(f"maze-rivals-{self.horizon}-{seed}")  # the layout stays the plain maze's
        out = {}
        for r, (doors, _, note) in self.rooms.items():
            if note.startswith("code"):
                fake = f'code "{rng.choice([c for c in COLORS if c != self.code])}"'
            else:
                fake = f'go "{next(d for d in sorted(doors) if d != _quoted(note))}"'
            out[r] = (rng.choice(others), fake, rng.random() < 0.5)
        return out


class FixedTrustMazeEnv(MazeEnv):
    """The maze with one trusted signer, dee, in every episode (same layout, expert and code per seed).

    Telling a trusted note from another is then one word, where the plain maze compares two names that
    change every episode, so DAgger's relabelled detours have an easier rule to teach (the tiny student
    of the default sweep still does not learn it: docs/experiments/recipe_choices.md). A BC student gains nothing from the easier
    check: the expert never enters an untrusted room, so its data never shows `back`."""

    TRUSTED = "dee"

    def _signers(self, names: list[str]) -> list[str]:
        # dee moves to the front; if dee was drawn as an untrusted signer, the drawn trusted name takes its place
        if names[0] == self.TRUSTED:
            return names
        return [self.TRUSTED] + [names[0] if n == self.TRUSTED else n for n in names[1:]]


class SmudgedNoteMazeEnv(FixedTrustMazeEnv):
    """maze_fixed with errors any student makes and a recovery it can learn (same layout, expert and
    code per seed).

    - Each path room but the last has a smudged note with probability `P_SMUDGED`: it names both doors
      (`go "gold" or "green"`), and the expert (the oracle) still knows which. There every student
      guesses, so even a perfect imitator takes the wrong door half the time: epsilon ~ P_SMUDGED / 2
      per step, under greedy decoding too.
    - A room off dee's trail says so ("Off the trail."): the default tiny student does not learn to
      compare a signer from a few hundred labels (docs/experiments/recipe_choices.md), and recognising such a room is not what
      this experiment is about. What BC lacks there is labels: the expert never enters one.
    - A door off the trail locks behind you when you come back through it, so after one `back()` the
      smudged note names only the door left: recovery is two moves, not a second guess.
    """

    P_SMUDGED = 0.05
    privileged_view = "maze_trail"  # what a privileged teacher sees (teacher.privileged): every note clean

    def _variant_reset(self, seed: int):
        rng = random.Random(f"maze-smudged-{self.horizon}-{seed}")
        self.smudged = {r for r in self.path[:-1] if rng.random() < self.P_SMUDGED}

    def _notes(self, room: int) -> list[tuple[str, str]]:
        if room not in self.smudged:
            return super()._notes(room)
        doors = " or ".join(f'"{d}"' for d in sorted(self.rooms[room][0]))
        return [(self.rooms[room][1], f"go {doors}")]

    def _describe(self, room: int) -> str:
        return super()._describe(room) + ("" if room in self.path else " Off the trail.")

    def _back(self):
        came = self.stack.pop()
        if came not in self.path:
            doors = self.rooms[self.stack[-1]][0]
            # off-trail rooms can lead back into each other, so the door may have locked already
            door = next((d for d, r in doors.items() if r == came), None)
            if door is not None:
                del doors[door]


class TrailMazeEnv(SmudgedNoteMazeEnv):
    """maze_smudged as someone who knows the trail sees it: the same layout, doors, locks and code per
    seed, with no note smudged. It is the privileged view of maze_smudged (`teacher.privileged`): a
    teacher trained here and shown the student's states this way knows the door a smudged note hides,
    as the oracle does, so its demonstrations never leave the trail and never show a recovery."""

    P_SMUDGED = 0.0  # the same draws as maze_smudged (the layout is unchanged), none below 0
    privileged_view = None


def _quoted(note: str) -> str:
    return note.split('"')[1]
