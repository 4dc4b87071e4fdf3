"""The `sftbc` command: `sftbc <stage> --config recipes/<x>.yaml [key=value ...]`."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

# No hub at run time: every model is local. Set before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not the user's concern

STAGES = {
    "base": "build (or reuse) the built-in tiny base model and print its path",
    "collect": "collect teacher demonstrations into <run>/data",
    "bc": "collect demonstrations (or load data=...), LoRA-SFT the student, evaluate per horizon",
    "eval": "evaluate a student (adapter=... or the run's adapter/) per horizon",
    "dagger": "DAgger: demonstrations, then rounds of student rollouts relabelled by the teacher, aggregated",
    "distill": "on-policy distillation: the student plays whole episodes, an LM teacher scores every token (reverse KL)",
    "teacher": "train an LM teacher: DAgger from the oracle, merged into <run>/model (teacher.kind=hf teacher.path=...)",
    "compare": "bc vs dart vs dagger (vs distill) at every horizon, equal teacher cost: results.json, report.md, plots",
}
RESUMABLE = ("dagger", "teacher", "compare")


def check_paths(cfg, command: str):
    """The paths a run reads exist, before any work: a bad one is a one-line error naming its key."""
    from sftbc.config import ConfigError
    from sftbc.models import resolve_model_path

    named = [("model", cfg.model)] + ([("teacher.path", cfg.teacher.path)] if cfg.teacher.kind == "hf" else [])
    for key, path in named:
        if command != "base" and path != "tiny":  # the built-in model is built on first use
            try:
                resolve_model_path(path)
            except FileNotFoundError as e:
                raise ConfigError(f"config: {key}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sftbc", description="LLM SFT as behavioral cloning, DAgger, distillation.")
    sub = parser.add_subparsers(dest="command", required=True)
    from sftbc.config import describe

    keys = "config keys (set in a YAML recipe, or as key=value; values are YAML):\n" + describe()
    for name, help_text in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=keys,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", help="YAML recipe (see recipes/)")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-3 eval.horizons=[1,2]")
        p.add_argument("--dry-run", action="store_true",
                       help="load and validate the config and overrides, print the resolved config, run nothing "
                            "(model and teacher paths are not checked: they may not be built or fetched yet)")
        if name in RESUMABLE:
            p.add_argument("--resume", action="store_true", help="continue the run in <runs_dir>/<name> where it stopped")
        if name == "compare":
            p.add_argument("--report", action="store_true",
                           help="run no cell: report the finished cells of <runs_dir>/<name> (after compare.shard=i/n jobs)")
    show = sub.add_parser("show", help="print a run's kept episodes: the conversation, the student beside the teacher, "
                                       "the first mistake marked")
    show.add_argument("path", help="a run or cell directory (its episodes.jsonl), or an episodes .jsonl file")
    show.add_argument("--failed", action="store_true", help="failed episodes only")
    show.add_argument("-n", type=int, default=3, help="how many episodes (default 3)")
    models = sub.add_parser("models", help="manage pretrained students").add_subparsers(dest="action", required=True)
    fetch = models.add_parser("fetch", help="download a pretrained student into the local cache")
    fetch.add_argument("name", help="smollm2-135m")
    args = parser.parse_args(argv)

    from sftbc import dist
    from sftbc.config import ConfigError, load_config

    try:
        dist.init()  # under accelerate launch / torchrun: join the other processes
        if not dist.is_main():
            sys.stdout = open(os.devnull, "w")  # one copy of the tables; errors still reach stderr
        if args.command == "show":
            from sftbc.show import show

            print(show(args.path, args.failed, args.n))
            return 0
        if args.command == "models":
            from sftbc.models import fetch_model

            print(fetch_model(args.name))
            return 0
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            import yaml

            from sftbc.config import to_dict

            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            return 0
        check_paths(cfg, args.command)
        from sftbc import bc

        if args.command == "base":
            from sftbc.models import build_tiny
            from sftbc.probe import report_copying

            path = build_tiny(cfg.tiny)
            print(path)
            report_copying(str(path), list(dict.fromkeys([*cfg.tiny.envs, cfg.env])), verbose=True)
        elif args.command == "collect":
            m = bc.run_collect(cfg)
            print(f"collected {m['episodes']} episodes, {m['teacher_labels']} teacher labels -> {cfg.runs_dir}/{cfg.name}/data")
        elif args.command == "bc":
            print(bc.summary(bc.run_bc(cfg)))
            print(f"saved to {cfg.runs_dir}/{cfg.name}/")
        elif args.command == "eval":
            print(bc.summary(bc.run_eval(cfg)))
        elif args.command == "dagger":
            from sftbc.dagger import run_dagger

            print(bc.summary(run_dagger(cfg, resume=args.resume)))
            print(f"saved to {cfg.runs_dir}/{cfg.name}/")
        elif args.command == "distill":
            from sftbc.distill import run_distill

            print(bc.summary(run_distill(cfg)))
            print(f"saved to {cfg.runs_dir}/{cfg.name}/")
        elif args.command == "teacher":
            from sftbc.dagger import run_teacher

            m = run_teacher(cfg, resume=args.resume)
            print(bc.summary(m))
            print(f"teacher model: {m['model_dir']}  (use teacher.kind=hf teacher.path={m['model_dir']})")
        elif args.command == "compare":
            from sftbc.compare import difference_line, run_compare
            from sftbc.report import MIN_HORIZONS, aggregate_table, with_interval

            out = run_compare(cfg, resume=args.resume, report_only=args.report)
            if not out["rows"]:  # a shard: its cells are done, the report waits for the others
                print(f"shard {cfg.compare.shard}: {out['cells']} cells done in {out['dir']}; "
                      f"`sftbc compare --report` merges them once every shard has finished")
                return 0
            print(aggregate_table(out["aggregate"]))
            for x in out["differences"]:
                print(difference_line(f"{x['method']} − {x['baseline']} at T = {x['T']}: success", x["success_diff"],
                                      x["success_lo"], x["success_hi"]))
            for method, fit in out["scaling"].items():
                if fit["exponent"] is None:
                    print(f"{method}: mistakes ~ T^k not fitted (no seed has {MIN_HORIZONS} horizons with mistakes "
                          "below the step limit)")
                else:
                    print(f"{method}: mistakes ~ T^{with_interval(fit['exponent'], fit['lo'], fit['hi'], '{:.2f}')}"
                          f" ({fit['n_seeds']} seeds fitted)")
            if out["missing"]:
                print(f"not finished: {', '.join(out['missing'])}")
            print(f"report: {out['dir']}/report.md")
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"sftbc: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
