"""Held-out evaluation per horizon.

For every T: the student acts alone on held-out seeds (success, steps, tool errors), and, with
`eval.teacher_metrics`, the teacher labels every state it visits (mistakes = steps where its own action
differs from the teacher's label at the state it is in) and acts itself with the student shadowing it
(epsilon = per-step disagreement on the teacher's own state distribution). Without teacher metrics no
teacher is asked anything: with an LM teacher, evaluation then costs no teacher tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from sftbc import dist, track
from sftbc.envs import eval_seeds, make_env, validation_seeds
from sftbc.rollout import Student, rollout
from sftbc.teachers import Teacher
from sftbc.types import Trajectory, same_action

MISTAKE_KINDS = ("malformed", "ended_early", "did_not_end", "wrong_tool", "wrong_arguments")


def first_mistake(t: Trajectory) -> tuple[int, str] | None:
    """Where the student, acting alone, first departed from the teacher's label (the step's index) and how,
    from the parsed actions and a replay of the episode (no per-env code): `malformed` (no call, several,
    or a name that is not a tool), `ended_early` (its call ended the episode where the teacher went on),
    `did_not_end` (the teacher's call would have ended it), `wrong_tool`, or `wrong_arguments` (the
    teacher's tool, other arguments). A call to a real tool with arguments its schema refuses is a
    wrong tool or wrong arguments, not malformed: the student chose that tool."""
    i = next((i for i, s in enumerate(t.steps) if not s.agrees), None)
    if i is None:
        return None
    step = t.steps[i]
    calls = step.action.tool_calls
    if len(calls) != 1 or calls[0].name not in {tool["function"]["name"] for tool in step.context.tools}:
        return i, "malformed"
    if i == len(t.steps) - 1 and t.stop_reason == "answer":
        return i, "ended_early"
    env = make_env(t.episode.env, t.horizon)  # envs are seeded: the same state, to try the teacher's call there
    env.reset(t.seed)
    for s in t.steps[:i]:
        env.step(s.action)
    if env.step(step.label).done:
        return i, "did_not_end"
    return i, "wrong_tool" if step.action.tool_calls[0].name != step.label.tool_calls[0].name else "wrong_arguments"


def compounding(own: list[Trajectory], firsts: list[tuple[int, str] | None]) -> dict:
    """How mistakes compound, over the episodes with at least one (`firsts`: each episode's first
    mistake): where the first falls (its mean 1-based step), how many follow it, how often the student
    still succeeds (recovery_rate) or at least ends agreeing with the teacher again (rejoin_rate), and
    what kind of mistake came first."""
    erred = [(t, f) for t, f in zip(own, firsts) if f is not None]
    kinds = {k: sum(kind == k for _, (_, kind) in erred) for k in MISTAKE_KINDS}
    if not erred:
        return {"first_mistake_mean": None, "mistakes_after_first_mean": None, "recovery_rate": None,
                "rejoin_rate": None, "first_mistakes": kinds}
    n = len(erred)
    return {"first_mistake_mean": sum(i + 1 for _, (i, _) in erred) / n,
            "mistakes_after_first_mean": sum(sum(not s.agrees for s in t.steps[i + 1:]) for t, (i, _) in erred) / n,
            "recovery_rate": sum(t.success for t, _ in erred) / n,
            "rejoin_rate": sum(t.steps[-1].agrees for t, _ in erred) / n,
            "first_mistakes": kinds}


def horizon_metrics(T: int, own: list[Trajectory], expert: list[Trajectory] | None) -> dict:
    """`own`: the student's rollouts (labelled, or not when no teacher was asked); `expert`: the teacher's
    rollouts with the student shadowing (or None)."""
    row = {
        "horizon": T,
        "episodes": len(own),
        "success_rate": sum(t.success for t in own) / len(own),
        "steps_mean": sum(len(t.steps) for t in own) / len(own),
        "tool_errors": sum(t.tool_errors for t in own),
    }
    labelled = all(s.label is not None for t in own for s in t.steps)
    firsts = [first_mistake(t) if labelled else None for t in own]
    if labelled:
        row["mistakes_mean"] = sum(not s.agrees for t in own for s in t.steps) / len(own)
        row.update(compounding(own, firsts))
    row["step_limit_rate"] = sum(t.stop_reason == "step_limit" for t in own) / len(own)
    # per held-out episode, in seed order: what a comparison's intervals are recomputed from
    row["per_episode"] = [{"seed": t.seed, "success": t.success, "steps": len(t.steps), "stop": t.stop_reason,
                           "mistakes": sum(not s.agrees for s in t.steps) if labelled else None,
                           "first_mistake": None if f is None else f[0] + 1, "first_mistake_kind": None if f is None else f[1]}
                          for t, f in zip(own, firsts)]
    if expert is not None:
        expert_steps = [s for t in expert for s in t.steps]
        row["eps"] = sum(not same_action(s.student_action, s.label) for s in expert_steps) / len(expert_steps)
        row["eps_steps"] = len(expert_steps)
    return row


def evaluate(cfg, student: Student, teacher: Teacher | None, episodes: int | None = None, eps: bool = True,
             split: str = "eval", keep: Path | None = None) -> list[dict]:
    """Per-horizon metrics of `cfg.env` at `cfg.eval.horizons` on `episodes` (default `cfg.eval.episodes`)
    held-out seeds, or with split="validation" on validation seeds (for what a run looks at while it
    trains); `eps=False` skips the shadowed teacher rollouts (and eps). `keep`: a JSONL file for up to
    `cfg.eval.keep_episodes` of the student's episodes per horizon (`episode_record`), failures first."""
    if not cfg.eval.teacher_metrics:
        teacher = None
    seeds = (eval_seeds if split == "eval" else validation_seeds)(episodes or cfg.eval.episodes)
    rows, kept = [], []
    for T in cfg.eval.horizons:
        own = rollout(cfg.env, T, seeds, teacher, student, beta=0.0, desc=f"{split} {cfg.env} T={T}")
        expert = (rollout(cfg.env, T, seeds, teacher, student, beta=1.0, shadow=True, desc=f"{split} eps {cfg.env} T={T}")
                  if eps and teacher is not None else None)
        rows.append(horizon_metrics(T, own, expert))
        track.log({f"{split}/T{T}/{k}": v for k, v in rows[-1].items() if k != "horizon" and isinstance(v, (int, float))})
        if keep is not None:  # failures first, each in seed order (a stable sort)
            chosen = sorted(zip(own, rows[-1]["per_episode"]), key=lambda pair: pair[0].success)[:cfg.eval.keep_episodes]
            kept += [episode_record(t, e, split) for t, e in chosen]
    if kept and dist.is_main():
        keep.parent.mkdir(parents=True, exist_ok=True)
        tmp = keep.with_name(keep.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
        tmp.replace(keep)  # whole or not at all
    return rows


def episode_record(t: Trajectory, outcome: dict, split: str) -> dict:
    """One episode as `sftbc show` reads it: the conversation, and per step the executed (student's)
    action, the teacher's label and whether they agree."""
    return {"split": split, "T": t.horizon, **{k: outcome[k] for k in ("seed", "success", "stop", "mistakes",
                                                                      "first_mistake", "first_mistake_kind")},
            "messages": [m.to_dict() for m in t.messages], "tools": list(t.tools),
            "steps": [{"action": s.action.to_dict(), "label": None if s.label is None else s.label.to_dict(),
                       "agrees": None if s.label is None else s.agrees} for s in t.steps]}
