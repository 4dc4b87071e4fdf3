"""`accelerate launch` with two CPU processes runs the same experiment as one process."""

import json
import socket
import subprocess
import sys

import pytest
from test_dagger import rows

def free_port() -> int:
    with socket.socket() as s:  # a fixed rendezvous port can still be held by the previous launch
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch() -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate/cpu_2proc.yaml",
            "--main_process_port", str(free_port()), "-m", "sftbc.cli"]
ONE = [sys.executable, "-m", "sftbc.cli"]


def run(cmd, *args) -> str:
    out = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600)
    errors = [x for x in out.stderr.replace("\r", "\n").splitlines() if "it/s" not in x and "s/it" not in x]
    assert out.returncode == 0, "\n".join(errors[-40:])
    return out.stdout + out.stderr


@pytest.mark.slow
def test_dagger_on_two_cpu_processes_builds_the_one_process_dataset(tmp_path, tiny_path):
    args = [f"runs_dir={tmp_path}", f"model={tiny_path}", "collect.horizons=[3]", "collect.labels_per_horizon=24",
            "dagger.rounds=2", "train.epochs=1", "train.min_steps=8", "lora.rank=4", "eval.horizons=[3]", "eval.episodes=4",
            "eval.max_new_tokens=24"]
    run(ONE, "dagger", "name=one", *args)
    log = run(launch(), "dagger", "name=two", *args)
    assert "process 0 of world size 2" in log and "process 1 of world size 2" in log
    assert rows(tmp_path / "two" / "data") == rows(tmp_path / "one" / "data")
    one, two = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    for i in range(3):
        assert (tmp_path / "two" / f"round-{i:03d}" / "adapter" / "adapter_config.json").exists()
    assert [r["teacher_labels"] for r in two["rounds"]] == [r["teacher_labels"] for r in one["rounds"]] == [24] * 3
    assert two["eval"] == one["eval"]
    train = two["rounds"][0]["train"]
    assert train["loss_last"] < train["loss_first"]
    assert train["tokens"] == one["rounds"][0]["train"]["tokens"]  # each batch counted once, not per process


@pytest.mark.slow
def test_distill_on_two_cpu_processes_matches_one(tmp_path, tiny_path, lm_teacher):
    # lam=0: the teacher plays every episode (greedy), so both runs score and train on the same episodes
    args = [f"runs_dir={tmp_path}", f"model={tiny_path}", "teacher.kind=hf", f"teacher.path={lm_teacher}",
            "teacher.max_new_tokens=24", "collect.horizons=[2]", "distill.iterations=3", "distill.episodes=6",
            "distill.lam=0", "distill.passes=2", "lora.rank=4", "train.lr=5e-3", "eval.horizons=[2]",
            "eval.episodes=4", "eval.max_new_tokens=24"]
    run(ONE, "distill", "name=one", *args)
    log = run(launch(), "distill", "name=two", *args)
    assert "process 1 of world size 2" in log
    one, two = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert (tmp_path / "two" / "adapter" / "adapter_config.json").exists()
    assert two["teacher_tokens"] == one["teacher_tokens"] and two["teacher_labels"] == one["teacher_labels"]
    l1, l2 = ([it["loss"] for it in m["iterations"]] for m in (one, two))
    assert l2 == pytest.approx(l1, rel=1e-3) and l2[-1] < l2[0]
