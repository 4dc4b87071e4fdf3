"""What the benchmarks share: each side of a comparison runs in a subprocess of its own (so its peak
RSS is its own and it has the cores to itself), and hands its result back as one JSON line."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

PREFIX = "RESULT "


def emit(result: dict) -> None:
    """Print a worker's result, with its peak resident memory."""
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(PREFIX + json.dumps(result), flush=True)


def spawn(script: str, *args: str) -> dict:
    """Run `python script args...` and return the result it emitted."""
    out = subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith(PREFIX)), None)
    if out.returncode or line is None:
        raise RuntimeError(f"{script} {' '.join(map(str, args))} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len(PREFIX):])


def write_results(path: Path, record: dict) -> None:
    """Write a benchmark's JSON (its `rows` and what they were measured with) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
