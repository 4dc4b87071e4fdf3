"""The compounding-error experiment: every method trained and evaluated at every horizon T, each
with the same teacher budget per T: `compare.labels` teacher labels, or, with an LM teacher,
`compare.teacher_tokens` teacher forward tokens (what distillation is matched on).

- bc: teacher demonstrations at T;
- dart: the same, with each demonstration turn perturbed with probability `compare.dart_noise`;
- dagger: `dagger.rounds + 1` rounds, each with an equal share of the budget (a token budget's
  overshoot in one round comes off the next, so the run ends within about an episode of it);
- distill: on-policy distillation until the teacher-token budget is spent.

Each cell is an ordinary run in <run>/<method>-T<T>/ (so it can be inspected, evaluated again or
resumed on its own). The sweep writes results.json (a row per method x T, and the learning curves),
scaling.json (the fitted exponent of mistakes vs T per method), report.md and the PNG plots.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from sftbc import dist
from sftbc.bc import run_bc, run_dir, write_json
from sftbc.config import ConfigError, RunConfig
from sftbc.dagger import check_resume, run_dagger
from sftbc.distill import run_distill
from sftbc.report import (cell, comparison_table, fit_exponent, plot_learning, plot_mistakes, plot_rounds, plot_success,
                          pooled_eps)


def cell_config(cfg: RunConfig, method: str, T: int) -> RunConfig:
    c = copy.deepcopy(cfg)
    c.runs_dir, c.name = str(Path(cfg.runs_dir) / cfg.name), f"{method}-T{T:03d}"
    c.collect.horizons, c.eval.horizons = [T], [T]
    c.collect.noise = cfg.compare.dart_noise if method == "dart" else 0.0
    if not c.teacher.cache:  # one label cache for the sweep: every cell evaluates on the same held-out seeds
        c.teacher.cache = str(Path(cfg.runs_dir) / cfg.name / "label_cache.jsonl")
    rounds = cfg.dagger.rounds + 1 if method == "dagger" else 1
    if cfg.compare.teacher_tokens:
        c.collect.labels_per_horizon, c.collect.teacher_tokens_per_horizon = 0, cfg.compare.teacher_tokens // rounds
    else:
        c.collect.labels_per_horizon, c.collect.teacher_tokens_per_horizon = cfg.compare.labels // rounds, 0
    return c


def result_row(method: str, T: int, m: dict) -> dict:
    ev = m["eval"][0]
    return {"method": method, "T": T, "success_rate": ev["success_rate"], "mistakes_mean": ev.get("mistakes_mean"),
            "eps": ev.get("eps"), "eps_steps": ev.get("eps_steps"), "steps_mean": ev["steps_mean"],
            "tool_errors": ev.get("tool_errors"), "episodes": ev["episodes"],
            "teacher_labels": m["teacher_labels"], "teacher_tokens": m["teacher_tokens"],
            "train_tokens": m["train"]["tokens"], "wall_s": m["wall_s"]}


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


def run_compare(cfg: RunConfig, resume: bool = False) -> dict:
    if cfg.data:
        raise ConfigError("config: data is for bc, dagger and distill; compare collects each method's data itself")
    check_resume(cfg, resume)
    d = run_dir(cfg)
    rows, curves, learning = [], {}, {}
    for T in cfg.compare.horizons:
        for method in cfg.compare.methods:
            c = cell_config(cfg, method, T)
            done = Path(c.runs_dir) / c.name / "metrics.json"
            if resume and done.exists() and "eval" in (m := json.loads(done.read_text())):
                pass  # finished before an interruption
            elif method == "dagger":
                m = run_dagger(c, resume=resume)
            else:
                m = RUNNERS[method](c)
            rows.append(result_row(method, T, m))
            learning.setdefault(T, {})[method] = learning_curve(m)
            if method == "dagger":
                curves[T] = dagger_curve(m)
            # as they come; the last write is the full table
            write_json(d / "results.json", {"rows": rows, "learning_curves": learning})
    return write_report(d, cfg, rows, curves, learning)


def write_report(d: Path, cfg: RunConfig, rows: list[dict], curves: dict[int, list[dict]],
                 learning: dict[int, dict[str, list[dict]]]) -> dict:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {mth: [r for r in rows if r["method"] == mth] for mth in methods}
    scaling = {mth: fit_exponent([r["T"] for r in rs], [r["mistakes_mean"] for r in rs]) for mth, rs in by.items()}
    eps_ref = pooled_eps(by.get("bc", rows))
    result = {"rows": rows, "scaling": scaling, "eps_ref": eps_ref, "dir": str(d)}
    if not dist.is_main():
        return result  # the report is the main process's to write
    write_json(d / "scaling.json", {"eps_ref": eps_ref, "methods": scaling})
    plot_mistakes(rows, scaling, eps_ref, d / "mistakes_vs_T.png")
    plot_success(rows, d / "success_vs_T.png")
    if curves:
        plot_rounds(curves, d / "dagger_rounds.png")
    T_max = max(learning)
    if cfg.compare.teacher_tokens:
        plot_learning(learning[T_max], T_max, d / "success_vs_teacher_tokens.png")
    budget = (f"{cfg.compare.teacher_tokens} teacher forward tokens ({cfg.teacher.kind} teacher)"
              if cfg.compare.teacher_tokens else f"{cfg.compare.labels} teacher labels")
    fit_lines = ["| method | exponent | R² | horizons fitted |", "|---|---:|---:|---|"]
    for mth, f in scaling.items():
        e = "n/a" if f["exponent"] is None else f"{f['exponent']:.2f}"
        r2 = "n/a" if f["r2"] is None else f"{f['r2']:.3f}"
        fit_lines.append(f"| {mth} | {e} | {r2} | {', '.join(map(str, f['horizons_used']))} |")
    report = [
        f"# {cfg.name}: {', '.join(methods)} on {cfg.env} at T = {', '.join(map(str, cfg.compare.horizons))}",
        "",
        f"Each method gets {budget} per horizon (dagger: {cfg.dagger.rounds + 1} rounds, "
        f"beta schedule {cfg.dagger.beta}); every cell is evaluated on {cfg.eval.episodes} held-out episodes at its own T. "
        "mistakes = steps per episode where the student's action differs from the teacher's label at the student's own "
        "state; eps = the same per step on the teacher's states.",
        "",
        comparison_table(rows),
        "",
        "## Scaling: mistakes per episode ~ T^exponent",
        "",
        *fit_lines,
        "",
        f"Reference lines use the BC student's pooled eps = {eps_ref:.4f}.",
        "",
        "![mistakes vs T](mistakes_vs_T.png)",
        "",
        "![success vs T](success_vs_T.png)",
    ]
    if cfg.compare.teacher_tokens:
        report += ["", f"## Success vs teacher tokens (T = {T_max})", "",
                   "![success vs teacher tokens](success_vs_teacher_tokens.png)", "",
                   "| method | teacher tokens | success |", "|---|---:|---:|"]
        report += [f"| {mth} | {p['teacher_tokens']} | {p['success_rate']:.3f} |"
                   for mth, pts in learning[T_max].items() for p in pts]
    if curves:
        report += ["", "## DAgger by round", "", "![DAgger rounds](dagger_rounds.png)", "",
                   "| T | round | success | mistakes/ep |", "|---:|---:|---:|---:|"]
        report += [f"| {T} | {p['round']} | {p['success_rate']:.3f} | {cell('{:.3f}', p.get('mistakes_mean'))} |"
                   for T, pts in curves.items() for p in pts]
    (d / "report.md").write_text("\n".join(report) + "\n")
    return result
