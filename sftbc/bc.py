"""Behavioral cloning = SFT: collect teacher demonstrations, fine-tune a LoRA student, evaluate.

`run_bc` is the whole experiment the demo runs; each stage is also a CLI command of its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import yaml

from sftbc import dist, track
from sftbc.config import RunConfig, to_dict
from sftbc.data import load_data, save_dataset, to_dataset, to_examples
from sftbc.envs import make_env, train_seeds
from sftbc.evaluate import evaluate
from sftbc.models import load_tokenizer, merge_adapter, resolve_model_path, student_model, student_path
from sftbc.report import eval_table
from sftbc.rollout import Student, rollout
from sftbc.teachers import cache_stats, make_teacher
from sftbc.train import train


def run_dir(cfg: RunConfig) -> Path:
    d = Path(cfg.runs_dir) / cfg.name
    dist.barrier()  # every process has checked the directory (new run or resume) before it changes
    if dist.is_main():
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    dist.barrier()
    return d


def write_json(path: Path, data: dict):
    """Atomically (temp file + rename): readers and resumed runs never see half a file. Main process only."""
    if not dist.is_main():
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def write_metrics(d: Path, metrics: dict):
    """metrics.json and, when there is an evaluation, results.md."""
    write_json(d / "metrics.json", metrics)
    if "eval" in metrics and dist.is_main():
        (d / "results.md").write_text(f"# {d.name}\n\n{summary(metrics, markdown=True)}\n")


def collect(cfg: RunConfig, teacher, student: Student | None = None, beta: float = 1.0, round_: int = 0,
            first_seeds: dict | None = None, token_budgets: dict | None = None) -> tuple[list, dict, dict]:
    """One round of labelled rollouts at every T in `collect.horizons`: the teacher acts with probability
    beta (1 = demonstrations, perturbed with probability `collect.noise` for DART), else the student, and
    every visited state gets the teacher's label. Returns the trajectories and, per T, the next unused
    training seed (rounds continue each other's seeds, so the rounds of a DAgger run cover exactly the
    seeds one bigger BC run would) and the teacher tokens spent.

    Budgets run the episodes in waves. A label budget sizes each wave so that even episodes running to the
    step limit fit in what is left: it ends whole episodes (all but at most the last one) rather than
    cutting every long episode (the student's detours, DART's recoveries) at the same turn. A teacher-token
    budget (`collect.teacher_tokens_per_horizon`, or `token_budgets[T]`) sizes its waves the same way at
    the tokens per label paid so far (by a teacher with no history, after a first wave of up to 4 episodes),
    so it too ends on whole episodes, about one episode past the budget."""
    c = cfg.collect
    trajs, next_seeds, spent = [], {}, {}
    for T in c.horizons:
        seed = (first_seeds or {}).get(T, c.seed_start)
        budget = (token_budgets or {}).get(T, c.teacher_tokens_per_horizon)
        tokens0, labelled = teacher.tokens, 0
        max_steps = make_env(cfg.env, T).max_steps
        while True:
            paid = teacher.tokens - tokens0
            if (c.labels_per_horizon and labelled >= c.labels_per_horizon) or (budget and paid >= budget):
                break
            labels_left = c.labels_per_horizon - labelled if c.labels_per_horizon else None
            n = max(1, labels_left // max_steps) if labels_left else c.episodes
            if budget:  # the labels the tokens left buy at the cost per label so far: this call's, else what the
                # teacher was paid before (a DAgger round after round 0), else a first wave of up to 4 episodes
                tokens, labels = (paid, labelled) if paid else (teacher.tokens, teacher.queries)
                n = min(n, max(1, int((budget - paid) * labels / tokens) // max_steps) if tokens else 4)
            wave = rollout(cfg.env, T, train_seeds(n, seed), teacher, student, beta=beta, noise=c.noise,
                           max_labels=labels_left, coin_seed=round_, desc=f"round {round_} {cfg.env} T={T}")
            trajs, seed, labelled = trajs + wave, seed + n, labelled + sum(len(t.steps) for t in wave)
            if not (c.labels_per_horizon or budget):
                break  # no budget: one wave of collect.episodes
        next_seeds[T], spent[T] = seed, teacher.tokens - tokens0
    return trajs, next_seeds, spent


def train_student(cfg: RunConfig, base_path: str, tokenizer, ds, out_dir: Path, init_adapter: str | None = None,
                  epochs: float | None = None, seed: int | None = None) -> dict:
    """LoRA SFT on the dataset's labelled turns, from a fresh adapter or from `init_adapter`; saves the
    adapter (and a merged model if asked)."""
    seed = cfg.train.seed if seed is None else seed
    torch.manual_seed(seed)  # the fresh adapter's initialisation
    model = dist.prepare(student_model(cfg, base_path, init_adapter, trainable=True))
    stats = train(model, to_examples(ds, tokenizer), pad_id=tokenizer.pad_token_id, epochs=epochs or cfg.train.epochs,
                  lr=cfg.train.lr, max_tokens=cfg.train.max_tokens, seed=seed, min_steps=cfg.train.min_steps,
                  packed=cfg.train.pack, grad_accum=cfg.train.grad_accum, bf16=cfg.train.bf16, desc="LoRA SFT")
    dist.save_adapter(model, out_dir / "adapter")
    if cfg.merge and dist.is_main():
        merge_adapter(base_path, str(out_dir / "adapter"), str(out_dir / "merged"), cfg.chat_template)
    dist.barrier()  # the others load the adapter next
    return stats


def load_student(cfg: RunConfig, base_path: str, adapter: str | None) -> Student:
    return Student(student_model(cfg, base_path, adapter), load_tokenizer(base_path, cfg.chat_template),
                   cfg.eval.max_new_tokens, cfg.eval.temperature)


def run_collect(cfg: RunConfig) -> dict:
    d = run_dir(cfg)
    teacher = make_teacher(cfg.teacher, d)
    t0 = time.time()
    trajs, _, _ = collect(cfg, teacher)
    save_dataset(to_dataset(trajs), d / "data")
    metrics = {"method": "collect", "env": cfg.env, "train_horizon": cfg.collect.horizons,
               "teacher_labels": teacher.queries, "episodes": len(trajs), "wall_s": round(time.time() - t0, 2)}
    write_metrics(d, metrics)
    return metrics


@track.tracked
def run_bc(cfg: RunConfig) -> dict:
    """BC on demonstrations (DART when collect.noise > 0), or on a given dataset."""
    given = load_data(cfg.data) if cfg.data else None  # bad paths and rows fail before any work
    t0 = time.time()
    d = run_dir(cfg)
    base_path = student_path(cfg)
    tokenizer = load_tokenizer(base_path, cfg.chat_template)
    teacher = make_teacher(cfg.teacher, d)
    if given is not None:
        ds, labels = given, sum(len(r) for r in given["train_turns"])
    else:
        ds = to_dataset(collect(cfg, teacher)[0])
        labels = teacher.queries
    tokens = teacher.tokens  # the teacher's cost, before evaluation queries it too
    save_dataset(ds, d / "data")
    train_stats = train_student(cfg, base_path, tokenizer, ds, d)
    student = load_student(cfg, base_path, str(d / "adapter"))
    metrics = {"method": "dart" if cfg.collect.noise > 0 and given is None else "bc", "env": cfg.env, "model": cfg.model,
               "train_horizon": cfg.collect.horizons, "teacher_labels": labels, "teacher_tokens": tokens,
               "train": train_stats,
               "eval": evaluate(cfg, student, teacher, keep=d / "episodes.jsonl")}
    metrics.update(cache_stats(teacher), wall_s=round(time.time() - t0, 2))
    write_metrics(d, metrics)
    return metrics


@track.tracked
def run_eval(cfg: RunConfig) -> dict:
    d = run_dir(cfg)
    base_path = resolve_model_path(cfg.model, cfg.tiny)
    adapter = cfg.adapter or (str(d / "adapter") if (d / "adapter").exists() else None)
    student = load_student(cfg, base_path, adapter)
    teacher = make_teacher(cfg.teacher, d) if cfg.eval.teacher_metrics else None  # an LM teacher is not even loaded
    metrics = {"method": "eval", "env": cfg.env, "model": cfg.model, "adapter": adapter,
               "eval": evaluate(cfg, student, teacher, keep=d / "episodes.jsonl")}
    write_metrics(d, metrics)
    return metrics


def summary(metrics: dict, markdown: bool = False) -> str:
    head = f"{metrics['method']} on {metrics['env']}"
    if "train" in metrics:
        head += (f": {metrics['teacher_labels']} teacher labels, trained on {metrics['train']['tokens']} tokens "
                 f"in {metrics['train']['wall_s']:.0f}s")
    return head + "\n" + ("\n" if markdown else "") + eval_table(metrics["eval"], markdown)
