"""Trajectories <-> `datasets.Dataset` rows.

A row is TRL's conversational format, `messages` + `tools` (a JSON string, which TRL decodes), plus
label fields. `train_turns` lists which assistant turns of `messages` are teacher labels to train on.
A trajectory becomes:
- one row of the conversation as executed, training on every turn whose executed action equals the
  teacher's label (a pure demonstration is just this row, with all its turns), and
- one row per disagreeing step: its context plus the teacher's label as the last assistant turn
  (`train_turns=[last]`), because what was executed there is not what to learn.
So the label tokens are exactly one per labelled state, and the rows cost O(T) tokens plus one
context per disagreement rather than one context per step.
Tool-call arguments are stored as JSON strings: Arrow would merge the different argument dicts of
different tools into one struct full of nulls. The chat template renders both forms identically.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, Features, List, Value, concatenate_datasets, load_from_disk

from sftbc.render import tokenize_conversation
from sftbc.train import Example
from sftbc.types import Trajectory


# One fixed schema, so that datasets of different rounds (which may lack, say, every named tool
# message) always concatenate; missing fields are null.
_CALL = {"type": Value("string"), "function": {"name": Value("string"), "arguments": Value("string")}}
_MESSAGE = {"role": Value("string"), "content": Value("string"), "tool_calls": List(_CALL), "name": Value("string")}
FEATURES = Features({"messages": List(_MESSAGE), "tools": Value("string"), "env": Value("string"),
                     "horizon": Value("int64"), "seed": Value("int64"), "step": Value("int64"),
                     "actor": Value("string"), "train_turns": List(Value("int64"))})


def _row(traj: Trajectory, messages, train_turns: list[int], step: int, actor: str) -> dict:
    return {
        "messages": [m.to_dict(json_arguments=True) for m in messages],
        "tools": json.dumps(list(traj.tools)),
        "env": traj.episode.env,
        "horizon": traj.episode.horizon,
        "seed": traj.episode.seed,
        "step": step,  # -1: the whole trajectory
        "actor": actor,
        "train_turns": train_turns,
    }


def trajectory_rows(traj: Trajectory) -> list[dict]:
    if any(s.label is None for s in traj.steps):
        raise ValueError(f"trajectory {traj.episode} has unlabelled steps; SFT data needs a teacher label at every step")
    agree = [t for t, s in enumerate(traj.steps) if s.agrees]
    rows = []
    if agree:
        actors = {traj.steps[t].actor for t in agree}
        actor = actors.pop() if len(actors) == 1 else "mixed"
        # agreeing turns are written as the teacher's label: the same tool calls as executed (so the
        # conversation is unchanged for the environment), and exactly the teacher's tokens to train on
        turns = [i for i, m in enumerate(traj.messages) if m.role == "assistant"]
        messages = list(traj.messages[: turns[agree[-1]] + 1])
        for t in agree:
            messages[turns[t]] = traj.steps[t].label
        rows.append(_row(traj, messages, agree, -1, actor))
    for t, s in enumerate(traj.steps):
        if not s.agrees:
            rows.append(_row(traj, (*s.context.messages, s.label), [t], t, s.actor))
    return rows


def to_dataset(trajectories: list[Trajectory]) -> Dataset:
    rows = [r for t in trajectories for r in trajectory_rows(t)]
    if not rows:
        raise ValueError("no trajectories to turn into a dataset")
    return Dataset.from_list(rows, features=FEATURES)


def save_dataset(ds: Dataset, path: str | Path):
    ds.save_to_disk(str(path))


def load_dataset_dir(path: str | Path) -> Dataset:
    p = Path(path)
    if not (p / "dataset_info.json").exists() and not (p / "state.json").exists():
        raise FileNotFoundError(f"{path} is not a saved dataset directory (no state.json)")
    ds = load_from_disk(str(p))
    missing = {"messages", "tools", "train_turns"} - set(ds.column_names)
    if missing:
        raise ValueError(f"dataset {path} lacks columns {sorted(missing)}")
    return ds


def merge(datasets: list[Dataset]) -> Dataset:
    return concatenate_datasets(datasets)


def to_examples(ds: Dataset, tokenizer) -> list[Example]:
    """Tokenize rows; the loss mask covers the assistant tokens of the `train_turns` only."""
    out = []
    for row in ds:
        ids, amask = tokenize_conversation(tokenizer, row["messages"], row["tools"])
        keep, turn, prev = set(row["train_turns"]), -1, 0
        mask = []
        for m in amask:  # each contiguous run of assistant tokens is one assistant turn
            if m and not prev:
                turn += 1
            mask.append(1 if m and turn in keep else 0)
            prev = m
        out.append(Example(ids, mask))
    return out
