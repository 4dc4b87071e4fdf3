"""Held-out evaluation per horizon.

For every T: the student acts alone on held-out seeds (success, steps, tool errors), and, with
`eval.teacher_metrics`, the teacher labels every state it visits (mistakes = steps where its own action
differs from the teacher's label at the state it is in) and acts itself with the student shadowing it
(epsilon = per-step disagreement on the teacher's own state distribution). Without teacher metrics no
teacher is asked anything: with an LM teacher, evaluation then costs no teacher tokens.
"""

from __future__ import annotations

from sftbc import track
from sftbc.envs import eval_seeds, validation_seeds
from sftbc.rollout import Student, rollout
from sftbc.teachers import Teacher
from sftbc.types import Trajectory, same_action


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
    if labelled:
        row["mistakes_mean"] = sum(not s.agrees for t in own for s in t.steps) / len(own)
    row["step_limit_rate"] = sum(t.stop_reason == "step_limit" for t in own) / len(own)
    # per held-out episode, in seed order: what a comparison's intervals are recomputed from
    row["per_episode"] = [{"seed": t.seed, "success": t.success, "steps": len(t.steps), "stop": t.stop_reason,
                           "mistakes": sum(not s.agrees for s in t.steps) if labelled else None} for t in own]
    if expert is not None:
        expert_steps = [s for t in expert for s in t.steps]
        row["eps"] = sum(not same_action(s.student_action, s.label) for s in expert_steps) / len(expert_steps)
        row["eps_steps"] = len(expert_steps)
    return row


def evaluate(cfg, student: Student, teacher: Teacher | None, episodes: int | None = None, eps: bool = True,
             split: str = "eval") -> list[dict]:
    """Per-horizon metrics of `cfg.env` at `cfg.eval.horizons` on `episodes` (default `cfg.eval.episodes`)
    held-out seeds, or with split="validation" on validation seeds (for what a run looks at while it
    trains); `eps=False` skips the shadowed teacher rollouts (and eps)."""
    if not cfg.eval.teacher_metrics:
        teacher = None
    seeds = (eval_seeds if split == "eval" else validation_seeds)(episodes or cfg.eval.episodes)
    rows = []
    for T in cfg.eval.horizons:
        own = rollout(cfg.env, T, seeds, teacher, student, beta=0.0, desc=f"{split} {cfg.env} T={T}")
        expert = (rollout(cfg.env, T, seeds, teacher, student, beta=1.0, shadow=True, desc=f"{split} eps {cfg.env} T={T}")
                  if eps and teacher is not None else None)
        rows.append(horizon_metrics(T, own, expert))
        track.log({f"{split}/T{T}/{k}": v for k, v in rows[-1].items() if k != "horizon" and isinstance(v, (int, float))})
    return rows
