#!/usr/bin/env bash
# Wall time of the `make demo` experiment, per stage (each method x horizon cell: collection, rounds,
# training and evaluation), in a fresh run directory. The base model comes from the model cache, as
# in a second `make demo`; its one-off build is not measured.
#
#   benchmarks/bench_demo.sh            # the working tree  -> benchmarks/results/demo.json
#   benchmarks/bench_demo.sh REF        # any git commit, in a temporary worktree (same venv)
#                                       #                   -> benchmarks/results/demo-REF.json
#   CONFIG=old.yaml OUT=x.json benchmarks/bench_demo.sh [REF] [key=value ...]
#                                       # another recipe (a path), with overrides
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # absolute, not resolved: it must stay the venv's
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
ref=
if [ $# -gt 0 ] && [[ $1 != *=* ]]; then ref=$1; shift; fi
config=${CONFIG:-recipes/demo.yaml}
[ -z "${CONFIG:-}" ] || config=$(realpath "$CONFIG")
src=$PWD
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; [ -z "$ref" ] || git worktree remove --force "$tmp/src" 2>/dev/null || true' EXIT
if [ -n "$ref" ]; then
    git worktree add -q --detach "$tmp/src" "$ref"
    src=$tmp/src
fi
out=${OUT:-benchmarks/results/demo${ref:+-$ref}.json}
mkdir -p benchmarks/results
start=$(date +%s.%N)
# PYTHONPATH puts that tree's sftbc ahead of the installed one
(cd "$src" && PYTHONPATH=$src $PY -m sftbc.cli compare --config "$config" "runs_dir=$tmp/runs" "$@")
end=$(date +%s.%N)
$PY - "$tmp/runs/demo" "$start" "$end" "$out" "${ref:-working tree} ${config##*/} $*" <<'EOF'
import json, sys
from pathlib import Path
run, start, end, out, ref = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
rows = []
for r in json.loads((run / "results.json").read_text())["rows"]:
    m = json.loads((run / f"{r['method']}-T{r['T']:03d}" / "metrics.json").read_text())
    train = m.get("train", {}).get("wall_s")
    rows.append({"stage": f"{r['method']} T={r['T']}", "wall_s": r["wall_s"], "train_s": train,
                 "success_rate": r["success_rate"]})
total = round(end - start, 1)
json.dump({"benchmark": "demo", "ref": ref, "total_s": total, "rows": rows}, open(out, "w"), indent=2)
print(f"{'stage':<14} {'wall s':>8} {'train s':>8} {'success':>8}")
for r in rows:
    print(f"{r['stage']:<14} {r['wall_s']:>8} {r['train_s'] or '':>8} {r['success_rate']:>8}")
print(f"{'total':<14} {total:>8}   ({ref})\nwrote {out}")
EOF
