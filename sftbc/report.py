"""Tables for the terminal and for markdown reports; the comparison's power-law fit and plots."""

from __future__ import annotations

import math
from pathlib import Path

COLUMNS = [("horizon", "T", "{}"), ("episodes", "episodes", "{}"), ("success_rate", "success", "{:.3f}"),
           ("mistakes_mean", "mistakes/ep", "{:.3f}"), ("eps", "eps", "{:.4f}"), ("steps_mean", "steps/ep", "{:.2f}"),
           ("tool_errors", "tool errors", "{}")]


def cell(fmt: str, value) -> str:
    """A table cell; n/a for a metric the run did not measure (no teacher metrics, an older run)."""
    return "n/a" if value is None else fmt.format(value)


def eval_table(rows: list[dict], markdown: bool = False) -> str:
    header = [title for _, title, _ in COLUMNS]
    body = [[cell(fmt, r.get(key)) for key, _, fmt in COLUMNS] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


# -- the method x horizon comparison ---------------------------------------------------------------
def fit_exponent(horizons: list[int], mistakes: list[float]) -> dict:
    """Least-squares slope of log(mistakes) against log(T), and its R^2. Horizons with no mistakes at
    all in their evaluation episodes carry no point on a log scale (log 0), so they are left out, as
    are horizons where mistakes were not measured (None: no teacher metrics), and the horizons used
    are reported; fewer than two points give no fit."""
    pts = [(math.log(T), math.log(m)) for T, m in zip(horizons, mistakes) if m]
    out = {"exponent": None, "r2": None, "horizons_used": [T for T, m in zip(horizons, mistakes) if m]}
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return out
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    ss_res = sum((y - my - slope * (x - mx)) ** 2 for x, y in pts)
    ss_tot = sum((y - my) ** 2 for _, y in pts)
    out.update(exponent=slope, r2=1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0, intercept=my - slope * mx)
    return out


def pooled_eps(rows: list[dict]) -> float:
    """Per-step disagreement on the teacher's states, pooled over a method's horizons (weighted by steps)."""
    rows = [r for r in rows if r.get("eps") is not None]
    steps = sum(r["eps_steps"] for r in rows)
    return sum(r["eps"] * r["eps_steps"] for r in rows) / steps if steps else 0.0


def comparison_table(rows: list[dict]) -> str:
    cols = [("method", "{}"), ("T", "{}"), ("success_rate", "{:.3f}"), ("mistakes_mean", "{:.3f}"), ("eps", "{:.4f}"),
            ("teacher_labels", "{}"), ("teacher_tokens", "{}"), ("train_tokens", "{}"), ("wall_s", "{:.0f}")]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---:|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(cell(f, r.get(c)) for c, f in cols) + " |" for r in rows])


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_mistakes(rows: list[dict], scaling: dict, eps_ref: float, path: Path):
    """Mistakes per episode vs T, log-log, with each method's fitted power law and eps*T, eps*T^2."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    Ts = sorted({r["T"] for r in rows})
    for method, fit in scaling.items():
        pts = [(r["T"], r["mistakes_mean"]) for r in rows if r["method"] == method and r["mistakes_mean"]]
        if not pts:
            continue
        label = method if fit["exponent"] is None else f"{method}: slope {fit['exponent']:.2f} (R² {fit['r2']:.2f})"
        line = ax.plot(*zip(*pts), "o", label=label)[0]
        if fit["exponent"] is not None:
            xs = [min(fit["horizons_used"]), max(fit["horizons_used"])]
            ax.plot(xs, [math.exp(fit["intercept"]) * x ** fit["exponent"] for x in xs], "-", color=line.get_color())
    if eps_ref > 0:
        ax.plot(Ts, [eps_ref * T**2 for T in Ts], "k--", lw=1, label=f"ε·T² (ε={eps_ref:.4f}, bc measured)")
        ax.plot(Ts, [eps_ref * T for T in Ts], "k:", lw=1, label="ε·T")
    ax.set(xscale="log", yscale="log", xlabel="horizon T", ylabel="mistakes per episode",
           title="Compounding error (cells with 0 mistakes not drawn)")
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def plot_success(rows: list[dict], path: Path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r["T"], r["success_rate"]) for r in rows if r["method"] == method)
        ax.plot(*zip(*pts), "o-", label=method)
    ax.set(xscale="log", xlabel="horizon T", ylabel="success rate", ylim=(-0.02, 1.02), title="Success vs horizon")
    ax.set_xticks(sorted({r["T"] for r in rows}), [str(T) for T in sorted({r["T"] for r in rows})])
    ax.legend()
    _save(plt, fig, path)


def plot_rounds(per_T: dict[int, list[dict]], path: Path):
    """DAgger per round: success and mistakes of the policy that collected each round, and of the final
    student on held-out seeds (last point)."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    for T, pts in per_T.items():
        xs = [p["round"] for p in pts]
        line = a.plot(xs, [p["success_rate"] for p in pts], "o-", label=f"T={T}")[0]
        measured = [(p["round"], p["mistakes_mean"]) for p in pts if p.get("mistakes_mean") is not None]
        if measured:  # not without teacher metrics
            b.plot(*zip(*measured), "o-", color=line.get_color(), label=f"T={T}")
    a.set(xlabel="round", ylabel="success rate", ylim=(-0.02, 1.02), title="DAgger: success by round")
    b.set(xlabel="round", ylabel="mistakes per episode", title="DAgger: mistakes by round")
    a.legend(fontsize=8)
    _save(plt, fig, path)


def plot_learning(per_method: dict[str, list[dict]], T: int, path: Path):
    """Held-out success against teacher forward tokens spent, one line per method (bc, dart: one point)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, pts in per_method.items():
        ax.plot([p["teacher_tokens"] for p in pts], [p["success_rate"] for p in pts], "o-", label=method)
    ax.set(xlabel="teacher forward tokens", ylabel="success rate", ylim=(-0.02, 1.02),
           title=f"Success vs teacher cost (T = {T})")
    ax.legend()
    _save(plt, fig, path)
