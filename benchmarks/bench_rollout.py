"""Multi-turn rollouts: sftbc's KV-cached batched loop vs one episode at a time, re-encoding each turn.

For each horizon T, the same episodes (maze, seeds 0..n-1) are rolled out twice with the same policy:
the oracle acts on a seeded coin with probability beta = 0.5, else the student, and the student
decodes greedily at every turn (`shadow`, as when measuring its per-step error), so every turn
costs a student generation and episodes run their full length.
(a) sftbc's `rollout`: all live episodes in one batch, each episode's KV cache kept across turns,
    only new tokens prefilled;
(b) the usual loop: one episode at a time, each turn re-encoding the whole conversation and calling
    `model.generate` (which caches within the turn only).
Each side runs in its own subprocess, one after the other (peak RSS is its own). Reported: steps/s,
episodes/s, conversation tokens/s, peak RSS, and whether every generated student action and every
executed action is identical.

    python benchmarks/bench_rollout.py               # T = 4 16 32, writes benchmarks/results/rollout.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from common import emit, spawn, write_results  # noqa: E402

from sftbc.envs import make_env  # noqa: E402
from sftbc.models import load_model, load_tokenizer, resolve_model_path  # noqa: E402
from sftbc.render import IM_END, parse_action, render  # noqa: E402
from sftbc.rollout import Student, rollout, teacher_acts  # noqa: E402
from sftbc.teachers import OracleTeacher  # noqa: E402
from sftbc.types import Context, Episode  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BETA, MAX_NEW = 0.5, 48


@torch.no_grad()
def reencoding_rollout(model, tok, T: int, seeds: list[int]) -> list[dict]:
    """The baseline: one episode at a time, the whole conversation encoded afresh every turn."""
    teacher, stop = OracleTeacher(), tok.convert_tokens_to_ids(IM_END)
    out = []
    for seed in seeds:
        env = make_env("maze", T)
        msgs, tools = env.reset(seed)
        msgs, executed, mine = list(msgs), [], []
        for turn in range(env.max_steps):
            label = teacher.label([Context(tuple(msgs), tuple(tools), Episode("maze", T, seed))])[0]
            ids = tok(render(tok, msgs, tools, add_generation_prompt=True), add_special_tokens=False,
                      return_tensors="pt")
            gen = model.generate(**ids, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=stop,
                                 pad_token_id=tok.pad_token_id)
            student = parse_action(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=False))
            action = label if teacher_acts(0, seed, turn, BETA) else student
            result = env.step(action)
            msgs += [action, *result.messages]
            executed.append(action)
            mine.append(student)
            if result.done:
                break
        out.append({"executed": executed, "student": mine, "messages": msgs, "tools": tools})
    return out


def cached_rollout(model, tok, T: int, seeds: list[int]) -> list[dict]:
    trajs = rollout("maze", T, seeds, OracleTeacher(), Student(model, tok, MAX_NEW), beta=BETA, shadow=True)
    return [{"executed": [s.action for s in t.steps], "student": [s.student_action for s in t.steps],
             "messages": list(t.messages), "tools": t.tools} for t in trajs]


def worker(kind: str, model_path: str, T: int, episodes: int) -> None:
    model, tok = load_model(model_path), load_tokenizer(model_path)
    run = cached_rollout if kind == "cached" else reencoding_rollout
    run(model, tok, 2, [10_000])  # warm-up: first-call allocations are not what we measure
    t0 = time.time()
    eps = run(model, tok, T, list(range(episodes)))
    wall = time.time() - t0
    steps = sum(len(e["executed"]) for e in eps)
    tokens = sum(len(tok(render(tok, e["messages"], e["tools"]), add_special_tokens=False)["input_ids"]) for e in eps)
    actions = [[[m.to_dict() for m in e[k]] for k in ("executed", "student")] for e in eps]
    emit({"wall_s": round(wall, 2), "steps": steps, "steps_per_s": round(steps / wall, 2),
          "episodes_per_s": round(len(eps) / wall, 3), "tokens_per_s": round(tokens / wall), "actions": actions})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--horizons", type=int, nargs="+", default=[4, 16, 32])
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--model", default="tiny", help="student: 'tiny' (built-in) or a model directory")
    ap.add_argument("--out", type=Path, default=RESULTS / "rollout.json")
    ap.add_argument("--worker", choices=["cached", "reencode"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.model, args.horizons[0], args.episodes)
    model = resolve_model_path(args.model)
    rows = []
    for T in args.horizons:
        a, b = (spawn(__file__, "--worker", kind, "--model", model, "--horizons", T, "--episodes", args.episodes)
                for kind in ("cached", "reencode"))
        same = a.pop("actions") == b.pop("actions")
        rows.append({"T": T, "cached": a, "reencode": b, "steps_per_s_ratio": round(a["steps_per_s"] / b["steps_per_s"], 2),
                     "actions_identical": same})
        print(f"T={T}: done", flush=True)
    print(f"{'T':>3} {'steps':>5} {'steps/s cached':>14} {'steps/s re-enc':>14} {'ratio':>6} {'tok/s c/r':>13} "
          f"{'RSS MB c/r':>11} {'identical':>9}")
    for r in rows:
        a, b = r["cached"], r["reencode"]
        print(f"{r['T']:>3} {a['steps']:>5} {a['steps_per_s']:>14} {b['steps_per_s']:>14} {r['steps_per_s_ratio']:>6} "
              f"{a['tokens_per_s']:>6}/{b['tokens_per_s']:<6} {a['peak_rss_mb']:>5}/{b['peak_rss_mb']:<5} "
              f"{str(r['actions_identical']):>9}")
    write_results(args.out, {"benchmark": "rollout", "model": model, "episodes": args.episodes, "beta": BETA,
                             "torch_threads": torch.get_num_threads(), "rows": rows})


if __name__ == "__main__":
    main()
