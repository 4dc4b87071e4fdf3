"""DAgger (Ross, Gordon & Bagnell 2011): roll out the current student, have the teacher label every
state it visits, aggregate with all earlier data, retrain, repeat.

Round 0 is the teacher's demonstrations, i.e. BC. Round i >= 1 rolls out the round i-1 student,
mixed with the teacher by a per-turn coin beta_i (`dagger.beta`: the paper's indicator, linear or
exponential), and stores the teacher's label at every visited state whoever acted. The student is
then trained on the union of the rounds' data (`dagger.window` limits it to the latest rounds).

Warm start is the default: the previous adapter already fits the earlier rounds, so continuing it on
the aggregate needs fewer passes (`dagger.round_epochs`) than fitting from scratch; the paper's
retrain-from-the-base is `dagger.warm_start=false`.

Files: <run>/round-XXX/{data, adapter, metrics.json}. A round's metrics.json is written last, so a
round without one is incomplete: `--resume` keeps the completed rounds and redoes the rest. Every
round loads its student from the previous round's saved adapter, so a resumed run computes exactly
what an uninterrupted one does.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import yaml

from sftbc import dist, track
from sftbc.bc import collect, load_student, run_dir, train_student, write_json, write_metrics
from sftbc.config import ConfigError, RunConfig, beta_at, flatten, to_dict
from sftbc.data import load_data, load_dataset_dir, merge, save_dataset, to_dataset
from sftbc.evaluate import evaluate
from sftbc.models import load_tokenizer, merge_adapter, resolve_model_path, student_path
from sftbc.teachers import cache_stats, make_teacher
from sftbc.types import Trajectory


def check_resume(cfg: RunConfig, resume: bool):
    """Refuse to mix two runs in one directory: without --resume the run must be new, with it the config
    must be the one the run started with."""
    d = Path(cfg.runs_dir) / cfg.name
    saved = d / "config.yaml"
    if not resume:
        if saved.exists():
            raise ConfigError(f"{d} already holds a run; pass --resume to continue it, or choose another name")
        return
    if saved.exists():
        old, new = flatten(yaml.safe_load(saved.read_text())), flatten(to_dict(cfg))
        default = flatten(to_dict(RunConfig()))  # a key added since the run started is as if at its default
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k, default.get(k)) != new.get(k))
        if changed:
            raise ConfigError(f"config: {changed[0]} differs from the run being resumed in {d}")


def rollout_stats(trajs: list[Trajectory]) -> dict:
    """How the policy that collected a round did: on its complete episodes (budget cuts left out)."""
    whole = [t for t in trajs if t.stop_reason != "budget"]
    student = [s for t in trajs for s in t.steps if s.actor == "student"]
    return {
        "episodes": len(trajs),
        "success_rate": sum(t.success for t in whole) / len(whole) if whole else None,
        "mistakes_mean": sum(not s.agrees for t in whole for s in t.steps) / len(whole) if whole else None,
        "student_steps": len(student),
        "student_mistakes": sum(not s.agrees for s in student),
        "tool_errors": sum(t.tool_errors for t in trajs),
    }


def dagger_round(cfg: RunConfig, i: int, rd: Path, base_path: str, tokenizer, teacher, datasets: list,
                 adapter: str | None, earlier: list[dict], given=None) -> dict:
    """Collect round i, train on the aggregate, save everything under `rd`; returns the round's metrics.
    `earlier` holds the metrics of rounds 0..i-1: where their seeds ended and what they spent. `given`
    (the user's `data=`) is round 0's data instead of the teacher's demonstrations."""
    t0, q0, k0 = time.time(), teacher.queries, teacher.tokens
    beta = beta_at(cfg.dagger, i)
    student = load_student(cfg, base_path, adapter) if beta < 1.0 else None
    first_seeds = {int(T): s for T, s in earlier[-1]["next_seeds"].items()} if earlier else {}
    budgets = None
    if cfg.collect.teacher_tokens_per_horizon:  # a round's overshoot (up to about an episode) comes off the
        # next round's budget, so the whole run overshoots rounds x budget by about one episode, not one per round
        per_round = cfg.collect.teacher_tokens_per_horizon
        budgets = {T: max(1, (i + 1) * per_round - sum(r["teacher_tokens_by_T"][str(T)] for r in earlier))
                   for T in cfg.collect.horizons}
    if i == 0 and given is not None:
        trajs, next_seeds, spent = [], {T: cfg.collect.seed_start for T in cfg.collect.horizons}, {}
    else:
        trajs, next_seeds, spent = collect(cfg, teacher, student, beta, round_=i, first_seeds=first_seeds,
                                           token_budgets=budgets)
    if dist.is_main():
        shutil.rmtree(rd, ignore_errors=True)  # what an interrupted attempt at this round left behind
    ds = given if i == 0 and given is not None else to_dataset(trajs)
    save_dataset(ds, rd / "data")
    datasets.append(ds)
    window = datasets[-cfg.dagger.window:] if cfg.dagger.window else datasets
    train_stats = train_student(cfg, base_path, tokenizer, merge(window), rd,
                                init_adapter=adapter if cfg.dagger.warm_start else None,
                                epochs=(cfg.dagger.round_epochs or None) if i else None, seed=cfg.train.seed + i)
    labels = sum(map(len, ds["train_turns"])) if ds is given else teacher.queries - q0  # as bc counts a given dataset
    metrics = {"round": i, "beta": beta, "teacher_labels": labels, "teacher_tokens": teacher.tokens - k0,
               "rows": len(ds),
               "next_seeds": {str(T): s for T, s in next_seeds.items()},  # where round i+1 starts
               "teacher_tokens_by_T": {str(T): spent.get(T, 0) for T in cfg.collect.horizons},  # what round i+1's budget is short of
               "train_rows": sum(len(w) for w in window), "rollout": rollout_stats(trajs), "train": train_stats}
    if cfg.dagger.round_eval_episodes and i < cfg.dagger.rounds:  # the last round gets the full evaluation
        metrics["eval"] = evaluate(cfg, load_student(cfg, base_path, str(rd / "adapter")), teacher,
                                   cfg.dagger.round_eval_episodes, eps=False, split="validation",
                                   keep=rd / "episodes.jsonl")
    metrics["wall_s"] = round(time.time() - t0, 2)
    write_json(rd / "metrics.json", metrics)  # the round is complete only now
    return metrics


@track.tracked
def run_dagger(cfg: RunConfig, resume: bool = False) -> dict:
    check_resume(cfg, resume)
    given = load_data(cfg.data) if cfg.data else None  # bad paths and rows fail before any work
    t0 = time.time()
    d = run_dir(cfg)
    base_path = student_path(cfg)
    tokenizer = load_tokenizer(base_path, cfg.chat_template)
    teacher = make_teacher(cfg.teacher, d)
    rounds, datasets, adapter = [], [], None
    for i in range(cfg.dagger.rounds + 1):
        rd = d / f"round-{i:03d}"
        if (rd / "metrics.json").exists():  # completed before an interruption
            rounds.append(json.loads((rd / "metrics.json").read_text()))
            datasets.append(load_dataset_dir(rd / "data"))
        else:
            rounds.append(dagger_round(cfg, i, rd, base_path, tokenizer, teacher, datasets, adapter, rounds, given))
        adapter = str(rd / "adapter")
    save_dataset(merge(datasets), d / "data")  # the aggregate, for inspection or `sftbc bc data=...`
    student = load_student(cfg, base_path, adapter)
    metrics = {"method": "dagger", "env": cfg.env, "model": cfg.model, "train_horizon": cfg.collect.horizons,
               "beta": cfg.dagger.beta, "teacher_labels": sum(r["teacher_labels"] for r in rounds),
               "teacher_tokens": sum(r["teacher_tokens"] for r in rounds),
               "train": {"tokens": sum(r["train"]["tokens"] for r in rounds),
                         "wall_s": round(sum(r["train"]["wall_s"] for r in rounds), 2)},
               "rounds": rounds, "adapter": adapter,
               "eval": evaluate(cfg, student, teacher, keep=d / "episodes.jsonl")}
    metrics.update(cache_stats(teacher), wall_s=round(time.time() - t0, 2))  # this invocation's (a resumed run: its part)
    write_metrics(d, metrics)
    return metrics


def run_teacher(cfg: RunConfig, resume: bool = False) -> dict:
    """An LM teacher for the default environments: DAgger from the oracle, then the last adapter merged
    into <run>/model, a plain HF model directory with the base model's tokenizer (so a student built on
    the same base shares it, as distillation requires)."""
    m = run_dagger(cfg, resume=resume)
    out = Path(cfg.runs_dir) / cfg.name / "model"
    if dist.is_main():
        merge_adapter(resolve_model_path(cfg.model, cfg.tiny), m["adapter"], str(out), cfg.chat_template)
    dist.barrier()
    m["model_dir"] = str(out)
    write_metrics(Path(cfg.runs_dir) / cfg.name, m)
    return m
