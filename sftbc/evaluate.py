"""Held-out evaluation per horizon.

For every T: the student acts alone on held-out seeds (success, mistakes = steps where its own action
differs from the teacher's label at the state it is in, steps), and the teacher acts with the
student shadowing it (epsilon = per-step disagreement on the teacher's own state distribution).
"""

from __future__ import annotations

from sftbc.envs import eval_seeds
from sftbc.rollout import Student, rollout
from sftbc.teachers import Teacher
from sftbc.types import Trajectory, same_action


def horizon_metrics(T: int, own: list[Trajectory], expert: list[Trajectory] | None) -> dict:
    """`own`: the student's rollouts; `expert`: the teacher's rollouts with the student shadowing (or None)."""
    row = {
        "horizon": T,
        "episodes": len(own),
        "success_rate": sum(t.success for t in own) / len(own),
        "mistakes_mean": sum(not s.agrees for t in own for s in t.steps) / len(own),
        "steps_mean": sum(len(t.steps) for t in own) / len(own),
    }
    if expert is not None:
        expert_steps = [s for t in expert for s in t.steps]
        row["eps"] = sum(not same_action(s.student_action, s.label) for s in expert_steps) / len(expert_steps)
        row["eps_steps"] = len(expert_steps)
    return row


def evaluate(student: Student, teacher: Teacher, env: str, horizons: list[int], episodes: int,
             eps: bool = True) -> list[dict]:
    """Per-horizon metrics on held-out seeds; `eps=False` skips the shadowed teacher rollouts (and eps)."""
    seeds = eval_seeds(episodes)
    rows = []
    for T in horizons:
        own = rollout(env, T, seeds, teacher, student, beta=0.0, desc=f"eval {env} T={T}")
        expert = rollout(env, T, seeds, teacher, student, beta=1.0, shadow=True, desc=f"eps {env} T={T}") if eps else None
        rows.append(horizon_metrics(T, own, expert))
    return rows
