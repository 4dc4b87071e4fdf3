"""`accelerate launch` with two CPU processes runs the same experiment as one process, with the
gradients all-reduced (cpu_2proc.yaml), the student sharded with FSDP2 (fsdp2.yaml), or the
gradients and optimizer state partitioned by DeepSpeed ZeRO-2 (deepspeed_zero2.yaml)."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import free_port
from test_dagger import rows

LAUNCH_CONFIGS = {
    "ddp": ["--config_file", "recipes/accelerate/cpu_2proc.yaml"],
    # the GPU files train in bf16 autocast; compared here with one fp32 process, they run in fp32
    "fsdp2": ["--config_file", "recipes/accelerate/fsdp2.yaml", "--num_processes", "2", "--mixed_precision", "no"],
    "deepspeed": ["--config_file", "recipes/accelerate/deepspeed_zero2.yaml", "--num_processes", "2",
                  "--mixed_precision", "no"],
}
HOW = {"ddp": "", "fsdp2": ", FSDP2", "deepspeed": ", DeepSpeed ZeRO-2"}
ONE = [sys.executable, "-m", "sftbc.cli"]
DAGGER = ["collect.horizons=[3]", "collect.labels_per_horizon=24", "dagger.rounds=2", "train.epochs=1",
          "train.min_steps=8", "lora.rank=4", "eval.horizons=[3]", "eval.episodes=4", "eval.max_new_tokens=24"]
# lam=0: the teacher plays every episode (greedy), so all runs score and train on the same episodes;
# curve_every=1: the greedy evaluations after each iteration use the sampling copy FSDP refreshes
DISTILL = ["teacher.kind=hf", "teacher.max_new_tokens=24", "collect.horizons=[2]", "distill.iterations=3",
           "distill.episodes=6", "distill.lam=0", "distill.passes=2", "distill.curve_every=1",
           "distill.curve_episodes=4", "lora.rank=4", "train.lr=5e-3", "eval.horizons=[2]", "eval.episodes=4",
           "eval.max_new_tokens=24"]


def launch(kind: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *LAUNCH_CONFIGS[kind],
            "--main_process_port", str(free_port()), "-m", "sftbc.cli"]


def run(cmd, *args, env: dict | None = None) -> str:
    for attempt in (1, 2):
        out = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600, env=env)
        errors = [x for x in out.stderr.replace("\r", "\n").splitlines() if "it/s" not in x and "s/it" not in x]
        # One CI run lost a two-process launch to a SIGABRT on rank 1 that reruns did not reproduce
        # (docs/limits.md): a process killed by such a signal is retried once, in a fresh run
        # directory, and reported; a run that fails any other way is not retried.
        if out.returncode == 0 or attempt == 2 or not re.search(r"\(SIG(ABRT|SEGV|BUS)\)", out.stderr):
            break
        print("a launched process died by a signal; retrying once:\n" + "\n".join(errors[-30:]), file=sys.stderr)
        fields = dict(a.split("=", 1) for a in args if "=" in a)
        if "runs_dir" in fields and "name" in fields:
            shutil.rmtree(os.path.join(fields["runs_dir"], fields["name"]), ignore_errors=True)
    assert out.returncode == 0, "\n".join(errors[-150:])  # the failing rank's own traceback sits above the launcher's
    return out.stdout + out.stderr


def metrics(path) -> dict:
    return json.loads((path / "metrics.json").read_text())


@pytest.fixture(scope="module")
def dagger_one(tmp_path_factory, tiny_path):
    d = tmp_path_factory.mktemp("dagger_one")
    run(ONE, "dagger", "name=one", f"runs_dir={d}", f"model={tiny_path}", *DAGGER)
    return d / "one"


@pytest.fixture(scope="module")
def distill_one(tmp_path_factory, tiny_path, lm_teacher):
    d = tmp_path_factory.mktemp("distill_one")
    run(ONE, "distill", "name=one", f"runs_dir={d}", f"model={tiny_path}", f"teacher.path={lm_teacher}", *DISTILL)
    return d / "one"


def check_launch_log(log: str, kind: str):
    for r in (0, 1):
        assert f"process {r} of world size 2 (gloo{HOW[kind]})" in log


@pytest.mark.slow
@pytest.mark.parametrize("kind", LAUNCH_CONFIGS)
def test_dagger_on_two_cpu_processes_builds_the_one_process_dataset(kind, tmp_path, tiny_path, dagger_one):
    check_launch_log(run(launch(kind), "dagger", "name=two", f"runs_dir={tmp_path}", f"model={tiny_path}", *DAGGER), kind)
    two_dir = tmp_path / "two"
    assert rows(two_dir / "data") == rows(dagger_one / "data")
    one, two = metrics(dagger_one), metrics(two_dir)
    for i in range(3):
        assert (two_dir / f"round-{i:03d}" / "adapter" / "adapter_config.json").exists()
    assert [r["teacher_labels"] for r in two["rounds"]] == [r["teacher_labels"] for r in one["rounds"]] == [24] * 3
    assert two["eval"] == one["eval"]
    for r1, r2 in zip(one["rounds"], two["rounds"]):  # the same updates, up to the order of float sums
        assert r2["train"]["loss_last"] == pytest.approx(r1["train"]["loss_last"], rel=1e-3)
        assert r2["train"]["tokens"] == r1["train"]["tokens"]  # each batch counted once, not per process
    train = two["rounds"][0]["train"]
    assert train["loss_last"] < train["loss_first"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["train.pack=true"], ["env=tests/userenv.py:Relay"]], ids=["packed", "user_env"])
def test_a_two_process_launch_builds_the_one_process_run(extra, tmp_path, tiny_path):
    # train.pack: each process packs its own share of every batch; a user env (a file outside the
    # package): every process loads it from its reference by itself
    args = [f"runs_dir={tmp_path}", f"model={tiny_path}", *DAGGER, *extra]
    run(ONE, "dagger", "name=one", *args)
    check_launch_log(run(launch("ddp"), "dagger", "name=two", *args), "ddp")
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert rows(tmp_path / "two" / "data") == rows(tmp_path / "one" / "data") and two["eval"] == one["eval"]
    assert two["env"] == one["env"] and [r["teacher_labels"] for r in two["rounds"]] == [24] * 3
    for r1, r2 in zip(one["rounds"], two["rounds"]):
        assert r2["train"]["loss_last"] == pytest.approx(r1["train"]["loss_last"], rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("kind", LAUNCH_CONFIGS)
def test_distill_on_two_cpu_processes_matches_one(kind, tmp_path, tiny_path, lm_teacher, distill_one):
    log = run(launch(kind), "distill", "name=two", f"runs_dir={tmp_path}", f"model={tiny_path}",
              f"teacher.path={lm_teacher}", *DISTILL)
    check_launch_log(log, kind)
    one, two = metrics(distill_one), metrics(tmp_path / "two")
    assert (tmp_path / "two" / "adapter" / "adapter_config.json").exists()
    assert two["teacher_tokens"] == one["teacher_tokens"] and two["teacher_labels"] == one["teacher_labels"]
    l1, l2 = ([it["loss"] for it in m["iterations"]] for m in (one, two))
    # near-zero KL losses: the order of float sums (the gradient norm over FSDP shards) shows in the 6th
    # decimal of the gradients, and each iteration's fresh AdamW (distill.restart) scales its first steps
    # by 1/|gradient| per coordinate, which carries it into the 3rd decimal of the next iteration's loss
    assert l2 == pytest.approx(l1, rel=1e-2, abs=1e-5)
    assert [c["eval"] for c in two["curve"]] == [c["eval"] for c in one["curve"]]


@pytest.mark.slow
def test_two_cpu_processes_build_the_base_model_once(tmp_path):
    # the main process pretrains the base alone while the other waits (it used to share out the
    # pretraining batches to a process that was not training, and the launch hung)
    env = {**os.environ, "SFTBC_CACHE": str(tmp_path / "cache")}
    run(launch("ddp"), "bc", "name=b", f"runs_dir={tmp_path}", "model=tiny", "tiny.episodes=40", "tiny.epochs=0.5",
        "collect.horizons=[2]", "collect.labels_per_horizon=8", "train.epochs=1", "train.min_steps=0", "eval.horizons=[2]",
        "eval.episodes=2", env=env)
    built = list((tmp_path / "cache" / "models").iterdir())
    assert len(built) == 1 and (built[0] / "config.json").exists()
    assert metrics(tmp_path / "b")["teacher_labels"] == 8


@pytest.mark.slow
def test_a_deepspeed_update_is_the_one_process_update(tmp_path):
    # each process's loss is its weighted share of the batch and DeepSpeed averages gradients: the step
    # scales the loss by the world size, so the gradient DeepSpeed clips and steps is the whole batch's
    out = run([sys.executable, "-m", "accelerate.commands.launch", *LAUNCH_CONFIGS["deepspeed"],
               "--main_process_port", str(free_port()), "tests/deepspeed_step.py"])
    lines = [json.loads(x) for x in re.findall(r'\{"rank"[^}]*\}', out)]  # two processes may print on one line
    assert sorted(x["rank"] for x in lines) == [0, 1]
    for x in lines:
        assert x["deepspeed_norm"] == pytest.approx(x["one_norm"], rel=1e-5)
        assert x["moved"] > 1e-3 and x["max_weight_diff"] < 1e-6
