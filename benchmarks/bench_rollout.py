"""Multi-turn rollouts: sftbc's KV-cached batched loop vs one episode at a time, re-encoding each turn.

For each horizon T, the same episodes (maze, seeds 0..n-1) are rolled out twice with the same policy:
the oracle acts on a seeded coin with probability beta = 0.5, else the student, and the student
decodes greedily at every turn (`shadow`, as when measuring its per-step error), so every turn
costs a student generation and episodes run their full length.
(a) sftbc's `rollout`: all live episodes in one batch, each episode's KV cache kept across turns,
    only new tokens prefilled, the teacher's label as the draft of each greedy student turn;
(b) the same without drafts (every turn decoded token by token);
(c) the usual loop: one episode at a time, each turn re-encoding the whole conversation and calling
    `model.generate` (which caches within the turn only).
Each side runs in its own subprocess, one after the other (peak RSS is its own). Reported: steps/s,
episodes/s, conversation tokens/s, peak RSS, and whether every generated student action and every
executed action is identical on all three. Drafts pay off as far as the student says the label: the
built-in base student mostly does not, a trained one (--adapter) mostly does.

    python benchmarks/bench_rollout.py               # T = 4 16 32, writes benchmarks/results/rollout.json
    python benchmarks/bench_rollout.py --model "$(sftbc base --config recipes/demo.yaml)" \
        --env maze_smudged --adapter runs/demo/bc-T016/adapter --horizons 16 32 \
        --out benchmarks/results/rollout_trained.json    # the demo's BC student (after `make demo`)
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

from sftbc.decode import BatchedChat  # noqa: E402
from sftbc.envs import make_env  # noqa: E402
from sftbc.models import load_model, load_tokenizer, resolve_model_path  # noqa: E402
from sftbc.render import parse_action, render, turn_format  # noqa: E402
from sftbc.rollout import Student, rollout, teacher_acts  # noqa: E402
from sftbc.teachers import OracleTeacher  # noqa: E402
from sftbc.types import Context, Episode, same_action  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BETA, MAX_NEW = 0.5, 48


@torch.no_grad()
def reencoding_rollout(model, tok, env_name: str, T: int, seeds: list[int]) -> list[dict]:
    """The baseline: one episode at a time, the whole conversation encoded afresh every turn."""
    teacher, stop = OracleTeacher(), tok.convert_tokens_to_ids(turn_format(tok).end)
    out = []
    for seed in seeds:
        env = make_env(env_name, T)
        msgs, tools = env.reset(seed)
        msgs, executed, mine, labels = list(msgs), [], [], []
        for turn in range(env.max_steps):
            label = teacher.label([Context(tuple(msgs), tuple(tools), Episode(env_name, T, seed))])[0]
            ids = tok(render(tok, msgs, tools, add_generation_prompt=True), add_special_tokens=False,
                      return_tensors="pt")
            gen = model.generate(**ids, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=stop,
                                 pad_token_id=tok.pad_token_id)
            student = parse_action(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=False), tok)
            action = label if teacher_acts(0, seed, turn, BETA) else student
            result = env.step(action)
            msgs += [action, *result.messages]
            executed.append(action)
            mine.append(student)
            labels.append(label)
            if result.done:
                break
        out.append({"executed": executed, "student": mine, "label": labels, "messages": msgs, "tools": tools})
    return out


def cached_rollout(model, tok, env_name: str, T: int, seeds: list[int]) -> list[dict]:
    trajs = rollout(env_name, T, seeds, OracleTeacher(), Student(model, tok, MAX_NEW), beta=BETA, shadow=True)
    return [{"executed": [s.action for s in t.steps], "student": [s.student_action for s in t.steps],
             "label": [s.label for s in t.steps],
             "messages": list(t.messages), "tools": t.tools} for t in trajs]


def worker(kind: str, model_path: str, adapter: str | None, env: str, T: int, episodes: int) -> None:
    model, tok = load_model(model_path, adapter, merge=True), load_tokenizer(model_path)
    if kind == "nodraft":
        BatchedChat.draft = lambda self, action: []
    run = reencoding_rollout if kind == "reencode" else cached_rollout
    run(model, tok, env, 2, [10_000])  # warm-up: first-call allocations are not what we measure
    t0 = time.time()
    eps = run(model, tok, env, T, list(range(episodes)))
    wall = time.time() - t0
    steps = sum(len(e["executed"]) for e in eps)
    tokens = sum(len(tok(render(tok, e["messages"], e["tools"]), add_special_tokens=False)["input_ids"]) for e in eps)
    actions = [[[m.to_dict() for m in e[k]] for k in ("executed", "student")] for e in eps]
    emit({"wall_s": round(wall, 2), "steps": steps, "steps_per_s": round(steps / wall, 2),
          "episodes_per_s": round(len(eps) / wall, 3), "tokens_per_s": round(tokens / wall),
          # how often the student says the label: what the drafts save depends on it
          "agree": round(sum(same_action(x, y) for e in eps for x, y in zip(e["label"], e["student"])) / steps, 3),
          "actions": actions})


KINDS = ("cached", "nodraft", "reencode")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--horizons", type=int, nargs="+", default=[4, 16, 32])
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--env", default="maze")
    ap.add_argument("--model", default="tiny", help="student: 'tiny' (built-in) or a model directory")
    ap.add_argument("--adapter", default="", help="a LoRA adapter of that model to merge in (a trained student)")
    ap.add_argument("--out", type=Path, default=RESULTS / "rollout.json")
    ap.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.model, args.adapter or None, args.env, args.horizons[0], args.episodes)
    model = resolve_model_path(args.model)
    rows = []
    for T in args.horizons:
        res = {kind: spawn(__file__, "--worker", kind, "--model", model, "--adapter", args.adapter, "--env", args.env,
                           "--horizons", T, "--episodes", args.episodes) for kind in KINDS}
        actions = [r.pop("actions") for r in res.values()]
        a, n, b = res.values()
        rows.append({"T": T, **res, "steps_per_s_ratio": round(a["steps_per_s"] / b["steps_per_s"], 2),
                     "draft_ratio": round(a["steps_per_s"] / n["steps_per_s"], 2),
                     "actions_identical": all(x == actions[0] for x in actions)})
        print(f"T={T}: done", flush=True)
    print(f"{'T':>3} {'steps':>5} {'agree':>5} {'steps/s cached':>14} {'no drafts':>9} {'re-enc':>7} {'ratio':>6} "
          f"{'drafts':>6} {'RSS MB c/n/r':>14} {'identical':>9}")
    for r in rows:
        a, n, b = r["cached"], r["nodraft"], r["reencode"]
        print(f"{r['T']:>3} {a['steps']:>5} {a['agree']:>5} {a['steps_per_s']:>14} {n['steps_per_s']:>9} "
              f"{b['steps_per_s']:>7} {r['steps_per_s_ratio']:>6} {r['draft_ratio']:>6} "
              f"{a['peak_rss_mb']:>4}/{n['peak_rss_mb']}/{b['peak_rss_mb']:<4} {str(r['actions_identical']):>9}")
    write_results(args.out, {"benchmark": "rollout", "env": args.env, "model": model, "adapter": args.adapter or None,
                             "episodes": args.episodes, "beta": BETA, "torch_threads": torch.get_num_threads(),
                             "rows": rows})


if __name__ == "__main__":
    main()
