import pytest

from sftbc.config import ConfigError, RunConfig, load_config, to_dict


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\ntrain:\n  lr: 1.0e-3\neval:\n  horizons: [1, 2]\n")
    cfg = load_config(str(p), ["train.lr=5e-4", "eval.episodes=7", "lora.target_modules=[q_proj]", "merge=true"])
    assert cfg.name == "x" and cfg.train.lr == 5e-4 and cfg.eval.horizons == [1, 2] and cfg.eval.episodes == 7
    assert cfg.lora.target_modules == ("q_proj",) and cfg.merge is True
    # a resolved config written out loads back to the same config
    q = tmp_path / "resolved.yaml"
    import yaml

    q.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(str(q)) == cfg


@pytest.mark.parametrize("override, key", [
    ("train.lrr=1", "train.lrr"), ("train.lr=fast", "train.lr"), ("eval.horizons=3", "eval.horizons"),
    ("eval.horizons=[0]", "eval.horizons"), ("teacher.kind=magic", "teacher.kind"), ("env=chess", "env"),
    ("lora.dropout=1.5", "lora.dropout"), ("collect.episodes=true", "collect.episodes"), ("nokey", "nokey"),
    ("teacher.kind=hf", "teacher.path"), ("distill.lr=-1e-3", "distill.lr"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert key in str(e.value) and "\n" not in str(e.value)


def test_every_field_is_documented():
    import ast
    import inspect

    from sftbc import config

    tree = ast.parse(inspect.getsource(config))
    for cls in [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith(("Args", "Config"))]:
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                nxt = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(nxt, ast.Expr) and isinstance(nxt.value.value, str), f"{cls.name}.{node.target.id}"


def test_recipes_load():
    from pathlib import Path

    for recipe in sorted([*Path("recipes").glob("*.yaml"), *Path("examples").glob("*/*.yaml")]):
        assert isinstance(load_config(str(recipe)), RunConfig)


@pytest.mark.parametrize("overrides, key", [
    (["compare.methods=[bc,distill]", "teacher.kind=hf", "teacher.path=m"], "compare.teacher_tokens"),
    (["compare.teacher_tokens=1000"], "teacher.kind"),
    (["distill.jsd_beta=1.5"], "distill.jsd_beta"), (["distill.lam=-0.1"], "distill.lam"),
    (["distill.aggregate=-1"], "distill.aggregate"),
    (["dagger.beta=sometimes"], "dagger.beta"), (["compare.methods=[bc,gail]"], "compare.methods"),
    (["distill.sft_share=0.5"], "distill.sft_share"), (["distill.sft_share=1.0"], "distill.sft_share"),
    (["compare.seeds=[0,0]"], "compare.seeds"), (["compare.seeds=[]"], "compare.seeds"),
    (["compare.seeds=[100]"], "compare.seeds"), (["compare.baseline=gail"], "compare.baseline"),
    (["compare.shard=2/2"], "compare.shard"), (["compare.shard=1"], "compare.shard"), (["compare.shard=a/b"], "compare.shard"),
])
def test_impossible_combinations_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert key in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override, key", [
    ("model=/no/such/model", "model"), ("teacher.path=/no/such/teacher", "teacher.path"),
    ("dagger.beta_decay=1.5", "dagger.beta_decay"), ("collect.horizons=[0]", "collect.horizons"),
    ("compare.horizons=[-1]", "compare.horizons"), ("train.lr=[1]", "train.lr"),
])
def test_bad_run_inputs_are_one_line_errors_before_any_work(override, key, tmp_path, capsys):
    from sftbc.cli import main

    assert main(["dagger", f"runs_dir={tmp_path}", "teacher.kind=hf", "teacher.path=tiny", override]) == 2
    err = capsys.readouterr().err.strip()
    assert key in err and "\n" not in err
    assert not any(tmp_path.iterdir())  # nothing was started


def test_a_corrupt_dataset_is_reported_not_skipped(tmp_path):
    from sftbc.data import load_dataset_dir, save_dataset, to_dataset
    from sftbc.rollout import rollout
    from sftbc.teachers import OracleTeacher

    save_dataset(to_dataset(rollout("maze", 2, [0, 1], OracleTeacher())), tmp_path / "d")
    arrow = next((tmp_path / "d").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"dataset .*d is corrupt") as e:
        load_dataset_dir(tmp_path / "d")
    assert "\n" not in str(e.value)
