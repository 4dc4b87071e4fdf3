"""The batched multi-environment rollout with beta-mixing.

Every live episode advances one turn per loop iteration. At each turn:
  1. the teacher labels every live state (the label is stored whoever acts);
  2. a seeded per-(episode, turn) coin lets the teacher act with probability beta, else the student;
     where the teacher acts, a second coin (probability `noise`) executes a random valid call instead
     while the clean label is kept (DART);
  3. the student, when it is asked, decodes its turn for all asked episodes in one batched call
     (greedy turns take the label as a draft, see `decode`: the same output for less work);
  4. each environment executes its action, and the tool results are appended.
beta=1 is pure demonstration (BC data), beta=0 is the student on its own (evaluation, DAgger rounds),
and `shadow=True` also asks the student where the teacher acts (epsilon on the teacher's states).
`teacher=None` is the student alone with no labels (on-policy distillation scores the tokens instead).
`max_labels` is an exact teacher-label budget: when the next turn would exceed it, the episodes that
do not fit are cut there (stop_reason "budget"), so no label is ever paid for and thrown away.
Under several processes the episodes are shared out and gathered back (see `dist`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from sftbc import dist
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


def coin(p: float, *key) -> bool:
    """A coin seeded by `key` alone: independent of batch composition, so rollouts are reproducible piecewise."""
    if p >= 1.0:
        return True
    if p <= 0.0:
        return False
    return random.Random(":".join(map(str, key))).random() < p


def teacher_acts(coin_seed: int, episode_seed: int, turn: int, beta: float) -> bool:
    return coin(beta, coin_seed, episode_seed, turn)


def rollout(env_name: str, horizon: int, seeds: list[int], teacher: Teacher | None, student: Student | None = None,
            beta: float = 1.0, shadow: bool = False, noise: float = 0.0, max_labels: int | None = None,
            coin_seed: int = 0, desc: str | None = None) -> list[Trajectory]:
    """Trajectories in seed order (an episode the label budget cut before its first step is left out)."""
    for what, p in (("beta", beta), ("noise", noise)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{what} must be in [0, 1], got {p}")
    if student is None and (beta < 1.0 or shadow):
        raise ValueError("a rollout where the student acts or is shadowed needs a student")
    if max_labels is not None and max_labels < 0:
        raise ValueError(f"max_labels must be >= 0, got {max_labels}")
    if teacher is None and (beta > 0.0 or shadow or max_labels is not None):
        raise ValueError("a rollout without a teacher has the student act alone (beta=0, no shadow, no label budget)")
    # Under several processes each plays a share of the seeds and all get every trajectory. Coins are
    # seeded per (episode, turn), so an episode goes the same way whichever process plays it. A label
    # budget that could cut episodes depends on all of them at once: the main process plays those alone.
    # (A budget that cannot cut, at most max_steps labels per episode, changes nothing and is dropped.)
    may_cut = max_labels is not None and len(seeds) * make_env(env_name, horizon).max_steps > max_labels
    return dist.shard_map(
        lambda mine: _play(env_name, horizon, mine, teacher, student, beta, shadow, noise,
                           max_labels if may_cut else None, coin_seed, desc),
        seeds, teacher, alone=may_cut)


def _play(env_name: str, horizon: int, seeds: list[int], teacher: Teacher | None, student: Student | None,
          beta: float, shadow: bool, noise: float, max_labels: int | None, coin_seed: int,
          desc: str | None) -> list[Trajectory]:
    """The rollout loop itself, in this process."""
    n = len(seeds)
    envs = [make_env(env_name, horizon) for _ in seeds]
    convo, tools = [], []
    for env, s in zip(envs, seeds):
        msgs, tl = env.reset(s)
        convo.append(list(msgs))
        tools.append(tuple(tl))
    steps: list[list[Step]] = [[] for _ in seeds]
    tool_errors = [0] * n
    done: dict[int, Trajectory] = {}
    chat = BatchedChat(student.model, student.tokenizer, list(zip(convo, tools))) if student else None
    gen = torch.Generator().manual_seed(coin_seed)
    live, labelled = list(range(n)), 0
    bar = tqdm(total=n, desc=desc or f"{env_name} T={horizon}", leave=False, disable=desc is None or not dist.is_main())

    def finish(i: int, success: bool, reason: str):
        if steps[i]:
            done[i] = Trajectory(Episode(env_name, horizon, seeds[i]), tuple(steps[i]), tuple(convo[i]), tools[i],
                                 success, reason, tool_errors[i])

    while live:
        if max_labels is not None and labelled + len(live) > max_labels:
            live, cut = live[: max_labels - labelled], live[max_labels - labelled :]
            for i in cut:
                finish(i, False, "budget")
            if chat:
                chat.drop(cut)
            bar.update(len(cut))
            if not live:
                break
        turn = len(steps[live[0]])  # all live episodes are at the same turn
        contexts = [Context(tuple(convo[i]), tools[i], Episode(env_name, horizon, seeds[i])) for i in live]
        labels = teacher.label(contexts) if teacher else [None] * len(live)
        labelled += len(live)
        by_teacher = {i: teacher_acts(coin_seed, seeds[i], turn, beta) for i in live}
        ask = [i for i in live if shadow or not by_teacher[i]] if chat else []
        # the teacher's label drafts the student's greedy turn: same output, one forward where they agree
        label_of = dict(zip(live, labels))
        drafts = {i: chat.draft(label_of[i]) for i in ask
                  if label_of[i] is not None} if student and student.temperature == 0 else {}
        texts = chat.generate(ask, student.max_new_tokens, student.temperature, gen, drafts) if ask else {}
        finished = []
        for i, ctx, label in zip(live, contexts, labels):
            mine = parse_action(texts[i], student.tokenizer) if i in texts else None
            actor, action = ("teacher", label) if by_teacher[i] else ("student", mine)
            if actor == "teacher" and coin(noise, "noise", coin_seed, seeds[i], turn):
                perturbed = envs[i].random_action(random.Random(f"act:{coin_seed}:{seeds[i]}:{turn}"))
                if perturbed is not None:  # else nothing valid to perturb to: the teacher's action stands
                    actor, action = "noise", perturbed
            result = envs[i].step(action)
            tool_errors[i] += "tool_error" in result.info
            steps[i].append(Step(ctx, action, label, actor, mine))
            convo[i] += [action, *result.messages]
            if result.done or len(steps[i]) >= envs[i].max_steps:
                finish(i, bool(result.info.get("success", False)), "answer" if result.done else "step_limit")
                finished.append(i)
        live = [i for i in live if i not in done]
        bar.update(len(finished))
        if chat:
            chat.drop(finished)
            if live:
                chat.sync({i: convo[i] for i in live})
    bar.close()
    return [done[i] for i in range(n) if i in done]
