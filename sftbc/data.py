"""Trajectories <-> `datasets.Dataset` rows.

A row is TRL's conversational format, `messages` + `tools` (a JSON string, which TRL decodes), plus
label fields. `train_turns` lists which assistant turns of `messages` are teacher labels to train on.
A trajectory becomes:
- one row of the conversation as executed, up to its last action (`step=-1`), training on every turn whose executed
  action equals the teacher's label (a pure demonstration is just this row, with all its turns), and
- right after it, one row per disagreeing step (`step=t`): its context plus the teacher's label as
  the last assistant turn (`train_turns=[last]`), because what was executed there is not what to learn.
So there is exactly one label per labelled state. Each row alone is a valid conversation (and
`per_step_rows` gives TRL's prompt/completion rows), but `to_examples` does not train the
disagreeing rows on their own: it appends each label as a branch of the executed conversation's
sequence (see `train.Example`), so a T-step trajectory costs O(T) tokens instead of one context per
disagreement, O(T^2) when the student is mostly wrong.
Tool-call arguments are stored as JSON strings: Arrow would merge the different argument dicts of
different tools into one struct full of nulls. The chat template renders both forms identically.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, Features, List, Value, concatenate_datasets, load_from_disk

from sftbc import dist
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
    actors = {s.actor for s in traj.steps}
    # agreeing turns are written as the teacher's label: the same tool calls as executed (so the
    # conversation is unchanged for the environment), and exactly the teacher's tokens to train on
    turns = [i for i, m in enumerate(traj.messages) if m.role == "assistant"]
    messages = list(traj.messages[: turns[-1] + 1])  # the last tool result trains nothing
    for t in agree:
        messages[turns[t]] = traj.steps[t].label
    rows = [_row(traj, messages, agree, -1, actors.pop() if len(actors) == 1 else "mixed")]
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
    """Main process only: the others hold the same dataset in memory."""
    if dist.is_main():
        ds.save_to_disk(str(path))


def load_dataset_dir(path: str | Path) -> Dataset:
    p = Path(path)
    if not (p / "dataset_info.json").exists() and not (p / "state.json").exists():
        raise FileNotFoundError(f"{path} is not a saved dataset directory (no state.json)")
    try:
        ds = load_from_disk(str(p))
    except Exception as e:  # truncated or overwritten Arrow files, a mangled state.json: report, never skip
        raise ValueError(f"dataset {path} is corrupt ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    missing = {"messages", "tools", "train_turns"} - set(ds.column_names)
    if missing:
        raise ValueError(f"dataset {path} lacks columns {sorted(missing)}")
    return ds


def merge(datasets: list[Dataset]) -> Dataset:
    return concatenate_datasets(datasets)


def per_step_rows(ds: Dataset) -> list[dict]:
    """One TRL conversational prompt/completion row per label: the state's context as `prompt`, the
    teacher's action as `completion`. What per-step SFT toolkits train on; O(T^2) tokens per trajectory."""
    out = []
    for row in ds:
        turns = [i for i, m in enumerate(row["messages"]) if m["role"] == "assistant"]
        for t in row["train_turns"]:
            out.append({"prompt": row["messages"][: turns[t]], "completion": [row["messages"][turns[t]]],
                        "tools": row["tools"]})
    return out


def _tokenize_row(tokenizer, messages, tools, train_turns) -> tuple[list[int], list[int]]:
    """Token ids and the loss mask over the assistant tokens of `train_turns`."""
    ids, amask = tokenize_conversation(tokenizer, messages, tools)
    keep, turn, prev = set(train_turns), -1, 0
    mask = []
    for m in amask:  # each contiguous run of assistant tokens is one assistant turn
        if m and not prev:
            turn += 1
        mask.append(1 if m and turn in keep else 0)
        prev = m
    return ids, mask


def to_examples(ds: Dataset, tokenizer, branches: bool = True) -> list[Example]:
    """Tokenize rows into training sequences. With `branches`, a disagreeing row (`step >= 0`) that
    continues the executed conversation before it becomes a branch of that conversation's sequence,
    starting one token before its label (that token's output predicts the label's first token); any
    other row, or every row without `branches`, is a sequence of its own. Same loss either way."""
    out: list[Example] = []
    trunk: Example | None = None
    for row in ds:
        ids, mask = _tokenize_row(tokenizer, row["messages"], row["tools"], row["train_turns"])
        if branches and row["step"] >= 0 and trunk is not None and any(mask):
            start = mask.index(1) - 1
            n_trunk = trunk.branches[0][0] if trunk.branches else len(trunk.input_ids)
            if 0 < start <= n_trunk and trunk.input_ids[:start] == ids[:start]:
                trunk.branches.append((len(trunk.input_ids), start))
                trunk.input_ids += ids[start:]
                trunk.loss_mask += mask[start:]  # mask[start] is 0: the branch's first token is context
                continue
        ex = Example(ids, mask)
        out.append(ex)
        trunk = ex if row["step"] < 0 else None
    return [e for e in out if any(e.loss_mask)]  # a fully disagreeing trunk whose branches all attached
