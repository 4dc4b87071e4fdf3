"""Trajectories <-> `datasets.Dataset` rows.

A row is TRL's conversational format, `messages` + `tools` (a JSON string, which TRL decodes), plus
label fields. `train_turns` lists which assistant turns of `messages` are teacher labels to train on:
- a trajectory whose every executed action is the teacher's label becomes one row with all turns;
- otherwise each labelled state becomes its own row: its context plus the teacher's label as the
  last assistant turn (`train_turns=[last]`), because what was executed there is not what to learn.
Tool-call arguments are stored as JSON strings: Arrow would merge the different argument dicts of
different tools into one struct full of nulls. The chat template renders both forms identically.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, concatenate_datasets, load_from_disk

from sftbc.render import tokenize_conversation
from sftbc.train import Example
from sftbc.types import Trajectory


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
    if all(s.agrees for s in traj.steps):
        actors = {s.actor for s in traj.steps}
        actor = actors.pop() if len(actors) == 1 else "mixed"
        last = max(i for i, m in enumerate(traj.messages) if m.role == "assistant")
        return [_row(traj, traj.messages[: last + 1], list(range(len(traj.steps))), -1, actor)]
    return [
        _row(traj, (*s.context.messages, s.label), [sum(m.role == "assistant" for m in s.context.messages)], t, s.actor)
        for t, s in enumerate(traj.steps)
    ]


def to_dataset(trajectories: list[Trajectory]) -> Dataset:
    rows = [r for t in trajectories for r in trajectory_rows(t)]
    if not rows:
        raise ValueError("no trajectories to turn into a dataset")
    return Dataset.from_list(rows)


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
