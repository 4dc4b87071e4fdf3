"""Environments by reference: a built-in name, `package.module:Class`, or `path/to/file.py:Class`.

The reference string is what a run stores (configs, episodes, datasets, label-cache keys), so every
process, replay, resumed run and later `sftbc eval` re-creates the same class from it. A file path
is relative to the working directory. Loading a user's module executes the user's own code, as
importing it would; model output is never executed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from functools import cache
from pathlib import Path

from sftbc.envs.base import BadCall, Env, StepResult
from sftbc.envs.calc import CalcEnv
from sftbc.envs.maze import FixedTrustMazeEnv, MazeEnv, RivalMazeEnv, SmudgedNoteMazeEnv, TrailMazeEnv
from sftbc.envs.tool import ToolEnv
from sftbc.types import Episode, Message

ENVS = {"maze": MazeEnv, "maze_fixed": FixedTrustMazeEnv, "maze_rivals": RivalMazeEnv, "maze_smudged": SmudgedNoteMazeEnv,
        "maze_trail": TrailMazeEnv, "calc": CalcEnv}

# Evaluation seeds live far above any training seed, so held-out episodes are never trained on, and
# validation seeds (what a run may look at while it trains: DAgger's rounds, distillation's curve)
# above those, so nothing a run chooses is chosen on the episodes it is finally evaluated on.
EVAL_SEED_OFFSET = 1_000_000_000
VALIDATION_SEED_OFFSET = 2_000_000_000


@cache
def env_class(ref: str) -> type:
    """The class an env reference names; a ValueError naming the reference when it names none."""
    if ref in ENVS:
        return ENVS[ref]
    where, sep, name = ref.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ValueError(f"env {ref!r} is not a built-in ({', '.join(sorted(ENVS))}), "
                         "package.module:Class or path/to/file.py:Class")
    module = _load_file(ref, where) if where.endswith(".py") else _import(ref, where)
    cls = getattr(module, name, None)
    if cls is None:
        raise ValueError(f"env {ref!r}: {where} has no {name}")
    if not inspect.isclass(cls) or not all(callable(getattr(cls, m, None)) for m in ("reset", "step")):
        raise ValueError(f"env {ref!r}: {name} is not an environment class (subclass sftbc.ToolEnv, or give it "
                         "reset(seed) and step(action))")
    if issubclass(cls, ToolEnv):
        try:
            cls.tools()  # a tool without type hints or docstring fails here, not mid-run
        except ValueError as e:
            raise ValueError(f"env {ref!r}: {e}") from None
    return cls


def _import(ref: str, module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"env {ref!r}: cannot import {module} ({e})") from None


def _load_file(ref: str, path: str):
    p = Path(path).resolve()
    if not p.is_file():
        raise ValueError(f"env {ref!r}: no file {path} (relative to {Path.cwd()})")
    # one module per file, named after its path, registered so that type hints and pickling resolve
    name = f"sftbc_user_{p.stem}_{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ValueError(f"env {ref!r}: loading {path} failed ({type(e).__name__}: {e})") from None
    return module


def env_sources(ref: str) -> list[Path]:
    """The source files of an env's class and the classes it derives from (what a cached base depends on)."""
    out = []
    for klass in env_class(ref).__mro__:
        try:
            out.append(Path(inspect.getsourcefile(klass)).resolve())
        except TypeError:  # object and other built-in types
            continue
    return out


def make_env(ref: str, horizon: int, max_steps: int | None = None) -> Env:
    return env_class(ref)(horizon, max_steps)


def privileged_view(env: str) -> str:
    """The env whose observations a privileged teacher gets for `env` (same layout and dynamics per seed)."""
    view = getattr(env_class(env), "privileged_view", None)
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


def validation_seeds(n: int) -> list[int]:
    return list(range(VALIDATION_SEED_OFFSET, VALIDATION_SEED_OFFSET + n))


__all__ = ["Env", "StepResult", "ToolEnv", "BadCall", "ENVS", "env_class", "env_sources", "make_env", "train_seeds",
           "eval_seeds", "validation_seeds", "EVAL_SEED_OFFSET", "VALIDATION_SEED_OFFSET", "privileged_view", "privileged_messages"]
