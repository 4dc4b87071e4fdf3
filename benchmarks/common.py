"""What the benchmarks share: each side of a comparison runs in a subprocess of its own (so its peak
RSS is its own and it has the cores to itself), and hands its result back as one JSON line."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

PREFIX = "RESULT "


def peak_rss_mb() -> int:
    """This process's peak resident memory. On Linux that is VmHWM: getrusage's ru_maxrss survives
    exec, so a worker would report at least the RSS of the benchmark process that spawned it."""
    try:
        with open("/proc/self/status") as f:
            return round(next(int(x.split()[1]) for x in f if x.startswith("VmHWM:")) / 1024)
    except (OSError, StopIteration):
        unit = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes there, KiB elsewhere
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit)


def emit(result: dict) -> None:
    """Print a worker's result, with its peak resident memory."""
    result["peak_rss_mb"] = peak_rss_mb()
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
