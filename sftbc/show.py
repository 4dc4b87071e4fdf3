"""`sftbc show`: read a run's kept episodes in the terminal: the conversation, each student turn beside
the teacher's label where they differ, the first mistake marked."""

from __future__ import annotations

import json
from pathlib import Path

from sftbc.types import Message

WIDTH = 160  # characters of a message shown; a long observation is cut, with how much was left out


def load_episodes(path: str | Path) -> list[dict]:
    """The episodes of an episodes.jsonl, or of the one in a run or cell directory."""
    p = Path(path)
    p = p / "episodes.jsonl" if p.is_dir() else p
    if not p.exists():
        raise FileNotFoundError(f"{p}: no kept episodes (evaluations write episodes.jsonl; eval.keep_episodes)")
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def said(m: dict) -> str:
    """A message in one line: its text, and its tool calls as name(arg=value, ...)."""
    msg = Message.from_dict(m)
    calls = [f"{c.name}({', '.join(f'{k}={json.dumps(v)}' for k, v in c.arguments.items())})" for c in msg.tool_calls]
    text = " ".join([msg.content.strip(), *calls]).strip().replace("\n", " ")
    return text if len(text) <= WIDTH else f"{text[:WIDTH]}… (+{len(text) - WIDTH} chars)"


def format_episode(ep: dict) -> str:
    outcome = "solved" if ep["success"] else f"failed ({ep['stop']})"
    first = "" if ep.get("first_mistake") is None else f", first mistake at step {ep['first_mistake']}: {ep['first_mistake_kind']}"
    lines = [f"== seed {ep['seed']}, T = {ep['T']}: {outcome}, {ep.get('mistakes', 'n/a')} mistakes{first}"]
    step = 0
    for m in ep["messages"]:
        if m["role"] != "assistant":
            lines.append(f"   {m['role']:>9}: {said(m)}")
            continue
        s, step = ep["steps"][step], step + 1
        mark = " " if s["agrees"] is not False else "✗"
        lines.append(f"{mark} {step:>3} student: {said(s['action'])}")
        if s["agrees"] is False:
            lines.append(f"      teacher: {said(s['label'])}" + ("   <- first mistake" if step == ep.get("first_mistake") else ""))
    return "\n".join(lines)


def show(path: str | Path, failed: bool = False, n: int = 3) -> str:
    eps = [e for e in load_episodes(path) if not (failed and e["success"])]
    head = f"{len(eps)} {'failed ' if failed else ''}episodes in {path}; showing {min(n, len(eps))}"
    return "\n\n".join([head, *map(format_episode, eps[:n])])
