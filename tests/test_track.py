"""report_to: a run's steps and evaluations land in the tracker (TensorBoard, offline)."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sftbc.config import ConfigError, load_config
from sftbc.dagger import run_dagger


def test_tensorboard_holds_every_step_and_every_evaluation(tmp_path, tiny_path):
    cfg = load_config(None, [f"runs_dir={tmp_path}", f"model={tiny_path}", "name=tb", "report_to=tensorboard",
                             "collect.horizons=[3]", "collect.labels_per_horizon=12", "dagger.rounds=2",
                             "dagger.round_eval_episodes=2", "train.epochs=1", "train.min_steps=0", "lora.rank=4", "eval.horizons=[3]",
                             "eval.episodes=4", "eval.max_new_tokens=24"])
    m = run_dagger(cfg)
    [logdir] = (tmp_path / "tb" / "tracking").iterdir()  # one run, named after the config's name
    events = EventAccumulator(str(logdir))
    events.Reload()
    loss = events.Scalars("train/loss")
    steps = sum(r["train"]["steps"] for r in m["rounds"])
    assert [e.step for e in loss] == list(range(1, steps + 1))  # every optimizer step of every round, in order
    assert all(e.value > 0 for e in events.Scalars("train/lr") + events.Scalars("train/tokens_per_s"))
    # rounds 0 and 1 evaluated on validation seeds (round_eval_episodes), the final student on held-out ones,
    # each at the step it followed
    validation = events.Scalars("validation/T3/success_rate")
    assert [e.value for e in validation] == pytest.approx([m["rounds"][i]["eval"][0]["success_rate"] for i in (0, 1)])
    assert [e.step for e in validation] == [sum(r["train"]["steps"] for r in m["rounds"][:i + 1]) for i in (0, 1)]
    [final] = events.Scalars("eval/T3/success_rate")
    assert final.value == pytest.approx(m["eval"][0]["success_rate"]) and final.step == steps
    assert events.Scalars("eval/T3/mistakes_mean")[0].value == pytest.approx(m["eval"][0]["mistakes_mean"])
    # nothing is tracked unless asked
    run_dagger(load_config(None, [*(f"{k}={v}" for k, v in [("runs_dir", tmp_path), ("model", tiny_path)]), "name=plain",
                                  "collect.horizons=[1]", "collect.labels_per_horizon=4", "dagger.rounds=0",
                                  "train.epochs=1", "train.min_steps=0", "lora.rank=4", "eval.horizons=[1]", "eval.episodes=2"]))
    assert not (tmp_path / "plain" / "tracking").exists()


def test_an_unknown_tracker_is_one_line():
    with pytest.raises(ConfigError, match="report_to must be none, tensorboard, trackio, wandb"):
        load_config(None, ["report_to=mlflow"])
