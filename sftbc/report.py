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
MIN_HORIZONS = 3  # two points always fit a line exactly (R^2 = 1): no evidence of a power law


def fit_exponent(horizons: list[int], mistakes: list[float]) -> dict:
    """Least-squares slope of log(mistakes) against log(T), and its R^2. Horizons with no mistakes at
    all in their evaluation episodes carry no point on a log scale (log 0), so they are left out, as
    are horizons where mistakes were not measured (None: no teacher metrics), and the horizons used
    are reported; fewer than MIN_HORIZONS distinct horizons give no fit."""
    pts = [(math.log(T), math.log(m)) for T, m in zip(horizons, mistakes) if m]
    out = {"exponent": None, "r2": None, "intercept": None, "horizons_used": [T for T, m in zip(horizons, mistakes) if m]}
    if len({x for x, _ in pts}) < MIN_HORIZONS:
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


def with_interval(mean: float | None, lo: float | None, hi: float | None, fmt: str = "{:.3f}") -> str:
    """'0.817 [0.700, 0.900]'; n/a for a metric not measured; no brackets where there is no interval."""
    if mean is None:
        return "n/a"
    return fmt.format(mean) + ("" if lo is None else f" [{fmt.format(lo)}, {fmt.format(hi)}]")


def aggregate_table(agg: list[dict]) -> str:
    """Markdown table of a comparison's aggregate rows: each method x T over its seeds, with 95% intervals."""
    lines = ["| method | T | seeds | success [95%] | mistakes/ep [95%] | recovery [95%] | mistakes after the first "
             "[95%] | step-limit rate |", "|---|---:|---:|---|---|---|---|---:|"]
    cells = lambda a, key, lo, hi: with_interval(a.get(key), a.get(lo), a.get(hi))
    return "\n".join(lines + [
        f"| {a['method']} | {a['T']} | {a['n_seeds']} | {cells(a, 'success_rate', 'success_lo', 'success_hi')} | "
        f"{cells(a, 'mistakes_mean', 'mistakes_lo', 'mistakes_hi')} | {cells(a, 'recovery_rate', 'recovery_lo', 'recovery_hi')} | "
        f"{cells(a, 'after_first_mean', 'after_first_lo', 'after_first_hi')} | {a['step_limit_rate']:.2f} |"
        for a in agg])


def cells_table(rows: list[dict]) -> str:
    """Markdown table of a comparison's cells: what each cost (teacher labels, tokens) and measured. (Wall
    times are in results.json: the report is the same wherever and however the cells ran.)"""
    cols = [("method", "{}"), ("T", "{}"), ("seed", "{}"), ("success_rate", "{:.3f}"), ("mistakes_mean", "{:.3f}"),
            ("eps", "{:.4f}"), ("teacher_labels", "{}"), ("teacher_tokens", "{}"), ("train_tokens", "{}")]
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


def _errorbar(ax, agg: list[dict], key: str, lo: str, hi: str, **kw):
    """One method's points with their 95% intervals as error bars; returns the line (for its colour)."""
    pts = sorted((a["T"], a[key], a.get(lo), a.get(hi)) for a in agg)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    err = [[y - (l if l is not None else y) for _, y, l, _ in pts], [(h if h is not None else y) - y for _, y, _, h in pts]]
    return ax.errorbar(xs, ys, yerr=err, capsize=3, **kw).lines[0]


def plot_mistakes(agg: list[dict], scaling: dict, eps_ref: float, path: Path):
    """Mistakes per episode vs T, log-log, with 95% intervals, each method's power law (the mean of its
    per-seed fits) and eps*T, eps*T^2. Step-limit horizons (not fitted) are hollow."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    Ts = sorted({a["T"] for a in agg})
    for method, fit in scaling.items():
        mine = [a for a in agg if a["method"] == method and a.get("mistakes_mean")]
        if not mine:
            continue
        label = method if fit["exponent"] is None else f"{method}: T^{fit['exponent']:.2f}"
        line = _errorbar(ax, mine, "mistakes_mean", "mistakes_lo", "mistakes_hi", fmt="o", label=label)
        hollow = [a for a in mine if a["T"] in fit["flagged_horizons"]]
        if hollow:
            ax.plot([a["T"] for a in hollow], [a["mistakes_mean"] for a in hollow], "o", mfc="white", color=line.get_color())
        if fit["exponent"] is not None:
            used = [T for f in fit["per_seed"].values() if f["exponent"] is not None for T in f["horizons_used"]]
            xs = [min(used), max(used)]
            ax.plot(xs, [math.exp(fit["intercept"]) * x ** fit["exponent"] for x in xs], "-", color=line.get_color())
    if eps_ref > 0:
        ax.plot(Ts, [eps_ref * T**2 for T in Ts], "k--", lw=1, label=f"ε·T² (ε={eps_ref:.4f}, baseline measured)")
        ax.plot(Ts, [eps_ref * T for T in Ts], "k:", lw=1, label="ε·T")
    ax.set(xscale="log", yscale="log", xlabel="horizon T", ylabel="mistakes per episode",
           title="Compounding error (95% intervals; 0 not drawn)")
    if ax.get_legend_handles_labels()[0]:  # nothing to label when no cell made a mistake
        ax.legend(fontsize=8)
    _save(plt, fig, path)


def plot_success(agg: list[dict], path: Path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(a["method"] for a in agg):
        _errorbar(ax, [a for a in agg if a["method"] == method], "success_rate", "success_lo", "success_hi",
                  fmt="o-", label=method)
    Ts = sorted({a["T"] for a in agg})
    ax.set(xscale="log", xlabel="horizon T", ylabel="success rate", ylim=(-0.02, 1.02),
           title="Success vs horizon (95% intervals)")
    ax.set_xticks(Ts, [str(T) for T in Ts])
    ax.legend()
    _save(plt, fig, path)


def plot_rounds(per_T: dict[int, dict[int, list[dict]]], path: Path):
    """DAgger per round, one thin line per seed and their mean: success and mistakes of the policy that
    collected each round, and of the final student on held-out seeds (last point)."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    for T, per_seed in per_T.items():
        color = None
        for ax, key in ((a, "success_rate"), (b, "mistakes_mean")):
            runs = [[(p["round"], p[key]) for p in pts if p.get(key) is not None] for pts in per_seed.values()]
            runs = [r for r in runs if r]
            if not runs:  # mistakes: not without teacher metrics
                continue
            for r in runs:
                color = ax.plot(*zip(*r), "-", lw=0.7, alpha=0.4, color=color)[0].get_color()
            by_round = {}
            for x, y in (p for r in runs for p in r):
                by_round.setdefault(x, []).append(y)
            ax.plot(sorted(by_round), [sum(v) / len(v) for _, v in sorted(by_round.items())], "o-", color=color,
                    label=f"T={T}")
    a.set(xlabel="round", ylabel="success rate", ylim=(-0.02, 1.02), title="DAgger: success by round")
    b.set(xlabel="round", ylabel="mistakes per episode", title="DAgger: mistakes by round")
    a.legend(fontsize=8)
    _save(plt, fig, path)


def plot_learning(per_method: dict[str, dict[int, list[dict]]], T: int, path: Path):
    """Held-out success against teacher forward tokens spent, a line per method and seed (bc, dart: one point)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, per_seed in per_method.items():
        color = None
        for i, pts in enumerate(per_seed.values()):
            color = ax.plot([p["teacher_tokens"] for p in pts], [p["success_rate"] for p in pts], "o-", color=color,
                            alpha=0.7, label=method if i == 0 else None)[0].get_color()
    ax.set(xlabel="teacher forward tokens", ylabel="success rate", ylim=(-0.02, 1.02),
           title=f"Success vs teacher cost (T = {T}; a line per seed)")
    ax.legend()
    _save(plt, fig, path)
