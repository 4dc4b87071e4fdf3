"""Training on relabelled DAgger data: sftbc's branch-masked sequences vs TRL SFTTrainer on per-step rows.

For each horizon T: the built-in student acts in the maze mixed with the oracle (beta = 0.5, a
linear-schedule DAgger round), the oracle labels every visited state, and that one dataset is
trained for one epoch, full fine-tuning, same learning rate and the same number of optimizer steps,
(a) by sftbc: one sequence per trajectory, each disagreeing label a branch (O(T) tokens), and
(b) by TRL's SFTTrainer on `per_step_rows`: one prompt/completion row per label (O(T^2) tokens),
    with assistant_only_loss so that exactly the same label tokens are trained, padded rows, and
(c) the same with TRL's fastest setting for such rows, `padding_free=True` (each micro-batch one
    flattened sequence; transformers separates the rows by their position ids, so no padding is computed).
TRL's optimizer step is split into micro-batches of at most `--trl-micro-rows` rows (gradient
accumulation, the same step): one step of 32 padded rows at T = 32 reached 23.7 GB and was killed by
the OOM killer on the 24 GiB machine.
Each side runs in its own subprocess (one after the other, so peak RSS is its own and the two cores
are not shared). Reported per side: tokens processed, label tokens, optimizer steps, wall time of
training, peak RSS, the loss of the initial weights computed by that side's own batches (the same
quantity, so it must agree), the tokens TRL's batches compute (padding included), and the final
loss of the trained model on the whole dataset.

    python benchmarks/bench_train.py                 # T = 4 16 32, writes benchmarks/results/train.json
"""

from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from common import emit, spawn, write_results  # noqa: E402

from sftbc.data import load_dataset_dir, per_step_rows, save_dataset, to_dataset, to_examples  # noqa: E402
from sftbc.models import load_model, load_tokenizer, resolve_model_path  # noqa: E402
from sftbc.train import Example, collate, make_batches, token_loss, train  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TRL_SIDES = ["trl", "trl_padding_free"]


def build_dataset(model_path: str, T: int, episodes: int, out: Path, env: str = "maze", beta: float = 0.5) -> None:
    from sftbc.rollout import Student, rollout
    from sftbc.teachers import OracleTeacher

    student = Student(load_model(model_path), load_tokenizer(model_path), max_new_tokens=48)
    trajs = rollout(env, T, list(range(episodes)), OracleTeacher(), student, beta=beta, coin_seed=1)
    save_dataset(to_dataset(trajs), out)


def datasets(model_path: str, horizons: list[int], episodes, tmp: str, env: str = "maze", beta: float = 0.5):
    """(T, dataset directory) per horizon, each built just before it is yielded; `episodes` is a number,
    or a function of T."""
    for T in horizons:
        data = Path(tmp) / f"T{T}"
        build_dataset(model_path, T, episodes(T) if callable(episodes) else episodes, data, env, beta)
        yield T, data


@torch.no_grad()
def mean_loss(model, examples: list[Example], pad_id: int) -> float:
    """Mean cross-entropy over every label token of the dataset, in batches of ~8k tokens."""
    total, n = 0.0, 0
    for batch in make_batches(examples, 8192, random.Random(0)):
        b = collate(batch, pad_id)
        total += token_loss(model, b, reduction="sum").item()
        n += int((b["labels"][:, 1:] != -100).sum())
    return total / n


def run_sftbc(data: Path, model_path: str, lr: float) -> dict:
    tok, model = load_tokenizer(model_path), load_model(model_path, trainable=True)
    examples = to_examples(load_dataset_dir(data), tok)
    init = mean_loss(model, examples, tok.pad_token_id)
    # max_tokens=1: one trajectory (with its branches) per optimizer step
    stats = train(model, examples, pad_id=tok.pad_token_id, epochs=1, lr=lr, max_tokens=1, seed=0, desc="sftbc")
    return {"tokens": stats["tokens"], "label_tokens": stats["target_tokens"], "steps": stats["steps"],
            "wall_s": stats["wall_s"], "loss_init": init, "loss_final": mean_loss(model, examples, tok.pad_token_id)}


def run_trl(data: Path, model_path: str, lr: float, steps: int, micro_rows: int, padding_free: bool) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tok, model = load_tokenizer(model_path), load_model(model_path, trainable=True)
    ds = load_dataset_dir(data)
    rows = Dataset.from_list(per_step_rows(ds))
    batch_size = math.ceil(len(rows) / steps)  # the same number of optimizer steps as sftbc's epoch
    accumulate = math.ceil(batch_size / micro_rows)
    args = SFTConfig(output_dir=tempfile.mkdtemp(), assistant_only_loss=True, num_train_epochs=1,
                     per_device_train_batch_size=math.ceil(batch_size / accumulate),
                     gradient_accumulation_steps=accumulate, padding_free=padding_free, learning_rate=lr,
                     lr_scheduler_type="cosine", warmup_steps=0.05, max_grad_norm=1.0, weight_decay=0.0, max_length=None,
                     use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
                     save_strategy="no", logging_steps=10, seed=0, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tok)
    processed = trainer.train_dataset
    tokens = sum(len(x) for x in processed["input_ids"])
    label_tokens = sum(sum(t != -100 for t in x[1:]) for x in processed["labels"])
    with torch.no_grad():  # TRL's own batches and loss, on the initial weights
        total, n, fed = 0.0, 0, 0
        for batch in trainer.get_train_dataloader():
            k = int((batch["labels"][:, 1:] != -100).sum())  # padding-free: one row, its boundaries' labels -100
            total += model(**batch).loss.item() * k
            n += k
            fed += batch["input_ids"].numel()  # the tokens computed: padding included
    t0 = time.time()
    out = trainer.train()
    wall = time.time() - t0
    examples = to_examples(ds, tok)
    return {"tokens": tokens, "fed_tokens": fed, "label_tokens": label_tokens, "steps": out.global_step,
            "wall_s": round(wall, 2), "loss_init": total / n, "loss_final": mean_loss(model, examples, tok.pad_token_id)}


def worker(args) -> None:
    torch.manual_seed(0)
    emit(run_sftbc(args.data, args.model, args.lr) if args.worker == "sftbc" else
         run_trl(args.data, args.model, args.lr, args.steps, args.trl_micro_rows, args.worker == "trl_padding_free"))


def side(kind: str, data: Path, model: str, lr: float, steps: int = 0, micro_rows: int = 0) -> dict:
    return spawn(__file__, "--worker", kind, "--data", data, "--model", model, "--lr", lr, "--steps", steps,
                 "--trl-micro-rows", micro_rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--horizons", type=int, nargs="+", default=[4, 16, 32])
    ap.add_argument("--episodes", type=int, default=8, help="rolled-out episodes per horizon")
    ap.add_argument("--model", default="tiny", help="student: 'tiny' (built-in) or a model directory")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", type=Path, default=RESULTS / "train.json")
    ap.add_argument("--trl-micro-rows", type=int, default=4, help="TRL's rows per forward (gradient accumulation)")
    ap.add_argument("--worker", choices=["sftbc", *TRL_SIDES], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    model = resolve_model_path(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for T, data in datasets(model, args.horizons, args.episodes, tmp):
            a = side("sftbc", data, model, args.lr)
            for kind in TRL_SIDES:
                b = side(kind, data, model, args.lr, a["steps"], args.trl_micro_rows)
                rows.append({"T": T, "trl_side": kind, "sftbc": a, "trl": b,
                             "tokens_ratio": round(b["tokens"] / a["tokens"], 2),
                             "wall_ratio": round(b["wall_s"] / a["wall_s"], 2),
                             "loss_abs_diff": abs(a["loss_init"] - b["loss_init"]),
                             "final_loss_abs_diff": round(abs(a["loss_final"] - b["loss_final"]), 4)})
            print(f"T={T}: done", flush=True)
    print(f"{'T':>3} {'TRL side':<16} {'tokens sftbc':>12} {'tokens TRL':>10} {'ratio':>6} {'wall sftbc':>10} "
          f"{'wall TRL':>8} {'ratio':>6} {'RSS MB s/T':>11} {'|Δ init loss|':>13} {'final loss s/T':>15}")
    for r in rows:
        a, b = r["sftbc"], r["trl"]
        print(f"{r['T']:>3} {r['trl_side']:<16} {a['tokens']:>12} {b['tokens']:>10} {r['tokens_ratio']:>6} "
              f"{a['wall_s']:>10} {b['wall_s']:>8} {r['wall_ratio']:>6} {a['peak_rss_mb']:>5}/{b['peak_rss_mb']:<5} "
              f"{r['loss_abs_diff']:>13.2e} {a['loss_final']:>7.3f}/{b['loss_final']:.3f}")
    write_results(args.out, {"benchmark": "train", "model": model, "episodes": args.episodes, "lr": args.lr,
                             "trl_micro_rows": args.trl_micro_rows, "torch_threads": torch.get_num_threads(),
                             "rows": rows})


if __name__ == "__main__":
    main()
