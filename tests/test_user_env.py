"""Your own task: an env written outside the package, by file path or module path, in every command."""

import copy
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from test_dagger import rows

import sftbc.dagger as dagger
from sftbc.cli import main
from sftbc.config import RunConfig, TinyModelArgs, load_config, to_dict
from sftbc.data import load_data, load_dataset_dir
from sftbc.envs import env_class, make_env
from sftbc.models import tiny_model_dir
from sftbc.rollout import rollout
from sftbc.teachers import OracleTeacher
from sftbc.types import Message, ToolCall, tool_call

BY_FILE, BY_MODULE = "tests/userenv.py:Relay", "userenv:Relay"  # tests/ is on sys.path under pytest
SMALL = ["collect.horizons=[3]", "collect.labels_per_horizon=12", "dagger.rounds=2", "train.epochs=1", "train.min_steps=0", "lora.rank=4",
         "eval.horizons=[3]", "eval.episodes=4", "eval.max_new_tokens=24"]


def run(tmp_path, tiny_path, command, *args) -> dict:
    assert main([command, f"runs_dir={tmp_path}", f"model={tiny_path}", *SMALL, *args]) == 0
    name = next(a.split("=", 1)[1] for a in args if a.startswith("name="))
    return json.loads((tmp_path / name / "metrics.json").read_text())


def test_a_reference_names_one_class_in_every_form_and_plays_as_written():
    assert env_class(BY_FILE).__name__ == env_class(BY_MODULE).__name__ == "Relay"
    assert env_class("userenv:LegacyRelay").__name__ == "LegacyRelay"
    for ref in (BY_FILE, BY_MODULE, "userenv:LegacyRelay"):  # the oracle solves it in T decisions, by any reference
        env = make_env(ref, 4)
        msgs, tools = env.reset(7)
        assert [t["function"]["name"] for t in tools] == ["say", "undo", "tune", "close"]
        for t in range(4):
            r = env.step(env.oracle_action())
        assert r.done and r.info["success"] and msgs[0].content.startswith("Relay each word")
    # a class written against the protocol alone passes every check and plays DART's noisy demonstrations
    load_config(None, ["env=userenv:LegacyRelay", "collect.noise=0.5"])
    trajs = rollout("userenv:LegacyRelay", 4, list(range(8)), OracleTeacher(), noise=0.5)
    assert any(s.actor == "noise" for t in trajs for s in t.steps) and all(len(t.steps) >= 4 for t in trajs)


@pytest.mark.parametrize("ref, needle", [
    ("tests/nope.py:Relay", "no file tests/nope.py"),
    ("tests/userenv.py:Nope", "has no Nope"),
    ("userenv:NotAnEnv", "not an environment class"),
    ("no_such_module_xyz:Env", "cannot import no_such_module_xyz"),
    ("maze2", "not a built-in"),
])
def test_a_bad_reference_is_one_line_naming_env(ref, needle, tmp_path, capsys):
    assert main(["bc", f"env={ref}", f"runs_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sftbc: config: env:") and needle in err and "\n" not in err
    assert not (tmp_path / "bc").exists()  # before any work
    assert main(["base", f"tiny.envs=[maze, {ref}]"]) == 2
    assert "config: tiny.envs:" in capsys.readouterr().err


def test_the_schema_comes_from_type_hints_and_docstrings():
    tools = {t["function"]["name"]: t["function"] for t in env_class(BY_FILE).tools()}
    tune = tools["tune"]["parameters"]
    assert tune["required"] == ["level", "mode"]
    assert {k: v["type"] for k, v in tune["properties"].items()} == {
        "level": "integer", "mode": "string", "gain": "number", "tags": "array", "mute": "boolean"}
    assert tune["properties"]["mode"]["enum"] == ["soft", "loud"]
    assert tools["say"]["parameters"]["properties"]["word"]["description"] == "the word to pass on"
    assert tools["close"]["description"] == "Close the relay; ends the episode."


def test_a_tool_without_a_docstring_for_its_argument_is_refused_by_name(tmp_path, capsys):
    (tmp_path / "bad.py").write_text(
        "from sftbc import ToolEnv\n\nclass Bad(ToolEnv):\n    def start(self, seed):\n        return 'x'\n\n"
        "    def move(self, steps: int) -> str:\n        '''Move.'''\n        return 'ok'\n")
    assert main(["bc", f"env={tmp_path / 'bad.py'}:Bad", f"runs_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "tool Bad.move" in err and "steps" in err


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**30) | st.floats(allow_nan=True)
    | st.text(max_size=30) | st.text(min_size=5000, max_size=6000),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30)
arg_names = st.sampled_from(["word", "level", "mode", "gain", "tags", "mute", "extra", ""])


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["say", "undo", "tune", "close", "nope"]), args=st.dictionaries(arg_names, json_values, max_size=6),
       prefix=st.lists(st.sampled_from(["alpha", "bravo"]), max_size=3))
def test_any_call_is_answered_and_a_refused_one_changes_nothing(name, args, prefix):
    env = make_env(BY_FILE, 5)
    env.reset(1)
    for w in prefix:
        env.step(tool_call("say", word=w))
    before = copy.deepcopy(vars(env))
    r = env.step(Message("assistant", tool_calls=(ToolCall(name, args),)))  # never raises
    assert len(r.messages) == 1 and r.messages[0].role == "tool"
    if "error" in r.info:
        assert vars(env) == before and r.messages[0].content.startswith("error:") and not r.done
    else:  # accepted: every argument had the schema's type
        assert name != "nope" and "tool_error" not in r.info


def test_wrong_types_missing_and_extra_arguments_are_named():
    env = make_env(BY_FILE, 3)
    env.reset(0)
    answers = [
        ("tune", {"level": "3", "mode": "soft"}, "error: argument level must be an integer"),
        ("tune", {"level": True, "mode": "soft"}, "error: argument level must be an integer"),
        ("tune", {"level": 3, "mode": "shout"}, 'error: argument mode must be one of "soft", "loud"'),
        ("tune", {"level": 3, "mode": "soft", "tags": ["a", 2]}, "error: argument tags[1] must be a string"),
        ("tune", {"level": 3}, "error: tune takes level, mode, gain (optional), tags (optional), mute (optional)"),
        ("say", {"word": "x", "loud": True}, "error: say takes word"),
        ("undo", {"x": 1}, "error: undo takes no arguments"),
        ("tune", {"level": 12, "mode": "soft"}, "error: level must be in 0..9"),  # the tool's own refusal
    ]
    for name, args, text in answers:
        r = env.step(Message("assistant", tool_calls=(ToolCall(name, args),)))
        assert r.messages[0].content == text and r.info["error"] == text
    r = env.step(tool_call("tune", level=4, mode="loud", gain=2, tags=None))  # an int is a number; None where nullable
    assert r.messages[0].content == "volume 4 (loud, gain 2, tags [])" and "error" not in r.info


def test_a_tool_that_raises_is_an_error_observation_counted_and_the_run_completes(tmp_path, tiny_path):
    trajs = rollout("userenv:FlakyRelay", 3, list(range(6)), OracleTeacher())
    assert [t.tool_errors for t in trajs] == [1] * 6 and all(t.success for t in trajs)
    assert trajs[0].messages[2].content == "error: say raised RuntimeError: sensor offline"
    m = run(tmp_path, tiny_path, "dagger", "name=flaky", "env=userenv:FlakyRelay")
    assert m["rounds"][0]["rollout"]["tool_errors"] == m["rounds"][0]["rollout"]["episodes"] > 0
    assert "tool_errors" in m["eval"][0] and os.path.exists(m["adapter"])  # the run went on to its end


def test_every_command_runs_on_a_user_env_and_the_reference_round_trips(tmp_path, tiny_path, monkeypatch):
    # collect -> bc on the saved data -> eval of the saved run, by file path
    assert main(["collect", f"runs_dir={tmp_path}", "name=c", f"env={BY_FILE}", *SMALL]) == 0
    data = load_dataset_dir(tmp_path / "c" / "data")
    assert set(data["env"]) == {BY_FILE}
    for r in data.select(range(3)):  # the stored reference replays the stored episode
        env = make_env(r["env"], r["horizon"])
        assert env.reset(r["seed"])[0][0].content == r["messages"][0]["content"]
    bc = run(tmp_path, tiny_path, "bc", "name=b", f"env={BY_FILE}", f"data={tmp_path / 'c' / 'data'}")
    assert bc["env"] == BY_FILE and bc["teacher_labels"] == 12
    saved = tmp_path / "b" / "config.yaml"
    assert yaml.safe_load(saved.read_text())["env"] == BY_FILE
    assert main(["eval", "--config", str(saved)]) == 0  # the saved run's own config re-creates the env
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["eval"] == bc["eval"]

    # dagger by module path, interrupted in round 2 and resumed: the uninterrupted run's dataset
    whole = run(tmp_path, tiny_path, "dagger", "name=d1", f"env={BY_MODULE}")
    real = dagger.train_student

    def crash_in_round_2(cfg, base, tok, ds, out_dir, **kw):
        if out_dir.name == "round-002":
            raise KeyboardInterrupt
        return real(cfg, base, tok, ds, out_dir, **kw)

    monkeypatch.setattr(dagger, "train_student", crash_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        main(["dagger", f"runs_dir={tmp_path}", "name=d2", f"model={tiny_path}", f"env={BY_MODULE}", *SMALL])
    monkeypatch.setattr(dagger, "train_student", real)
    assert main(["dagger", "--resume", f"runs_dir={tmp_path}", "name=d2", f"model={tiny_path}", f"env={BY_MODULE}",
                 *SMALL]) == 0
    assert rows(tmp_path / "d2" / "data") == rows(tmp_path / "d1" / "data")
    assert json.loads((tmp_path / "d2" / "metrics.json").read_text())["eval"] == whole["eval"]

    # compare, by file path
    assert main(["compare", f"runs_dir={tmp_path}", "name=cmp", f"model={tiny_path}", f"env={BY_FILE}", *SMALL,
                 "compare.methods=[bc,dart,dagger]", "compare.horizons=[1,3]", "compare.labels=12"]) == 0
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert [(r["method"], r["T"]) for r in results["rows"]] == [(m, T) for T in (1, 3) for m in ("bc", "dart", "dagger")]
    assert (tmp_path / "cmp" / "report.md").exists() and (tmp_path / "cmp" / "mistakes_vs_T.png").exists()


def test_an_oracle_less_env_trains_with_an_lm_teacher_and_refuses_the_oracle(tmp_path, tiny_path, lm_teacher, capsys):
    # Counter is a class written for TRL's environment_factory behind a thin adapter (tests/userenv.py)
    assert main(["dagger", f"runs_dir={tmp_path}", f"model={tiny_path}", "env=userenv:Counter"]) == 2
    err = capsys.readouterr().err.strip()
    assert "teacher.kind oracle needs an env with oracle_action()" in err and "\n" not in err
    lm = ["env=userenv:Counter", "teacher.kind=hf", f"teacher.path={lm_teacher}", "teacher.max_new_tokens=24"]
    m = run(tmp_path, tiny_path, "dagger", "name=lm", *lm, "dagger.rounds=1")
    assert [r["teacher_labels"] for r in m["rounds"]] == [12, 12] and m["teacher_tokens"] > 0
    assert "mistakes_mean" in m["eval"][0]
    # distillation needs no oracle either (its tokenizer check renders any call), and evaluation without
    # teacher metrics asks the teacher nothing
    d = run(tmp_path, tiny_path, "distill", "name=dist", *lm, "distill.iterations=1", "distill.episodes=2",
            "eval.teacher_metrics=false")
    assert d["teacher_tokens"] > 0 and set(d["eval"][0]) == {"horizon", "episodes", "success_rate", "steps_mean",
                                                             "tool_errors", "step_limit_rate", "per_episode"}
    assert d["label_cache"]["queries"] == 0  # only scoring: no label was asked for


def test_your_own_demonstrations_from_jsonl_and_a_missing_field_is_one_line(tmp_path, tiny_path, lm_teacher, capsys):
    env = make_env(BY_FILE, 3)
    convs = []
    for seed in range(6):  # conversations as another tool wrote them: TRL's messages + tools, arguments as dicts
        msgs, tools = env.reset(seed)
        while not env.done:
            a = env.oracle_action()
            msgs += [a, *env.step(a).messages]
        convs.append({"messages": [m.to_dict() for m in msgs[:-1]], "tools": tools})
    (tmp_path / "demos.jsonl").write_text("\n".join(json.dumps(c) for c in convs) + "\n")
    ds = load_data(tmp_path / "demos.jsonl")
    assert len(ds) == 6 and ds[0]["train_turns"] == [0, 1, 2] and ds[0]["step"] == -1
    m = run(tmp_path, tiny_path, "bc", "name=j", f"env={BY_FILE}", f"data={tmp_path / 'demos.jsonl'}")
    assert m["teacher_labels"] == 18
    d = run(tmp_path, tiny_path, "dagger", "name=jd", f"env={BY_FILE}", f"data={tmp_path / 'demos.jsonl'}",
            "dagger.rounds=1")
    assert d["rounds"][0]["teacher_labels"] == 18 and d["rounds"][0]["teacher_tokens"] == 0
    assert d["rounds"][1]["teacher_labels"] == 12

    # distillation's SFT share is the user's data, at no teacher cost
    dd = run(tmp_path, tiny_path, "distill", "name=jdist", f"env={BY_FILE}", f"data={tmp_path / 'demos.jsonl'}",
             "teacher.kind=hf", f"teacher.path={lm_teacher}", "distill.iterations=1", "distill.episodes=2",
             "eval.teacher_metrics=false")
    assert dd["sft"]["rows"] == 6 and dd["sft"]["teacher_tokens"] == 0 and (tmp_path / "jdist" / "sft" / "adapter").exists()
    capsys.readouterr()  # the runs' progress bars
    bad = [{**convs[0]}, {"tools": convs[1]["tools"]}]
    (tmp_path / "bad.jsonl").write_text("\n".join(json.dumps(c) for c in bad))
    for name, body, needle in [("bad.jsonl", None, "row 1 has no 'messages'"),
                               ("worse.json", [{"messages": [{"content": "hi"}]}], "row 0: messages:"),
                               ("turns.json", [{**convs[0], "train_turns": [7]}], "train_turns must name assistant"),
                               ("broken.jsonl", "{\n", "line 1 is not valid JSON")]:
        if body is not None:
            (tmp_path / name).write_text(body if isinstance(body, str) else json.dumps(body))
        assert main(["bc", f"runs_dir={tmp_path}", "name=x", f"env={BY_FILE}", f"data={tmp_path / name}"]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err
    assert main(["compare", f"runs_dir={tmp_path}", f"data={tmp_path / 'demos.jsonl'}"]) == 2
    assert "data is for bc, dagger and distill" in capsys.readouterr().err


def test_the_base_corpus_includes_a_user_env_and_its_cache_key_its_source(tmp_path):
    cfg = load_config(None, [f"env={BY_FILE}"])
    assert cfg.tiny.envs == ("maze", "calc", BY_FILE)  # a user env is always in its own base's corpus
    assert load_config(None, ["env=maze_fixed"]).tiny.envs == ("maze", "calc")  # built-ins keep the recipes' corpus
    src = tmp_path / "myenv.py"
    shutil.copy("tests/userenv.py", src)
    args = TinyModelArgs(envs=(f"{src}:Relay",))
    key = tiny_model_dir(args)
    assert tiny_model_dir(args) == key
    src.write_text(src.read_text().replace('"alpha", ', '"alpha", "zulu", '))
    assert tiny_model_dir(args) != key  # an edited env never reuses a stale base


def test_sftbc_base_builds_a_tokenizer_and_base_on_the_user_env(tmp_path):
    env = {**os.environ, "SFTBC_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "sftbc.cli", "base", "env=tests/userenv.py:Relay", "tiny.envs=[]",
                          "tiny.episodes=30", "tiny.epochs=0.3", "tiny.hidden=32", "tiny.layers=1", "tiny.heads=2",
                          "tiny.vocab_size=400"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    path, probe = out.stdout.strip().splitlines()[-2:]  # the base, then the copy probe on its env
    assert probe.startswith(f"copy probe, {BY_FILE}: ") and "warning: the base copies" in out.stderr
    built = json.loads(open(os.path.join(path, "sftbc_base.json")).read())
    assert built["args"]["envs"] == [BY_FILE]
    vocab = json.loads(open(os.path.join(path, "tokenizer.json")).read())["model"]["vocab"]
    assert "relay" in {w.lower().lstrip("Ġ") for w in vocab}  # trained on the user env's own text


@pytest.mark.parametrize("seed", range(3))
def test_default_noisy_and_random_actions_are_valid_calls_from_what_the_env_shows(seed):
    env = make_env(BY_FILE, 4)
    env.reset(seed)
    rng = random.Random(seed)
    shown = env.words[0]
    names = set()
    for _ in range(30):
        a = env.noisy_action(rng)
        names.add(a.call.name)
        if a.call.name == "say":
            assert a.call.arguments["word"] == shown  # a value copied from the observation
            break
    perturbed = env.random_action(rng)
    assert perturbed is None or (perturbed.call.name != "close" and "error" not in copy.deepcopy(env).step(perturbed).info)


def test_help_lists_every_config_key_with_its_type_default_and_docstring(capsys):
    with pytest.raises(SystemExit):
        main(["dagger", "--help"])
    out = capsys.readouterr().out

    def keys(tree, prefix=""):
        for k, v in tree.items():
            yield from keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]

    for key in keys(to_dict(RunConfig())):
        assert f"\n  {key} (" in out, key
    assert "  eval.teacher_metrics (bool, default true): also ask the teacher" in out
    assert "  train.lr (float, default 0.002): peak learning rate" in out
