"""The batched multi-environment rollout with beta-mixing.

Every live episode advances one turn per loop iteration. At each turn:
  1. the teacher labels every live state (the label is stored whoever acts);
  2. a seeded per-(episode, turn) coin lets the teacher act with probability beta, else the student;
  3. the student, when it is asked, decodes its turn for all asked episodes in one batched call;
  4. each environment executes its action, and the tool results are appended.
beta=1 is pure demonstration (BC data), beta=0 is the student on its own (evaluation, DAgger rounds),
and `shadow=True` also asks the student where the teacher acts (epsilon on the teacher's states).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from sftbc.decode import BatchedChat
from sftbc.envs import make_env
from sftbc.render import parse_action
from sftbc.teachers import Teacher
from sftbc.types import Context, Episode, Step, Trajectory


@dataclass
class Student:
    model: object
    tokenizer: object
    max_new_tokens: int = 48
    temperature: float = 0.0


def teacher_acts(coin_seed: int, episode_seed: int, turn: int, beta: float) -> bool:
    """The per-turn coin: independent of batch composition, so a rollout is reproducible piecewise."""
    if beta >= 1.0:
        return True
    if beta <= 0.0:
        return False
    return random.Random(f"{coin_seed}:{episode_seed}:{turn}").random() < beta


def rollout(env_name: str, horizon: int, seeds: list[int], teacher: Teacher, student: Student | None = None,
            beta: float = 1.0, shadow: bool = False, coin_seed: int = 0, desc: str | None = None) -> list[Trajectory]:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if student is None and (beta < 1.0 or shadow):
        raise ValueError("a rollout where the student acts or is shadowed needs a student")
    n = len(seeds)
    envs = [make_env(env_name, horizon) for _ in seeds]
    convo, tools = [], []
    for env, s in zip(envs, seeds):
        msgs, tl = env.reset(s)
        convo.append(list(msgs))
        tools.append(tuple(tl))
    steps: list[list[Step]] = [[] for _ in seeds]
    done: dict[int, Trajectory] = {}
    chat = BatchedChat(student.model, student.tokenizer, list(zip(convo, tools))) if student else None
    gen = torch.Generator().manual_seed(coin_seed)
    live = list(range(n))
    bar = tqdm(total=n, desc=desc or f"{env_name} T={horizon}", leave=False, disable=desc is None)
    while live:
        turn = len(steps[live[0]])  # all live episodes are at the same turn
        contexts = [Context(tuple(convo[i]), tools[i], Episode(env_name, horizon, seeds[i])) for i in live]
        labels = teacher.label(contexts)
        by_teacher = {i: teacher_acts(coin_seed, seeds[i], turn, beta) for i in live}
        ask = [i for i in live if shadow or not by_teacher[i]] if chat else []
        texts = chat.generate(ask, student.max_new_tokens, student.temperature, gen) if ask else {}
        finished = []
        for i, ctx, label in zip(live, contexts, labels):
            mine = parse_action(texts[i]) if i in texts else None
            action = label if by_teacher[i] else mine
            result = envs[i].step(action)
            steps[i].append(Step(ctx, action, label, "teacher" if by_teacher[i] else "student", mine))
            convo[i] += [action, *result.messages]
            if result.done or len(steps[i]) >= envs[i].max_steps:
                done[i] = Trajectory(Episode(env_name, horizon, seeds[i]), tuple(steps[i]), tuple(convo[i]),
                                     tools[i], bool(result.info.get("success", False)),
                                     "answer" if result.done else "step_limit")
                finished.append(i)
        live = [i for i in live if i not in done]
        bar.update(len(finished))
        if chat:
            chat.drop(finished)
            if live:
                chat.sync({i: convo[i] for i in live})
    bar.close()
    return [done[i] for i in range(n)]
