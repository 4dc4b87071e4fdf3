"""What a trained maze student does wrong. Not a speed benchmark: a diagnostic of a comparison cell.

For each adapter given (a run's `adapter/` or a DAgger round's), at horizon T on held-out seeds:

1. **Does it tell a trusted room from an untrusted one?** At a random step of the oracle's path (a room
   signed by the trusted name) and one wrong door later (a room signed by someone else, where the
   oracle says `back`), the probability the student gives to each whole candidate action: `back()`,
   following the room's note, the other door. The rest of its mass is on malformed or other calls.
2. **What its own mistakes are.** The student plays the episodes alone at the run's
   `eval.temperature`; every step is counted by (executed call, oracle label) name, e.g. `submit|go`
   is a submit where the oracle would walk on (a valid one ends the episode there, failed).

Writes benchmarks/results/probe_student-<run name>.json.

    python benchmarks/probe_student.py runs/compare 32 bc-T032/adapter dagger-T032/round-001/adapter
"""

from __future__ import annotations

import collections
import math
import random
import sys
from pathlib import Path

import torch
from common import write_results

from sftbc.bc import load_student
from sftbc.config import load_config
from sftbc.envs import eval_seeds, make_env
from sftbc.models import resolve_model_path
from sftbc.render import to_chat, tokenize_conversation
from sftbc.rollout import rollout
from sftbc.teachers import OracleTeacher
from sftbc.types import tool_call


def action_prob(student, messages, tools, action) -> float:
    """P(the whole action | context): the product over the tokens of the final assistant turn."""
    ids, mask = tokenize_conversation(student.tokenizer, to_chat(messages + [action]), tools)
    last = max(q for q, m in enumerate(mask) if m)
    first = last
    while mask[first - 1]:
        first -= 1
    with torch.no_grad():
        logp = torch.log_softmax(student.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return math.exp(sum(logp[q - 1, ids[q]].item() for q in range(first, last + 1)))


def room_probs(student, env_name: str, T: int, n: int) -> dict:
    sums = {"trusted": collections.Counter(), "untrusted": collections.Counter()}
    rng = random.Random(0)
    for seed in eval_seeds(n):
        env = make_env(env_name, T)
        messages, tools = env.reset(seed)
        for _ in range(rng.randrange(max(T - 1, 1))):  # walk the oracle's path to a random room before the last
            a = env.oracle_action()
            messages += [a, *env.step(a).messages]
        for kind in ("trusted", "untrusted"):
            doors, _, note = env.rooms[env.stack[-1]]
            follow = note.split('"')[1]
            other = next(d for d in sorted(doors) if d != follow)
            for name, a in (("back", tool_call("back")), ("note", tool_call("go", door=follow)),
                            ("other door", tool_call("go", door=other))):
                sums[kind][name] += action_prob(student, messages, tools, a) / n
            if kind == "trusted":  # one wrong door: into a room signed by someone else
                a = tool_call("go", door=other)
                messages += [a, *env.step(a).messages]
    return {k: {name: round(p, 3) for name, p in c.items()} for k, c in sums.items()}


def mistakes(student, env_name: str, T: int, n: int) -> dict:
    counts = collections.Counter()
    trajs = rollout(env_name, T, eval_seeds(n), OracleTeacher(), student, beta=0.0)
    for t in trajs:
        for s in t.steps:
            did = s.action.tool_calls[0].name if s.action.tool_calls else "text"
            counts[f"{did}|{s.label.tool_calls[0].name}"] += 1
    return {"episodes": n, "success_rate": sum(t.success for t in trajs) / n,
            "steps": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


def main(run: str, T: int, adapters: list[str], states: int = 50, episodes: int = 30) -> dict:
    if T < 2:
        raise SystemExit("probe_student: T must be >= 2 (at T = 1 the only room is the vault, with no doors)")
    cfg = load_config(f"{run}/config.yaml", [])
    base = resolve_model_path(cfg.model, cfg.tiny)
    rows = []
    for adapter in adapters:
        student = load_student(cfg, base, f"{run}/{adapter}")
        student.model.eval()
        row = {"adapter": adapter, "T": T, "temperature": cfg.eval.temperature,
               "rooms": room_probs(student, cfg.env, T, states), "own_episodes": mistakes(student, cfg.env, T, episodes)}
        print(f"{adapter}: rooms {row['rooms']}\n  own episodes: success {row['own_episodes']['success_rate']:.2f}, "
              f"steps (executed|label) {row['own_episodes']['steps']}")
        rows.append(row)
    out = {"run": run, "env": cfg.env, "rows": rows}
    write_results(Path(__file__).parent / "results" / f"probe_student-{Path(run).name}.json", out)
    return out


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
