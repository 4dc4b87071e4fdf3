"""Built-in tool-use environments, by name."""

from __future__ import annotations

from sftbc.envs.base import Env, StepResult
from sftbc.envs.calc import CalcEnv
from sftbc.envs.maze import FixedTrustMazeEnv, MazeEnv, RivalMazeEnv, SmudgedNoteMazeEnv, TrailMazeEnv
from sftbc.types import Episode, Message

ENVS = {"maze": MazeEnv, "maze_fixed": FixedTrustMazeEnv, "maze_rivals": RivalMazeEnv, "maze_smudged": SmudgedNoteMazeEnv,
        "maze_trail": TrailMazeEnv, "calc": CalcEnv}

# Evaluation seeds live far above any training seed, so held-out episodes are never trained on.
EVAL_SEED_OFFSET = 1_000_000_000


def make_env(name: str, horizon: int, max_steps: int | None = None) -> Env:
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r}; choose one of {sorted(ENVS)}")
    return ENVS[name](horizon, max_steps)


def privileged_view(env: str) -> str:
    """The env whose observations a privileged teacher gets for `env` (same layout and dynamics per seed)."""
    view = getattr(ENVS.get(env), "privileged_view", None)
    if view is None:
        raise ValueError(f"env {env!r} has no privileged view for a teacher (teacher.privileged needs one, e.g. maze_smudged)")
    return view


def privileged_messages(episode: Episode, messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """`messages` (an episode of `episode.env`) as its privileged view shows them: the same assistant
    actions replayed in the view's env, so every observation is the one that env gives."""
    env = make_env(privileged_view(episode.env), episode.horizon)
    out = list(env.reset(episode.seed)[0])
    for m in messages[len(out):]:
        if m.role == "assistant":
            out += [m, *env.step(m).messages]
    if [m.role for m in out] != [m.role for m in messages]:
        raise ValueError(f"{episode}: the privileged view does not replay the episode turn for turn")
    return tuple(out)


def train_seeds(n: int, start: int = 0) -> list[int]:
    if start + n > EVAL_SEED_OFFSET:
        raise ValueError(f"training seeds must stay below {EVAL_SEED_OFFSET}")
    return list(range(start, start + n))


def eval_seeds(n: int) -> list[int]:
    return list(range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + n))


__all__ = ["Env", "StepResult", "ENVS", "make_env", "train_seeds", "eval_seeds", "EVAL_SEED_OFFSET", "privileged_view",
           "privileged_messages"]
