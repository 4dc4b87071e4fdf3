"""The compounding-error experiment: every method trained and evaluated at every horizon T, each
with the same teacher budget per T: `compare.labels` teacher labels, or, with an LM teacher,
`compare.teacher_tokens` teacher forward tokens (what distillation is matched on).

- bc: teacher demonstrations at T;
- dart: the same, with each demonstration turn perturbed with probability `compare.dart_noise`;
- dagger: `dagger.rounds + 1` rounds, each with an equal share of the budget (a token budget's
  overshoot in one round comes off the next, so the run ends within about an episode of it);
- distill: on-policy distillation until the teacher-token budget is spent.

Every method x T is trained once per seed in `compare.seeds` and evaluated on the same held-out
episodes, so methods are compared pairwise, episode by episode, with intervals over seeds and
episodes (stats.py). Each cell is an ordinary run in <run>/<method>-T<T>-s<seed>/ (so it can be
inspected, evaluated again or resumed on its own); `compare.shard=i/n` runs a share of the cells, and
`report_only` (`sftbc compare --report`) merges the finished cells of a run directory. The report:
results.json (a row per cell with its per-episode outcomes, the aggregate rows, the paired
differences, the learning curves), scaling.json (the exponent of mistakes vs T per method and seed),
report.md and the PNG plots.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from sftbc import dist, stats
from sftbc.bc import run_bc, run_dir, write_json
from sftbc.config import ConfigError, RunConfig
from sftbc.dagger import check_resume, run_dagger
from sftbc.distill import run_distill
from sftbc.report import (MIN_HORIZONS, aggregate_table, cells_table, fit_exponent, plot_learning, plot_mistakes,
                          plot_rounds, plot_success, pooled_eps, with_interval)
from sftbc.show import html_page, load_episodes


SEED_STRIDE = 1_000_000  # compare seed s collects from training seeds collect.seed_start + s * SEED_STRIDE on


def cell_name(method: str, T: int, seed: int) -> str:
    return f"{method}-T{T:03d}-s{seed}"


def cell_config(cfg: RunConfig, method: str, T: int, seed: int) -> RunConfig:
    """One cell's run. A compare seed moves everything random in it: its training episodes (disjoint across
    seeds), the adapter's initialisation and batch order (train.seed), DAgger's beta coins and
    distillation's sampling (drawn from those). Held-out episodes stay the same for every seed and method."""
    c = copy.deepcopy(cfg)
    c.runs_dir, c.name = str(Path(cfg.runs_dir) / cfg.name), cell_name(method, T, seed)
    c.collect.horizons, c.eval.horizons = [T], [T]
    c.collect.noise = cfg.compare.dart_noise if method == "dart" else 0.0
    c.collect.seed_start = cfg.collect.seed_start + seed * SEED_STRIDE
    c.train.seed = cfg.train.seed + seed
    if not c.teacher.cache:  # one label cache for the sweep: every cell evaluates on the same held-out seeds
        c.teacher.cache = str(Path(cfg.runs_dir) / cfg.name / "label_cache.jsonl")
    rounds = cfg.dagger.rounds + 1 if method == "dagger" else 1
    if cfg.compare.teacher_tokens:
        c.collect.labels_per_horizon, c.collect.teacher_tokens_per_horizon = 0, cfg.compare.teacher_tokens // rounds
    else:
        c.collect.labels_per_horizon, c.collect.teacher_tokens_per_horizon = cfg.compare.labels // rounds, 0
    return c


def all_cells(cfg: RunConfig) -> list[tuple[int, str, int]]:
    """(T, method, seed) of every cell of the sweep, in the order they run: seed by seed, so an interrupted
    sweep has whole seeds to report (and more seeds only narrow the intervals)."""
    return [(T, m, s) for s in cfg.compare.seeds for T in cfg.compare.horizons for m in cfg.compare.methods]


def my_cells(cfg: RunConfig) -> list[tuple[int, str, int]]:
    """The cells this invocation runs: all, or with compare.shard=i/n every n-th from the i-th."""
    cells = all_cells(cfg)
    if not cfg.compare.shard:
        return cells
    i, n = map(int, cfg.compare.shard.split("/"))
    return cells[i::n]


def result_row(method: str, T: int, seed: int, m: dict) -> dict:
    ev = m["eval"][0]
    return {"method": method, "T": T, "seed": seed, "success_rate": ev["success_rate"],
            "mistakes_mean": ev.get("mistakes_mean"), "eps": ev.get("eps"), "eps_steps": ev.get("eps_steps"),
            "steps_mean": ev["steps_mean"], "step_limit_rate": ev["step_limit_rate"], "tool_errors": ev.get("tool_errors"),
            "episodes": ev["episodes"], "teacher_labels": m["teacher_labels"], "teacher_tokens": m["teacher_tokens"],
            "train_tokens": m["train"]["tokens"], "wall_s": m["wall_s"], "recovery_rate": ev.get("recovery_rate"),
            "first_mistakes": ev.get("first_mistakes"), "per_episode": ev["per_episode"]}


def dagger_curve(m: dict) -> list[dict]:
    """Per-round held-out success and mistakes (rounds evaluated with dagger.round_eval_episodes), then the final."""
    pts = [{"round": r["round"], **r["eval"][0]} for r in m["rounds"] if "eval" in r]
    return pts + [{"round": m["rounds"][-1]["round"], **m["eval"][0]}]


def learning_curve(m: dict) -> list[dict]:
    """Held-out success against the teacher tokens spent so far: DAgger's evaluated rounds, distillation's
    curve points (distill.curve_every), then the final student."""
    pts, spent = [], 0
    for r in m.get("rounds", []):
        spent += r["teacher_tokens"]
        if "eval" in r:
            pts.append({"teacher_tokens": spent, "success_rate": r["eval"][0]["success_rate"]})
    pts += [{"teacher_tokens": c["teacher_tokens"], "success_rate": c["eval"][0]["success_rate"]}
            for c in m.get("curve", [])]
    return pts + [{"teacher_tokens": m["teacher_tokens"], "success_rate": m["eval"][0]["success_rate"]}]


RUNNERS = {"bc": run_bc, "dart": run_bc, "distill": run_distill}  # and dagger, which also resumes mid-cell


def finished(cfg: RunConfig, method: str, T: int, seed: int) -> dict | None:
    done = Path(cfg.runs_dir) / cfg.name / cell_name(method, T, seed) / "metrics.json"
    return m if done.exists() and "eval" in (m := json.loads(done.read_text())) else None


def run_compare(cfg: RunConfig, resume: bool = False, report_only: bool = False) -> dict:
    """Run this invocation's cells (all, or a shard's), then report every finished cell of the run
    directory; `report_only` runs none and merges what the shards finished."""
    if cfg.data:
        raise ConfigError("config: data is for bc, dagger and distill; compare collects each method's data itself")
    shared = copy.deepcopy(cfg)  # what every shard of the run has in common: its config.yaml
    shared.compare.shard = ""
    check_resume(shared, resume or report_only or bool(cfg.compare.shard))  # shards share one run directory
    d = run_dir(shared)
    for T, method, seed in [] if report_only else my_cells(cfg):
        c = cell_config(cfg, method, T, seed)
        if finished(cfg, method, T, seed):
            continue  # finished before an interruption, or by another shard
        if method == "dagger":
            run_dagger(c, resume=resume or bool(cfg.compare.shard))
        else:
            RUNNERS[method](c)
    if cfg.compare.shard and not report_only:
        return {"dir": str(d), "rows": [], "cells": len(my_cells(cfg))}
    rows, curves, learning, missing = [], {}, {}, []
    for T, method, seed in all_cells(cfg):
        if (m := finished(cfg, method, T, seed)) is None:
            missing.append(cell_name(method, T, seed))
            continue
        rows.append(result_row(method, T, seed, m))
        learning.setdefault(T, {}).setdefault(method, {})[seed] = learning_curve(m)
        if method == "dagger":
            curves.setdefault(T, {})[seed] = dagger_curve(m)
    if not rows:
        raise ValueError(f"{d}: no finished cells to report")
    return write_report(d, cfg, rows, curves, learning, missing)


STEP_LIMIT_FLAG = 0.5  # a horizon where more episodes than this hit the step limit: mistakes capped, not fitted


def outcome_matrix(rows: list[dict], key: str) -> np.ndarray:
    """seeds x held-out episodes of one method at one T (rows sorted by seed), for `key` (success, mistakes)."""
    eps = [[e["seed"] for e in r["per_episode"]] for r in rows]
    if any(e != eps[0] for e in eps):
        raise ValueError("cells of one comparison were evaluated on different held-out episodes")
    return np.array([[float(e[key]) for e in r["per_episode"]] for r in rows])


def aggregate(rows: list[dict], baseline: str) -> tuple[list[dict], list[dict]]:
    """Per method x T: mean success and mistakes with 95% intervals (stats.py); per method other than
    `baseline` and T: the paired difference method - baseline on the same seeds and episodes."""
    groups = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        groups.setdefault((r["method"], r["T"]), []).append(r)
    agg, diffs = [], []
    for (method, T), rs in groups.items():
        a = {"method": method, "T": T, "n_seeds": len(rs), "seeds": [r["seed"] for r in rs],
             "episodes": rs[0]["episodes"], "step_limit_rate": sum(r["step_limit_rate"] for r in rs) / len(rs)}
        a["success_rate"], a["success_lo"], a["success_hi"] = stats.rate_interval(outcome_matrix(rs, "success"))
        if all(r["mistakes_mean"] is not None for r in rs):
            mistakes = outcome_matrix(rs, "mistakes")
            a["mistakes_mean"], a["mistakes_lo"], a["mistakes_hi"] = stats.crossed_interval(mistakes)
            # compounding, over the episodes with a mistake: how often they still succeed, how many mistakes follow
            erred = mistakes > 0
            a["recovery_rate"], a["recovery_lo"], a["recovery_hi"] = stats.crossed_interval(
                outcome_matrix(rs, "success") * erred, den=erred)
            a["after_first_mean"], a["after_first_lo"], a["after_first_hi"] = stats.crossed_interval(
                (mistakes - 1) * erred, den=erred)
        agg.append(a)
        base = {r["seed"]: r for r in groups.get((baseline, T), [])}
        paired = [(r, base[r["seed"]]) for r in rs if r["seed"] in base]
        if method == baseline or not paired:
            continue
        d = {"method": method, "baseline": baseline, "T": T, "n_seeds": len(paired)}
        for key in ("success", "mistakes"):
            if key == "mistakes" and any(x["mistakes_mean"] is None for pair in paired for x in pair):
                continue
            both = outcome_matrix([r for r, _ in paired] + [b for _, b in paired], key)  # checks: same episodes
            diff = both[:len(paired)] - both[len(paired):]
            d[f"{key}_diff"], d[f"{key}_lo"], d[f"{key}_hi"] = stats.crossed_interval(diff)
        diffs.append(d)
    return agg, diffs


def scaling(rows: list[dict], baseline: str) -> dict:
    """Per method: the exponent of mistakes ~ T^k fitted per seed (from MIN_HORIZONS horizons with
    mistakes, none of them flagged at the step limit), their mean with a t-interval, and the paired
    per-seed difference from the baseline's exponent."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method and r["mistakes_mean"] is not None]
        limits = {}
        for r in mine:
            limits.setdefault(r["T"], []).append(r["step_limit_rate"])
        flagged = sorted(T for T, v in limits.items() if sum(v) / len(v) > STEP_LIMIT_FLAG)
        per_seed = {}
        for seed in sorted({r["seed"] for r in mine}):
            rs = sorted((r for r in mine if r["seed"] == seed and r["T"] not in flagged), key=lambda r: r["T"])
            per_seed[seed] = fit_exponent([r["T"] for r in rs], [r["mistakes_mean"] for r in rs])
        fitted = {s: f for s, f in per_seed.items() if f["exponent"] is not None}
        f = {"per_seed": per_seed, "flagged_horizons": flagged, "n_seeds": len(fitted),
             "exponent": None, "lo": None, "hi": None, "intercept": None}
        if fitted:
            f["exponent"], f["lo"], f["hi"] = stats.t_interval([x["exponent"] for x in fitted.values()])
            f["intercept"] = sum(x["intercept"] for x in fitted.values()) / len(fitted)
        out[method] = f
    for method, f in out.items():
        base = out.get(baseline, {}).get("per_seed", {})
        pairs = [f["per_seed"][s]["exponent"] - base[s]["exponent"] for s in f["per_seed"]
                 if method != baseline and s in base and None not in (f["per_seed"][s]["exponent"], base[s]["exponent"])]
        if pairs:
            f["diff"], f["diff_lo"], f["diff_hi"] = stats.t_interval(pairs)
    return out


def difference_line(label: str, mean: float, lo: float | None, hi: float | None, fmt: str = "{:+.3f}") -> str:
    """'- dagger − bc at T = 32: success +0.31 [+0.22, +0.40]', saying plainly when the interval includes 0."""
    if lo is None:
        return f"- {label} {fmt.format(mean)} (one seed: no interval)"
    verdict = "" if stats.excludes_zero(lo, hi) else " (the interval includes 0: no difference shown)"
    return f"- {label} {fmt.format(mean)} [{fmt.format(lo)}, {fmt.format(hi)}]{verdict}"


def scaling_row(method: str, f: dict) -> str:
    seeds = f["per_seed"].values()
    exponents = ", ".join(with_interval(x["exponent"], None, None, "{:.2f}") for x in seeds)
    horizons = "; ".join(", ".join(map(str, x["horizons_used"])) + ("" if x["exponent"] is not None else " (too few)")
                         for x in seeds)
    return (f"| {method} | {with_interval(f['exponent'], f['lo'], f['hi'], '{:.2f}')} | {exponents} | {horizons} | "
            f"{', '.join(map(str, f['flagged_horizons'])) or '-'} |")


def write_report(d: Path, cfg: RunConfig, rows: list[dict], curves: dict, learning: dict, missing: list[str]) -> dict:
    baseline = cfg.compare.baseline
    agg, diffs = aggregate(rows, baseline)
    fits = scaling(rows, baseline)
    eps_ref = pooled_eps([r for r in rows if r["method"] == baseline] or rows)
    result = {"rows": rows, "aggregate": agg, "differences": diffs, "scaling": fits, "eps_ref": eps_ref,
              "missing": missing, "dir": str(d)}
    if not dist.is_main():
        return result  # the report is the main process's to write
    write_json(d / "results.json", {k: result[k] for k in ("rows", "aggregate", "differences", "missing")}
               | {"learning_curves": learning})
    write_json(d / "scaling.json", {"eps_ref": eps_ref, "methods": fits})
    plot_mistakes(agg, fits, eps_ref, d / "mistakes_vs_T.png")
    plot_success(agg, d / "success_vs_T.png")
    if curves:
        plot_rounds(curves, d / "dagger_rounds.png")
    T_max = max(learning)
    if cfg.compare.teacher_tokens:
        plot_learning(learning[T_max], T_max, d / "success_vs_teacher_tokens.png")
    budget = (f"{cfg.compare.teacher_tokens} teacher forward tokens ({cfg.teacher.kind} teacher)"
              if cfg.compare.teacher_tokens else f"{cfg.compare.labels} teacher labels")
    n_seeds = max(a["n_seeds"] for a in agg)
    how = ("95% intervals: a two-way bootstrap over seeds and held-out episodes (sftbc/stats.py)" if n_seeds > 1 else
           "one seed: 95% Wilson intervals on success and bootstrap intervals over episodes on mistakes; "
           "they say nothing about seed-to-seed variation (set compare.seeds)")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    report = [
        f"# {cfg.name}: {', '.join(methods)} on {cfg.env} at T = {', '.join(map(str, cfg.compare.horizons))}",
        "",
        f"Each method gets {budget} per horizon (dagger: {cfg.dagger.rounds + 1} rounds, "
        f"beta schedule {cfg.dagger.beta}) and is trained with seeds {cfg.compare.seeds}; every cell is evaluated on "
        f"the same {cfg.eval.episodes} held-out episodes at its own T. mistakes = steps per episode where the student's "
        "action differs from the teacher's label at the student's own state; eps = the same per step on the "
        "teacher's states; recovery = of the episodes with a mistake, the share still solved, and mistakes after the "
        f"first = their mean number of mistakes after the first one. {how}.",
        *([""] + [f"Not finished (rerun, or `--report` once they are): {', '.join(missing)}"] if missing else []),
        "",
        aggregate_table(agg),
        "",
        f"## Paired differences from {baseline} (same seeds, same held-out episodes)",
        "",
        *([difference_line(f"{x['method']} − {baseline} at T = {x['T']}: {key}", x[f"{key}_diff"], x[f"{key}_lo"],
                           x[f"{key}_hi"]) for x in diffs for key in ("success", "mistakes") if f"{key}_diff" in x]
          or [f"(none: {baseline} is the only method)" if baseline in methods else
              f"(none: the baseline {baseline} is not among the methods; set compare.baseline)"]),
        "",
        "## Scaling: mistakes per episode ~ T^exponent",
        "",
        f"Fitted per seed from the horizons with mistakes (at least {MIN_HORIZONS}); a horizon where more than "
        f"{STEP_LIMIT_FLAG:.0%} of episodes hit the step limit is not fitted (its mistakes are capped near 2T + 4).",
        "",
        "| method | exponent (mean, 95% t-interval) | per seed | horizons with mistakes, per seed | step-limit horizons |",
        "|---|---|---|---|---|",
        *[scaling_row(mth, f) for mth, f in fits.items()],
        "",
        *[difference_line(f"{mth} − {baseline}: exponent", f["diff"], f["diff_lo"], f["diff_hi"], "{:+.2f}")
          for mth, f in fits.items() if "diff" in f],
    ]
    if curves:
        report += ["", "## DAgger by round (mean over seeds: the policy that collected each round, then the final student)", "",
                   "| T | round | success | mistakes/ep |", "|---:|---:|---:|---:|"]
        for T, per_seed in curves.items():
            points = list(zip(*per_seed.values()))  # rounds line up: every seed runs the same rounds
            for k, pts in enumerate(points):
                mistakes = [p.get("mistakes_mean") for p in pts]
                report.append(f"| {T} | {pts[0]['round']}{' (final)' if k == len(points) - 1 else ''} | "
                              f"{sum(p['success_rate'] for p in pts) / len(pts):.3f} | "
                              f"{'n/a' if None in mistakes else f'{sum(mistakes) / len(mistakes):.3f}'} |")
    if cfg.compare.teacher_tokens:
        report += ["", f"## Success vs teacher tokens (T = {T_max})", "", "![](success_vs_teacher_tokens.png)"]
    report += ["", "## Cells (one row per method, T and seed)", "", cells_table(rows)]
    pages = []
    for r in rows:  # each cell's kept episodes as a page, failures first
        cell = d / cell_name(r["method"], r["T"], r["seed"])
        if (cell / "episodes.jsonl").exists():
            (cell / "episodes.html").write_text(html_page(load_episodes(cell), f"{cfg.name}: {cell.name}"))
            pages.append(f"[{cell.name}]({cell.name}/episodes.html)")
    if pages:
        report += ["", "## Episodes (each cell's kept episodes, failures first; `sftbc show <cell dir>`)", "",
                   " · ".join(pages)]
    report += ["", "![](mistakes_vs_T.png) ![](success_vs_T.png)" + (" ![](dagger_rounds.png)" if curves else "")]
    (d / "report.md").write_text("\n".join(report) + "\n")
    return result
