"""Built-in tool-use environments, by name."""

from __future__ import annotations

from sftbc.envs.base import Env, StepResult
from sftbc.envs.calc import CalcEnv
from sftbc.envs.maze import FixedTrustMazeEnv, MazeEnv, RivalMazeEnv, SmudgedNoteMazeEnv

ENVS = {"maze": MazeEnv, "maze_fixed": FixedTrustMazeEnv, "maze_rivals": RivalMazeEnv, "maze_smudged": SmudgedNoteMazeEnv,
        "calc": CalcEnv}

# Evaluation seeds live far above any training seed, so held-out episodes are never trained on.
EVAL_SEED_OFFSET = 1_000_000_000


def make_env(name: str, horizon: int, max_steps: int | None = None) -> Env:
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r}; choose one of {sorted(ENVS)}")
    return ENVS[name](horizon, max_steps)


def train_seeds(n: int, start: int = 0) -> list[int]:
    if start + n > EVAL_SEED_OFFSET:
        raise ValueError(f"training seeds must stay below {EVAL_SEED_OFFSET}")
    return list(range(start, start + n))


def eval_seeds(n: int) -> list[int]:
    return list(range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + n))


__all__ = ["Env", "StepResult", "ENVS", "make_env", "train_seeds", "eval_seeds", "EVAL_SEED_OFFSET"]
