"""Experiment tracking (`report_to`): the loss, learning rate and tokens/s of every optimizer step, and
every held-out evaluation (each DAgger round's, distillation's curve points, the final one), through
accelerate's trackers (TensorBoard, Trackio, W&B) into <run>/tracking/. Only the main process logs.

One tracker per run, opened by the `tracked` decorator around a run function and kept at module level,
so the training loop and the evaluation log to it without being handed it (as `wandb.log` does)."""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

from sftbc import dist

TRACKERS = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}  # report_to -> the package it needs
_tracker = None
_step = 0


def missing_package(report_to: str) -> str | None:
    """The package `report_to` needs when it is not installed (config validation names it)."""
    try:
        importlib.import_module(TRACKERS[report_to])
    except ModuleNotFoundError:
        return TRACKERS[report_to]
    return None


def tracked(run):
    """Wrap a run function `run(cfg, ...)`: log its steps and evaluations to `cfg.report_to`. A run
    inside another (sftbc teacher's DAgger) logs to the outer one's tracker."""

    @functools.wraps(run)
    def wrapper(cfg, *args, **kwargs):
        global _tracker, _step
        if cfg.report_to == "none" or not dist.is_main() or _tracker is not None:
            return run(cfg, *args, **kwargs)
        from accelerate import PartialState
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        from sftbc.config import flatten, to_dict

        PartialState()  # the trackers log through accelerate's logger, which needs its state (no collective call)

        where = str(Path(cfg.runs_dir) / cfg.name / "tracking")
        kwargs_of = {"tensorboard": {"logging_dir": where}, "wandb": {"dir": where}, "trackio": {}}
        tracker = LOGGER_TYPE_TO_CLASS[cfg.report_to](cfg.name, **kwargs_of[cfg.report_to])
        tracker.main_process_only = False  # we are the main process already: no need to ask accelerate
        tracker.start()
        # trackers take scalar hyperparameters: lists are recorded as strings
        tracker.store_init_configuration({k: v if isinstance(v, (bool, int, float, str)) else str(v)
                                          for k, v in flatten(to_dict(cfg)).items()})
        _tracker, _step = tracker, 0
        try:
            return run(cfg, *args, **kwargs)
        finally:
            tracker.finish()
            _tracker = None

    return wrapper


def log_step(values: dict):
    """One optimizer step's values (the step counter advances): training loops call it."""
    global _step
    _step += 1
    log(values)


def log(values: dict):
    """Values at the current step (evaluations); nothing without a tracker."""
    if _tracker is not None:
        _tracker.log({k: v for k, v in values.items() if v is not None}, step=_step)
