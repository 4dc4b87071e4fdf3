"""A real model's throughput on this CPU, as a fraction of what its matmul units do (issue 33).

For SmolLM2-135M (or any --model), in one run:
  peak      the best of a few large GEMMs (4096 x 4096, fp32 and bf16): this CPU's matmul FLOP/s;
  training  the LoRA step on BC's data, the oracle's demonstrations (bench_step.py's worker, one
            process per variant, the same batches for each): plain (fp32 padded rows, the default),
            packed (`train.pack`), bf16 autocast (`train.bf16`), packed_bf16, torch.compile, one
            thread. Reported as the data's tokens/s (row tokens, the same for every variant) and as
            a fraction of the fp32 and bf16 peaks of the FLOPs it executed (the tokens it fed:
            padding included, shared prefixes once when packed);
  rollout   sftbc's batched KV-cached rollout (bench_rollout.py's worker): conversation tokens/s and
            its fraction of the fp32 peak.
FLOPs: 2 per weight of every nn.Linear (the output head included) per token for a forward;
attention's score products are left out (a few percent at these lengths), so the fractions are
lower bounds. A LoRA step is 4 per weight per token: the frozen base's backward computes input
gradients only (2 more), the adapters' own work is negligible. A rollout's fraction counts only the
tokens of the finished conversations, not discarded generations or rejected draft tokens.

    python benchmarks/bench_model.py --model smollm2-135m        # writes benchmarks/results/model.json
    python benchmarks/bench_model.py --model tiny --steps 3 --episodes 4 --out /tmp/model.json  # a smoke run
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from bench_step import PACKED_VARIANTS  # noqa: E402
from bench_train import datasets  # noqa: E402
from common import spawn, write_results  # noqa: E402

from sftbc.models import load_model, resolve_model_path  # noqa: E402

HERE = Path(__file__).parent
TRAIN_VARIANTS = ["plain", "packed", "bf16", "packed_bf16", "compile", "threads1"]


def gemm_peak(dtype: torch.dtype, n: int = 4096, reps: int = 5) -> float:
    """FLOP/s of the fastest of `reps` n x n matmuls (after one warm-up)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def linear_weights(model_path: str) -> int:
    """Weights that every token multiplies: those of the nn.Linear layers, the output head included."""
    model = load_model(model_path)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--env", default="maze_smudged")
    ap.add_argument("--horizons", type=int, nargs="+", default=[1, 12])
    # BC's data: the rows `sftbc bc` trains (relabelled rows would carry the untrained model's long generations)
    ap.add_argument("--beta", type=float, default=1.0, help="the oracle acts with this probability, else the model")
    ap.add_argument("--labels", type=int, default=480, help="labels per horizon for the training data")
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps per variant")
    # SmolLM2's padded fp32 step of 2,048 tokens peaks at 7.7 GB here, of 4,096 at about 13.5 GB
    ap.add_argument("--max-tokens", type=int, default=2048, help="tokens per step")
    ap.add_argument("--episodes", type=int, default=8, help="rollout episodes per horizon")
    ap.add_argument("--variants", nargs="+", default=TRAIN_VARIANTS)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "model.json")
    args = ap.parse_args()
    model = resolve_model_path(args.model)
    args.variants = ["plain", *[v for v in args.variants if v != "plain"]]  # the speed-ups are over plain's step
    peak = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}
    weights = linear_weights(model)
    print(f"matmul peak: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s; "
          f"{weights / 1e6:.1f}M linear weights")
    rows = []

    def save():  # after every part, so that a worker killed later loses only its own part
        write_results(args.out, {"benchmark": "model", "model": model, "env": args.env, "beta": args.beta,
                                 "labels": args.labels, "steps": args.steps, "max_tokens": args.max_tokens,
                                 "peak_gflops": {k: round(v / 1e9) for k, v in peak.items()},
                                 "linear_weights": weights, "torch_threads": torch.get_num_threads(), "rows": rows})

    with tempfile.TemporaryDirectory() as tmp:
        for T, data in datasets(model, args.horizons, lambda T: max(1, args.labels // T), tmp, args.env, args.beta):
            # one process per variant: six copies of SmolLM2 in one (bench_step.py's way, variants in turns)
            # reached 22.6 GB and were killed by the OOM killer on the 24 GiB machine
            res = {}
            for v in args.variants:
                r = spawn(str(HERE / "bench_step.py"), "--worker", v, "--data", data, "--model", model,
                          "--steps", args.steps, "--max-tokens", args.max_tokens)
                r[v]["peak_rss_mb"] = r.pop("peak_rss_mb")
                res |= r
            for v in args.variants:
                fed = res["packed_tokens" if v in PACKED_VARIANTS else "tokens"]
                seconds = res[v]["median_ms"] / 1000 * res["steps"]
                flops = 4 * weights * fed / seconds
                rows.append({"part": "train", "T": T, "variant": v, "median_ms": res[v]["median_ms"],
                             "tokens_per_s": round(res["row_tokens"] / seconds),
                             "fraction_of_fp32_peak": round(flops / peak["fp32"], 3),
                             "fraction_of_bf16_peak": round(flops / peak["bf16"], 3),
                             "speedup": round(res["plain"]["median_ms"] / res[v]["median_ms"], 2),
                             "peak_rss_mb": res[v]["peak_rss_mb"]})
            save()
    for T in args.horizons:
        r = spawn(str(HERE / "bench_rollout.py"), "--worker", "cached", "--model", model, "--env", args.env,
                  "--horizons", T, "--episodes", args.episodes)
        rows.append({"part": "rollout", "T": T, "variant": "cached", "tokens_per_s": r["tokens_per_s"],
                     "fraction_of_fp32_peak": round(2 * weights * r["tokens_per_s"] / peak["fp32"], 3),
                     "steps_per_s": r["steps_per_s"], "peak_rss_mb": r["peak_rss_mb"]})
        save()
    print(f"{'part':<8} {'T':>3} {'variant':<12} {'tokens/s':>9} {'of fp32 peak':>12} {'of bf16 peak':>12} "
          f"{'speedup':>7} {'peak RSS MB':>11}")
    for r in rows:
        print(f"{r['part']:<8} {r['T']:>3} {r['variant']:<12} {r['tokens_per_s']:>9} {r['fraction_of_fp32_peak']:>12} "
              f"{r.get('fraction_of_bf16_peak', ''):>12} {r.get('speedup', ''):>7} {r['peak_rss_mb']:>11}")


if __name__ == "__main__":
    main()
