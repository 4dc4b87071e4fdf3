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
from sftbc.types import Message, Trajectory


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


def load_dataset_dir(path: str | Path, columns=("messages", "tools", "train_turns")) -> Dataset:
    p = Path(path)
    if not (p / "dataset_info.json").exists() and not (p / "state.json").exists():
        raise FileNotFoundError(f"{path} is not a saved dataset directory (no state.json)")
    try:
        ds = load_from_disk(str(p))
    except Exception as e:  # truncated or overwritten Arrow files, a mangled state.json: report, never skip
        raise ValueError(f"dataset {path} is corrupt ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if not isinstance(ds, Dataset):
        raise ValueError(f"dataset {path} holds splits ({', '.join(ds)}): save the one to train on")
    missing = set(columns) - set(ds.column_names)
    if missing:
        raise ValueError(f"dataset {path} lacks columns {sorted(missing)}")
    return ds


def load_data(path: str | Path) -> Dataset:
    """The demonstrations `data=` names: a `save_to_disk` directory (sftbc's own, or any dataset of
    conversations) or a JSON / JSONL file of rows, in TRL's conversational format: `messages` (HF chat
    messages; tool-call arguments as dicts or JSON strings) and optionally `tools` (JSON schemas, a list
    or a JSON string). Rows may carry sftbc's fields too; missing ones default to a plain demonstration:
    every assistant turn trained (`train_turns`), `step` -1, `actor` teacher, no env/horizon/seed. Every
    row is checked; a bad one is a one-line error naming the file, the row and the field."""
    p = Path(path)
    if p.is_dir():
        ds = load_dataset_dir(p, columns=("messages",))
        if set(FEATURES) <= set(ds.column_names):
            return ds  # sftbc's own format, as saved by a run
        rows = ds.to_list()
    elif p.suffix in (".json", ".jsonl") and p.is_file():
        rows = _read_json_rows(p)
    else:
        raise FileNotFoundError(f"data {path} is not a saved dataset directory or a .json/.jsonl file")
    if not rows:
        raise ValueError(f"data {path} holds no rows")
    return Dataset.from_list([_normalise(r, f"data {path} row {i}") for i, r in enumerate(rows)], features=FEATURES)


def _read_json_rows(p: Path) -> list:
    if p.suffix == ".json":
        try:
            rows = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"data {p} is not valid JSON ({e})") from None
        if not isinstance(rows, list):
            raise ValueError(f"data {p} must hold a list of rows")
        return rows
    rows = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"data {p} line {n} is not valid JSON ({e})") from None
    return rows


def _normalise(row, where: str) -> dict:
    """One row in sftbc's schema, checked field by field."""
    if not isinstance(row, dict):
        raise ValueError(f"{where} must be an object, got {type(row).__name__}")
    if not isinstance(row.get("messages"), list) or not row["messages"]:
        raise ValueError(f"{where} has no 'messages' (a non-empty list of chat messages)")
    try:
        messages = [Message.from_dict(m) for m in row["messages"]]
    except ValueError as e:
        raise ValueError(f"{where}: messages: {e}") from None
    n_turns = sum(m.role == "assistant" for m in messages)
    tools = row.get("tools") or []
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise ValueError(f"{where}: tools is not valid JSON") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ValueError(f"{where}: tools must be a list of tool schemas")
    turns = row.get("train_turns")
    turns = list(range(n_turns)) if turns is None else turns
    if not n_turns or not turns or not all(isinstance(t, int) and 0 <= t < n_turns for t in turns):
        raise ValueError(f"{where}: train_turns must name assistant turns (0..{n_turns - 1}), "
                         f"and the row needs at least one" if n_turns else f"{where} has no assistant turn to train on")
    fields = {k: row.get(k) for k in ("env", "horizon", "seed")}
    step = row.get("step", -1)
    for k, v in [*fields.items(), ("step", step)]:
        if v is not None and not isinstance(v, str if k == "env" else int):
            raise ValueError(f"{where}: {k} must be {'a string' if k == 'env' else 'an integer'}")
    return {"messages": [m.to_dict(json_arguments=True) for m in messages], "tools": json.dumps(tools),
            "step": -1 if step is None else step, "actor": str(row.get("actor") or "teacher"), "train_turns": turns,
            **fields}


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
