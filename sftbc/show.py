"""Reading a run's kept episodes: `sftbc show` in the terminal, and a static HTML page per compare cell
(rich's export): the conversation, each student turn beside the teacher's label where they differ, the
first mistake marked, failures first."""

from __future__ import annotations

import json
import io
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


def html_page(episodes: list[dict], title: str) -> str:
    """A static page of `episodes`, failures first: a heading per episode, disagreeing turns in red, the
    first mistake in bold (rich renders the same lines as the terminal, as HTML)."""
    from rich.console import Console
    from rich.text import Text

    console = Console(record=True, width=WIDTH + 40, file=io.StringIO())
    console.print(Text(title, style="bold"))
    for ep in sorted(episodes, key=lambda e: e["success"]):  # stable: failures first, each in seed order
        for line in format_episode(ep).splitlines():
            style = ("bold" if line.startswith("==") else "bold red" if "<- first mistake" in line
                     else "red" if line.startswith("✗") or line.startswith("      teacher:") else "")
            console.print(Text(line, style=style))
        console.print()
    return console.export_html(inline_styles=True, code_format=_PAGE.replace("TITLE", title))


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>TITLE</title></head>
<body><pre style="font-family:monospace">{code}</pre></body></html>
"""
