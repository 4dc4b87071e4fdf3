import json
import subprocess
import sys

import pytest
import yaml

from sftbc.cli import main

SMALL = ["env=maze", "collect.horizons=[1,2]", "collect.episodes=6", "train.epochs=1", "train.min_steps=0", "eval.horizons=[1,2]",
         "eval.episodes=4", "lora.rank=4"]


def test_bc_end_to_end_writes_the_run_directory(tiny_path, tmp_path, capsys):
    assert main(["bc", f"runs_dir={tmp_path}", "name=t", f"model={tiny_path}", "merge=true", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "success" in out and "eps" in out
    run = tmp_path / "t"
    for f in ["config.yaml", "data/state.json", "adapter/adapter_config.json", "merged/config.json", "metrics.json",
              "results.md"]:
        assert (run / f).exists(), f
    m = json.loads((run / "metrics.json").read_text())
    assert m["method"] == "bc" and m["env"] == "maze" and m["train_horizon"] == [1, 2]
    assert m["teacher_labels"] == 6 * 1 + 6 * 2
    assert m["train"]["tokens"] > 0 and m["train"]["wall_s"] > 0
    assert [r["horizon"] for r in m["eval"]] == [1, 2]
    for r in m["eval"]:
        assert r["episodes"] == 4 and 0 <= r["success_rate"] <= 1 and 0 <= r["eps"] <= 1
        assert r["steps_mean"] >= 1 and r["mistakes_mean"] >= 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["collect"]["episodes"] == 6 and cfg["model"] == tiny_path

    # the saved adapter evaluates again through `sftbc eval`, and gives the same numbers
    assert main(["eval", f"runs_dir={tmp_path}", "name=t", f"model={tiny_path}", *SMALL]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert again["eval"] == m["eval"]


def test_collect_then_train_on_the_saved_data(tiny_path, tmp_path):
    assert main(["collect", f"runs_dir={tmp_path}", "name=c", *SMALL]) == 0
    data = tmp_path / "c" / "data"
    assert main(["bc", f"runs_dir={tmp_path}", "name=b", f"model={tiny_path}", f"data={data}", *SMALL]) == 0
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["teacher_labels"] == 18


@pytest.mark.parametrize("args, needle", [
    (["bc", "train.lr=-1"], "train.lr"),
    (["bc", "--config", "nope.yaml"], "nope.yaml"),
    (["eval", "model=/does/not/exist"], "/does/not/exist"),
    (["bc", "data=/no/such/data", "model=tiny"], "/no/such/data"),
    (["dagger", "dagger.beta=cosine"], "dagger.beta"),
    (["compare", "compare.methods=[bc,rl]"], "compare.methods"),
    (["dagger", "collect.noise=1.5"], "collect.noise"),
])
def test_bad_input_is_one_clear_line(args, needle, capsys, tmp_path):
    assert main([*args, f"runs_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("env, needle", [
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "zero_stage 3"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, "offload_optimizer_device"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"}, "deepspeed_config_file"),
    ({"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "fsdp_version 1"),
])
def test_unsupported_launch_configs_are_one_clear_line(env, needle, monkeypatch, capsys, tmp_path):
    for k, v in env.items():  # what `accelerate launch` sets for such a config; refused before joining any group
        monkeypatch.setenv(k, v)
    assert main(["dagger", f"runs_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err
    assert not (tmp_path / "dagger").exists()


def test_dagger_and_compare_never_mix_two_runs_in_one_directory(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["collect", f"runs_dir={tmp_path}", "name=x", "collect.horizons=[1]", "collect.episodes=2"]) == 0
    for stage in ("dagger", "compare"):  # a new run over an existing one: refused before any work
        assert main([stage, f"runs_dir={tmp_path}", "name=x", "collect.horizons=[1]", "collect.episodes=2"]) == 2
        assert "--resume" in capsys.readouterr().err
    # resuming with a different config names the key that changed
    assert main(["dagger", "--resume", f"runs_dir={tmp_path}", "name=x", "collect.horizons=[1]", "collect.episodes=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "collect.episodes differs" in err and "\n" not in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "sftbc.cli", "--help"], capture_output=True, text=True, check=True)
    for stage in ["base", "collect", "bc", "eval", "dagger", "compare", "models"]:
        assert stage in out.stdout
