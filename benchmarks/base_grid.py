"""Does the default tiny student learn each env? Issue 30's table: per env and base seed, the copy probe
of the env's own default base and BC at T = 1 from it (240 oracle labels, 100 held-out episodes).

    python benchmarks/base_grid.py [SEEDS] [ENV ...] [key=value ...]

SEEDS: comma-separated base seeds (default 0,1,2); ENV: env references (default: the built-in envs and
the three examples); key=value: config overrides every cell gets (e.g. tiny.epochs=4.0). Each cell is
`sftbc bc env=ENV tiny.seed=S train.seed=S` plus the T = 1 settings below, nothing per env: a user env
is added to its base's corpus as `sftbc` always does. Cells are appended to
benchmarks/results/base_grid.jsonl as they finish; a cell already there (same env, seed and
overrides) is not run again, so an interrupted grid continues where it stopped. Prints the table.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from sftbc import cli
from sftbc.config import load_config
from sftbc.models import tiny_model_dir
from sftbc.probe import base_copy_scores
from sftbc.stats import t_interval, wilson

ENVS = ["maze", "maze_smudged", "calc", "examples/greenhouse/greenhouse.py:Greenhouse",
        "examples/dispatch/dispatch.py:Dispatch", "examples/orders/orders.py:Orders"]
T1 = ["collect.horizons=[1]", "collect.labels_per_horizon=240", "eval.horizons=[1]", "eval.episodes=100"]
OUT = Path(__file__).parent / "results" / "base_grid.jsonl"


def cell(env: str, seed: int, overrides: list[str]) -> dict:
    tag = hashlib.sha256(" ".join(overrides).encode()).hexdigest()[:6]
    name = f"base_grid/{env.split(':')[-1].lower()}-{seed}-{tag}"
    keys = [f"env={env}", f"tiny.seed={seed}", f"train.seed={seed}", f"name={name}", *T1, *overrides]
    if cli.main(["bc", *keys]) != 0:
        raise SystemExit(f"cell {env} seed {seed} failed")
    cfg = load_config(None, keys)
    base = tiny_model_dir(cfg.tiny)
    info = json.loads((base / "sftbc_base.json").read_text())
    [probe] = base_copy_scores(str(base), [env])  # probed now when the env is not in the base's corpus
    metrics = json.loads((Path(cfg.runs_dir) / name / "metrics.json").read_text())
    row = metrics["eval"][0]
    return {"env": env, "seed": seed, "overrides": overrides, "base": base.name, "base_steps": info["train"]["steps"],
            "base_wall_s": info["train"]["wall_s"], "probe_nll": probe.nll, "probe_accuracy": probe.accuracy,
            "probe_values": probe.values, "success": row["success_rate"], "episodes": row["episodes"], "wall_s": metrics["wall_s"]}


def table(rows: list[dict]) -> str:
    lines = ["| env | overrides | probe NLL / greedy, per seed | BC success at T = 1 per seed [95% Wilson] | mean [95% t over seeds] |",
             "|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["env"], " ".join(r["overrides"])), []).append(r)
    for (env, over), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        probe = ", ".join(f"{r['probe_nll']:.2f} / {r['probe_accuracy']:.2f}" for r in rs)
        succ = ", ".join("{:.2f} [{:.2f}, {:.2f}]".format(r["success"], *wilson(round(r["success"] * r["episodes"]), r["episodes"]))
                         for r in rs)
        m, lo, hi = t_interval([r["success"] for r in rs])
        mean = f"{m:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None else "")
        lines.append(f"| {env.split(':')[-1]} | {over or '(defaults)'} | {probe} | {succ} | {mean} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    seeds = [int(s) for s in argv[0].split(",")] if argv and argv[0][0].isdigit() else [0, 1, 2]
    argv = argv[1:] if argv and argv[0][0].isdigit() else argv
    envs = [a for a in argv if "=" not in a] or ENVS
    overrides = [a for a in argv if "=" in a]
    done = [json.loads(line) for line in OUT.read_text().splitlines()] if OUT.exists() else []
    for seed in seeds:
        for env in envs:
            if any(r["env"] == env and r["seed"] == seed and r["overrides"] == overrides for r in done):
                continue
            row = cell(env, seed, overrides)
            print(json.dumps(row), flush=True)
            with open(OUT, "a") as f:
                f.write(json.dumps(row) + "\n")
            done.append(row)
    print(table([r for r in done if r["env"] in envs and r["seed"] in seeds and r["overrides"] == overrides]))


if __name__ == "__main__":
    main(sys.argv[1:])
