"""Training steps on branched (relabelled) sequences: SDPA with a dense 4D tree mask vs `tree_attention`.

For each horizon T: the built-in student plays maze episodes mixed with the oracle (beta = 0.5, as in
bench_train.py), the oracle labels every state, and the packed trees of that one dataset are cut
into the training loop's token-budgeted batches. Each side, in its own subprocess, adds a fresh LoRA
adapter (the recipes' defaults, seed 0) and takes the same optimizer steps on the same batches:
(a) attn_implementation "sdpa" with the dense (B, 1, L, L) boolean mask, sftbc's default,
(b) "sftbc_tree": causal SDPA over the rows, the branch tokens recomputed against their own keys.
Reported per side: wall time per step (after one warm-up step), peak RSS, and the summed loss of
every step, which must agree (the same objective on the same weights).

    python benchmarks/bench_attention.py             # T = 16 32, writes benchmarks/results/attention.json
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from bench_train import datasets  # noqa: E402
from common import emit, spawn, write_results  # noqa: E402

from sftbc.config import LoraArgs  # noqa: E402
from sftbc.data import load_dataset_dir, to_examples  # noqa: E402
from sftbc.models import add_lora, load_model, load_tokenizer, resolve_model_path  # noqa: E402
from sftbc.train import collate, make_batches, make_optimizer, token_loss  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def run_side(data: Path, model_path: str, impl: str, steps: int, max_tokens: int) -> dict:
    tok = load_tokenizer(model_path)
    torch.manual_seed(0)
    model = add_lora(load_model(model_path), LoraArgs())
    model.set_attn_implementation(impl)
    model.train()
    batches = make_batches(to_examples(load_dataset_dir(data), tok), max_tokens, random.Random(0))
    batches = [collate(b, tok.pad_token_id) for b in batches[: steps + 1]]
    step = make_optimizer(model, 1e-3, None, 0)
    losses, t0 = [], None
    for i, batch in enumerate(batches):
        if i == 1:  # the first step warms the allocator and kernels up
            t0 = time.time()
        loss = token_loss(model, batch)
        step(loss)
        losses.append(loss.item())
    n = len(batches) - 1
    return {"impl": impl, "steps": n, "ms_per_step": round((time.time() - t0) / n * 1000, 1),
            "max_len": max(b["input_ids"].shape[1] for b in batches), "losses": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--horizons", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--episodes", type=int, default=8, help="rolled-out episodes per horizon")
    ap.add_argument("--steps", type=int, default=8, help="timed optimizer steps per side")
    ap.add_argument("--max-tokens", type=int, default=2048, help="the recipes' train.max_tokens")
    ap.add_argument("--model", default="tiny", help="student: 'tiny' (built-in) or a model directory")
    ap.add_argument("--out", type=Path, default=RESULTS / "attention.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return emit(run_side(args.data, args.model, args.worker, args.steps, args.max_tokens))
    model = resolve_model_path(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for T, data in datasets(model, args.horizons, args.episodes, tmp):
            a, b = (spawn(__file__, "--worker", impl, "--data", data, "--model", model, "--steps", args.steps,
                          "--max-tokens", args.max_tokens) for impl in ("sdpa", "sftbc_tree"))
            rows.append({"T": T, "sdpa": a, "tree": b, "max_len": a["max_len"],
                         "speedup": round(a["ms_per_step"] / b["ms_per_step"], 2),
                         "loss_max_abs_diff": max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))})
    print(f"{'T':>3} {'max len':>7} {'ms/step sdpa':>12} {'ms/step tree':>12} {'speedup':>7} "
          f"{'RSS MB s/t':>11} {'max |Δ loss|':>12}")
    for r in rows:
        a, b = r["sdpa"], r["tree"]
        print(f"{r['T']:>3} {r['max_len']:>7} {a['ms_per_step']:>12} {b['ms_per_step']:>12} {r['speedup']:>7} "
              f"{a['peak_rss_mb']:>5}/{b['peak_rss_mb']:<5} {r['loss_max_abs_diff']:>12.2e}")
    write_results(args.out, {"benchmark": "attention", "model": model, "episodes": args.episodes,
                             "max_tokens": args.max_tokens, "torch_threads": torch.get_num_threads(), "rows": rows})


if __name__ == "__main__":
    main()
