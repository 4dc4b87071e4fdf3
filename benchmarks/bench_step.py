"""The demo's training step under the speed-ups this CPU offers: one thread, bf16, torch.compile, trie packing.

`make demo` is a fixed number of optimizer steps (`train.min_steps` per training, six trainings), so
its wall time is the step's. This measures that step on the demo's kind of data: for T = 1 and 16
the oracle demonstrates maze_smudged (480 labels per T, the demo's budget; `--beta 0.5`: the recipes'
6-epoch base acts on a coin instead, and the oracle relabels every state, as in a DAgger round), and
the data is cut into the demo's 2,048-token batches. One process per T holds one copy of the model
per variant, each with the same fresh LoRA adapter (seed 0) and SDPA as the recipes train, and the
variants take turns on every batch, so they share whatever this machine's speed does during the run:
  plain     float32 on every core (the recipes)
  threads1  one thread: what each of two processes gets if two cells run side by side on 2 cores
  bf16      torch.autocast(bfloat16)
  compile   torch.compile(dynamic=True) of the model's forward, with an empty Inductor cache
  packed    each batch as one trie-packed sequence (`train.pack`): shared tokens once, logits only at targets
  packed_bf16  both: packed batches under bf16 autocast
Reported per variant: the median step (its speed-up is plain's median over it); what all its steps
took beyond that median (`overhead_s`: for compile, its compilations, which recur as new shapes and
the first branched batch arrive); the activations a step keeps for its backward on the largest
batch (`saved_mb`); the largest loss difference from plain. A second process then compiles again
with the cache the first one filled (`compile_warm_overhead_s`), as a second run would.

    python benchmarks/bench_step.py --model "$(sftbc base --config recipes/demo.yaml)"
                                                     # writes benchmarks/results/step.json
    python benchmarks/bench_step.py --model "$(sftbc base --config recipes/demo.yaml)" --variants plain packed \
        --beta 0.5 --horizons 16 32 --out benchmarks/results/step_relabelled.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
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
from sftbc.pack import pack  # noqa: E402
from sftbc.train import collate, make_batches, make_optimizer, token_loss  # noqa: E402

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("plain", "threads1", "bf16", "compile", "packed", "packed_bf16")
PACKED_VARIANTS, BF16_VARIANTS = ("packed", "packed_bf16"), ("bf16", "packed_bf16")


def saved_mb(forward) -> float:
    """MB of the distinct tensors autograd keeps from `forward()` for its backward: the activations, the
    step's memory above the weights (read off the graph, unlike RSS, which a process never gives back)."""
    seen = {}

    def keep(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        forward()
    return round(sum(seen.values()) / 2**20, 1)


def run_variants(data: Path, model_path: str, variants: list[str], steps: int, max_tokens: int) -> dict:
    """Every variant takes the same `steps` + 1 steps on the same batches, in turns."""
    tok = load_tokenizer(model_path)
    batches = make_batches(to_examples(load_dataset_dir(data), tok), max_tokens, random.Random(0))[: steps + 1]

    def batch(v: str, i: int) -> dict:  # built inside each timed step, as `train` builds it
        return pack(batches[i]) if v in PACKED_VARIANTS else collate(batches[i], tok.pad_token_id)

    cores = torch.get_num_threads()
    sides = {}
    for v in variants:
        torch.manual_seed(0)
        model = add_lora(load_model(model_path), LoraArgs())
        model.train()
        if v == "compile":
            model.forward = torch.compile(model.forward, dynamic=True)
        sides[v] = {"model": model, "step": make_optimizer(model, 1e-3, None, 0), "times": [], "losses": []}
    for i in range(len(batches)):
        for v, s in sides.items():
            torch.set_num_threads(1 if v == "threads1" else cores)
            precision = torch.autocast("cpu", dtype=torch.bfloat16) if v in BF16_VARIANTS else contextlib.nullcontext()
            t0 = time.perf_counter()
            with precision:
                loss = token_loss(s["model"], batch(v, i))
            s["step"](loss)
            s["times"].append(time.perf_counter() - t0)
            s["losses"].append(loss.item())
    for v, s in sides.items():  # untimed: the activations each variant keeps for backward, on its largest batch
        # (one forward: after each of SmolLM2's 3 GB forwards the process kept ~1.7 GB more, OOM-killed by the 7th)
        largest = batch(v, max(range(len(batches)), key=lambda i: batch(v, i)["input_ids"].numel()))
        with torch.autocast("cpu", dtype=torch.bfloat16) if v in BF16_VARIANTS else contextlib.nullcontext():
            s["mem"] = saved_mb(lambda: token_loss(s["model"], largest))
    out = {"max_len": max(len(e.input_ids) for b in batches for e in b), "steps": len(batches) - 1,
           "tokens": sum(batch("plain", i)["input_ids"].numel() for i in range(1, len(batches))),
           "packed_tokens": sum(batch("packed", i)["input_ids"].numel() for i in range(1, len(batches))),
           "row_tokens": sum(len(e.input_ids) for b in batches[1:] for e in b)}  # the data's, whatever the layout
    for v, s in sides.items():
        median = statistics.median(s["times"][1:])  # after the warm-up step
        out[v] = {"median_ms": round(median * 1000, 1), "mean_ms": round(sum(s["times"][1:]) / out["steps"] * 1000, 1),
                  "overhead_s": round(max(0.0, sum(s["times"]) - median * len(s["times"])), 2),
                  "saved_mb": s["mem"], "losses": s["losses"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--horizons", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--labels", type=int, default=480, help="labels per horizon (episodes = labels / T)")
    ap.add_argument("--episodes", type=int, help="episodes per horizon instead of labels / T")
    ap.add_argument("--env", default="maze_smudged")
    ap.add_argument("--beta", type=float, default=1.0, help="the oracle acts with this probability, else the base")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per variant")
    ap.add_argument("--max-tokens", type=int, default=2048, help="the recipes' train.max_tokens")
    ap.add_argument("--model", default="tiny", help="student: 'tiny' (built-in) or a model directory")
    ap.add_argument("--out", type=Path, default=RESULTS / "step.json")
    ap.add_argument("--worker", nargs="+", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return emit(run_variants(args.data, args.model, args.worker, args.steps, args.max_tokens))
    model = resolve_model_path(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        episodes = args.episodes or (lambda T: max(1, args.labels // T))
        variants = ["plain", *[v for v in args.variants if v != "plain"]]
        for T, data in datasets(model, args.horizons, episodes, tmp, args.env, args.beta):
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{tmp}/inductor-T{T}"  # empty, then what the first run filled
            side_args = ("--data", data, "--model", model, "--steps", args.steps, "--max-tokens", args.max_tokens)
            res = spawn(__file__, "--worker", *variants, *side_args)
            plain = res["plain"]
            for v in variants:
                r = res[v]
                rows.append({"T": T, "variant": v, "steps": res["steps"], "max_len": res["max_len"],
                             "tokens": res["packed_tokens" if v in PACKED_VARIANTS else "tokens"],
                             "median_ms": r["median_ms"], "mean_ms": r["mean_ms"], "overhead_s": r["overhead_s"],
                             "saved_mb": r["saved_mb"],
                             "speedup": round(plain["median_ms"] / r["median_ms"], 2),
                             "loss_max_abs_diff": max(abs(x - y) for x, y in zip(plain["losses"], r["losses"]))})
                if v == "compile":
                    rows[-1]["compile_warm_overhead_s"] = spawn(__file__, "--worker", v, *side_args)[v]["overhead_s"]
    print(f"{'T':>3} {'variant':<9} {'max len':>7} {'tokens':>7} {'median ms/step':>14} {'speedup':>7} "
          f"{'overhead s':>10} {'saved MB':>8} {'max |Δ loss|':>12}")
    for r in rows:
        warm = f"  (warm cache: {r['compile_warm_overhead_s']} s)" if "compile_warm_overhead_s" in r else ""
        print(f"{r['T']:>3} {r['variant']:<9} {r['max_len']:>7} {r['tokens']:>7} {r['median_ms']:>14} {r['speedup']:>7} "
              f"{r['overhead_s']:>10} {r['saved_mb']:>8} {r['loss_max_abs_diff']:>12.2e}{warm}")
    write_results(args.out, {"benchmark": "step", "model": model, "env": args.env, "beta": args.beta,
                             "episodes": args.episodes or f"{args.labels} labels / T",
                             "max_tokens": args.max_tokens, "torch_threads": torch.get_num_threads(), "rows": rows})


if __name__ == "__main__":
    main()
