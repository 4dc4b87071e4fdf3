"""Behavioral cloning = SFT: collect teacher demonstrations, fine-tune a LoRA student, evaluate.

`run_bc` is the whole experiment the demo runs; each stage is also a CLI command of its own.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import yaml

from sftbc.config import RunConfig, to_dict
from sftbc.data import load_dataset_dir, save_dataset, to_dataset, to_examples
from sftbc.envs import train_seeds
from sftbc.evaluate import evaluate
from sftbc.models import add_lora, load_model, load_tokenizer, merge_adapter, resolve_model_path
from sftbc.report import eval_table
from sftbc.rollout import Student, rollout
from sftbc.teachers import make_teacher
from sftbc.train import train


def run_dir(cfg: RunConfig) -> Path:
    d = Path(cfg.runs_dir) / cfg.name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return d


def write_metrics(d: Path, metrics: dict):
    """metrics.json (atomically: temp file + rename) and, when there is an evaluation, results.md."""
    tmp = d / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2))
    tmp.replace(d / "metrics.json")
    if "eval" in metrics:
        (d / "results.md").write_text(f"# {d.name}\n\n{summary(metrics, markdown=True)}\n")


def collect(cfg: RunConfig, teacher) -> list:
    """Teacher demonstrations (beta = 1) at every horizon in `collect.horizons`."""
    c = cfg.collect
    trajs = []
    for T in c.horizons:
        n = math.ceil(c.labels_per_horizon / T) if c.labels_per_horizon else c.episodes
        seeds = train_seeds(n, c.seed_start)
        trajs += rollout(cfg.env, T, seeds, teacher, beta=1.0, desc=f"collect {cfg.env} T={T}")
    return trajs


def train_student(cfg: RunConfig, base_path: str, tokenizer, ds, out_dir: Path) -> dict:
    """LoRA SFT on the dataset's labelled turns; saves the adapter (and a merged model if asked)."""
    model = add_lora(load_model(base_path), cfg.lora)
    stats = train(model, to_examples(ds, tokenizer), pad_id=tokenizer.pad_token_id, epochs=cfg.train.epochs,
                  lr=cfg.train.lr, max_tokens=cfg.train.max_tokens, seed=cfg.train.seed, desc="LoRA SFT")
    model.save_pretrained(out_dir / "adapter")
    if cfg.merge:
        merge_adapter(base_path, str(out_dir / "adapter"), str(out_dir / "merged"))
    return stats


def load_student(cfg: RunConfig, base_path: str, adapter: str | None) -> Student:
    return Student(load_model(base_path, adapter, merge=True), load_tokenizer(base_path), cfg.eval.max_new_tokens,
                   cfg.eval.temperature)


def run_collect(cfg: RunConfig) -> dict:
    d = run_dir(cfg)
    teacher = make_teacher(cfg.teacher)
    t0 = time.time()
    trajs = collect(cfg, teacher)
    save_dataset(to_dataset(trajs), d / "data")
    metrics = {"method": "collect", "env": cfg.env, "train_horizon": cfg.collect.horizons,
               "teacher_labels": teacher.queries, "episodes": len(trajs), "wall_s": round(time.time() - t0, 2)}
    write_metrics(d, metrics)
    return metrics


def run_bc(cfg: RunConfig) -> dict:
    given = load_dataset_dir(cfg.data) if cfg.data else None  # bad paths fail before any work
    d = run_dir(cfg)
    base_path = resolve_model_path(cfg.model, cfg.tiny)
    tokenizer = load_tokenizer(base_path)
    teacher = make_teacher(cfg.teacher)
    if given is not None:
        ds, labels = given, sum(len(r) for r in given["train_turns"])
    else:
        ds = to_dataset(collect(cfg, teacher))
        labels = teacher.queries
    save_dataset(ds, d / "data")
    train_stats = train_student(cfg, base_path, tokenizer, ds, d)
    student = load_student(cfg, base_path, str(d / "adapter"))
    metrics = {"method": "bc", "env": cfg.env, "model": cfg.model, "train_horizon": cfg.collect.horizons,
               "teacher_labels": labels, "train": train_stats,
               "eval": evaluate(student, teacher, cfg.env, cfg.eval.horizons, cfg.eval.episodes)}
    write_metrics(d, metrics)
    return metrics


def run_eval(cfg: RunConfig) -> dict:
    d = run_dir(cfg)
    base_path = resolve_model_path(cfg.model, cfg.tiny)
    adapter = cfg.adapter or (str(d / "adapter") if (d / "adapter").exists() else None)
    student = load_student(cfg, base_path, adapter)
    teacher = make_teacher(cfg.teacher)
    metrics = {"method": "eval", "env": cfg.env, "model": cfg.model, "adapter": adapter,
               "eval": evaluate(student, teacher, cfg.env, cfg.eval.horizons, cfg.eval.episodes)}
    write_metrics(d, metrics)
    return metrics


def summary(metrics: dict, markdown: bool = False) -> str:
    head = f"{metrics['method']} on {metrics['env']}"
    if "train" in metrics:
        head += (f": {metrics['teacher_labels']} teacher labels, trained on {metrics['train']['tokens']} tokens "
                 f"in {metrics['train']['wall_s']:.0f}s")
    return head + "\n" + ("\n" if markdown else "") + eval_table(metrics["eval"], markdown)
