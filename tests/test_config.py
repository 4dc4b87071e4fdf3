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
    ("teacher.kind=hf", "teacher.path"),
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

    for recipe in sorted(Path("recipes").glob("*.yaml")):
        assert isinstance(load_config(str(recipe)), RunConfig)


@pytest.mark.parametrize("overrides, key", [
    (["compare.methods=[bc,distill]", "teacher.kind=hf", "teacher.path=m"], "compare.teacher_tokens"),
    (["compare.teacher_tokens=1000"], "teacher.kind"),
    (["distill.jsd_beta=1.5"], "distill.jsd_beta"), (["distill.lam=-0.1"], "distill.lam"),
    (["dagger.beta=sometimes"], "dagger.beta"), (["compare.methods=[bc,gail]"], "compare.methods"),
])
def test_impossible_combinations_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert key in str(e.value) and "\n" not in str(e.value)
