"""Distillation's per-iteration diagnostics across the seeds of a compare run (issue 32): the loss,
reverse KL on the student's own tokens, the student's entropy, the gradient norm, the success of its
own (training) episodes and its validation curve, one line per seed; a table and a plot.

    python benchmarks/distill_diagnostics.py runs/lm3 docs/experiments/distill_stability
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KEYS = ("loss", "reverse_kl", "entropy", "grad_norm", "success_rate")


def cells(run: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / "metrics.json").read_text())
            for d in sorted(run.glob("distill-T*-s*")) if (d / "metrics.json").exists()}


def table(name: str, m: dict) -> list[str]:
    """One row per iteration: its diagnostics and the validation point that followed it."""
    val = {p.get("iteration"): p for p in m["curve"]}
    best = max(m["curve"], key=lambda p: p["success_rate"])
    rows = [f"### {name}: final held-out success {m['eval'][0]['success_rate']:.3f}; validation: best "
            f"{best['success_rate']:.3f} (at {best['teacher_tokens']} teacher tokens), last {m['curve'][-1]['success_rate']:.3f} "
            f"(last - best {m['curve'][-1]['success_rate'] - best['success_rate']:+.3f})",
            "", "| iteration | teacher tokens | loss | reverse KL | entropy | grad norm | own-episode success | "
            "validation success | validation eps |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
    for p in (p for p in m["curve"] if p.get("sft")):  # where distillation starts: the SFT student
        rows.append("| " + " | ".join(fmt(x) for x in ("sft", p["teacher_tokens"], *[None] * len(KEYS),
                                                        p["success_rate"], p["eval"][0].get("eps"))) + " |")
    for it in m["iterations"]:
        v = val.get(it["iteration"], {})
        rows.append("| " + " | ".join(fmt(x) for x in (it["iteration"], it["teacher_tokens"], *(it.get(k) for k in KEYS),
                                                        v.get("success_rate"), v.get("eval", [{}])[0].get("eps"))) + " |")
    if m.get("collapses"):
        rows.append(f"\ncollapse warnings: {m['collapses']}")
    return rows + [""]


def plot(all_cells: dict[str, dict], path: Path):
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for name, m in all_cells.items():
        its = m["iterations"]
        tok = [it["teacher_tokens"] for it in its]
        val = [(p["teacher_tokens"], p["success_rate"]) for p in m["curve"]]
        axes[0].plot(*zip(*val), marker=".", label=name)
        for ax, key in zip(axes[1:], ("reverse_kl", "entropy", "grad_norm")):
            ax.plot(tok, [it.get(key) for it in its], marker=".", label=name)
    for ax, title in zip(axes, ("validation success", "reverse KL (student tokens)", "student entropy", "grad norm")):
        ax.set_title(title)
        ax.set_xlabel("teacher tokens")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(run: str, out: str):
    found = cells(Path(run))
    if not found:
        sys.exit(f"no finished distill cells in {run}")
    Path(out).mkdir(parents=True, exist_ok=True)
    lines = [f"# Distillation diagnostics of {run}", ""]
    for name, m in found.items():
        lines += table(name, m)
    (Path(out) / "diagnostics.md").write_text("\n".join(lines))
    plot(found, Path(out) / "diagnostics.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:3])
