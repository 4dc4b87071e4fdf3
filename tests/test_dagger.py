import json

import pytest

import sftbc.dagger as dagger
from sftbc.bc import collect
from sftbc.config import ConfigError, DaggerArgs, beta_at, load_config
from sftbc.dagger import run_dagger
from sftbc.data import load_dataset_dir, to_dataset
from sftbc.teachers import OracleTeacher
from sftbc.types import Context, Episode, Message


def config(tmp_path, tiny_path, *overrides):
    return load_config(None, [f"runs_dir={tmp_path}", f"model={tiny_path}", "collect.horizons=[3]",
                              "collect.labels_per_horizon=12", "dagger.rounds=2", "train.epochs=1", "train.min_steps=0", "lora.rank=4",
                              "eval.horizons=[3]", "eval.episodes=4", "eval.max_new_tokens=24", *overrides])


def rows(path):
    ds = load_dataset_dir(path)
    return [(r["messages"], r["tools"], r["train_turns"]) for r in ds]


def test_beta_schedules():
    assert [beta_at(DaggerArgs(rounds=4), i) for i in range(5)] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert [beta_at(DaggerArgs(rounds=4, beta="linear"), i) for i in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert [beta_at(DaggerArgs(beta="exponential", beta_decay=0.5), i) for i in range(4)] == [1.0, 0.5, 0.25, 0.125]


def test_rounds_store_the_teachers_label_at_every_visited_state(tmp_path, tiny_path):
    m = run_dagger(config(tmp_path, tiny_path, "name=d", "dagger.round_eval_episodes=2"))
    assert [r["beta"] for r in m["rounds"]] == [1.0, 0.0, 0.0]
    assert [r["teacher_labels"] for r in m["rounds"]] == [12, 12, 12] and m["teacher_labels"] == 36
    assert [r["train_rows"] for r in m["rounds"]] == [sum(r["rows"] for r in m["rounds"][: i + 1]) for i in range(3)]
    assert "eval" in m["rounds"][1] and "eval" not in m["rounds"][2] and m["eval"][0]["episodes"] == 4
    # the held-out openings are labelled once, then come from the label cache in every later evaluation
    assert m["label_cache"]["hits"] >= 4 and (tmp_path / "d" / "label_cache.jsonl").exists()
    for i in range(3):
        rd = tmp_path / "d" / f"round-{i:03d}"
        assert (rd / "adapter" / "adapter_config.json").exists() and (rd / "data" / "state.json").exists()
        assert json.loads((rd / "metrics.json").read_text())["round"] == i
    oracle, labelled = OracleTeacher(), 0
    for messages, tools, turns in rows(tmp_path / "d" / "data"):
        msgs = [Message.from_dict(x) for x in messages]
        at = [k for k, x in enumerate(msgs) if x.role == "assistant"]
        for t in turns:  # rebuild the state in a fresh environment and ask the oracle
            ctx = Context(tuple(msgs[: at[t]]), tuple(json.loads(tools)), Episode("maze", 3, 0))
            seed = next(s for s in range(200) if _opening(s) == msgs[0].content)
            ctx = Context(ctx.messages, ctx.tools, Episode("maze", 3, seed))
            assert msgs[at[t]] == oracle.label([ctx])[0]
            labelled += 1
    assert labelled == 36  # one trained label per teacher query, none lost or duplicated


def _opening(seed):
    from sftbc.envs import make_env

    return make_env("maze", 3).reset(seed)[0][0].content


def test_same_seed_same_dataset_and_an_interrupted_run_resumes_to_it(tmp_path, tiny_path, monkeypatch):
    a = run_dagger(config(tmp_path, tiny_path, "name=a"))
    b = run_dagger(config(tmp_path, tiny_path, "name=b"))
    assert rows(tmp_path / "a" / "data") == rows(tmp_path / "b" / "data")
    assert a["eval"] == b["eval"]

    real = dagger.train_student

    def crash_in_round_2(cfg, base, tok, ds, out_dir, **kw):
        if out_dir.name == "round-002":
            raise KeyboardInterrupt  # the process dies after round 2's data is written, before its adapter
        return real(cfg, base, tok, ds, out_dir, **kw)

    monkeypatch.setattr(dagger, "train_student", crash_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run_dagger(config(tmp_path, tiny_path, "name=c"))
    assert not (tmp_path / "c" / "round-002" / "metrics.json").exists()
    monkeypatch.setattr(dagger, "train_student", real)
    with pytest.raises(ConfigError, match="--resume"):
        run_dagger(config(tmp_path, tiny_path, "name=c"))
    with pytest.raises(ConfigError, match="train.lr differs"):
        run_dagger(config(tmp_path, tiny_path, "name=c", "train.lr=1e-4"), resume=True)
    c = run_dagger(config(tmp_path, tiny_path, "name=c"), resume=True)
    assert rows(tmp_path / "c" / "data") == rows(tmp_path / "a" / "data")
    assert len(c["rounds"]) == 3 and c["eval"] == a["eval"]


def test_at_T1_dagger_visits_no_new_decision_states_so_its_data_is_bcs(tmp_path, tiny_path):
    run_dagger(config(tmp_path, tiny_path, "name=t1", "collect.horizons=[1]", "collect.labels_per_horizon=10",
                      "eval.horizons=[1]"))
    m = json.loads((tmp_path / "t1" / "metrics.json").read_text())
    assert m["rounds"][1]["rollout"]["student_mistakes"] > 0  # the (barely trained) student did act, often wrongly
    bc = config(tmp_path, tiny_path, "collect.horizons=[1]", "collect.labels_per_horizon=30")
    demos = [(r["messages"], r["tools"], r["train_turns"]) for r in to_dataset(collect(bc, OracleTeacher())[0])]
    ours = rows(tmp_path / "t1" / "data")
    # one decision per episode: every state the student reached from the opening is the opening itself,
    # labelled exactly as a demonstration of the same seed (rounds continue the seeds as BC does) ...
    openings = [r for r in ours if len(r[0]) == 2 and r[2]]  # (a wrong executed opening trains nothing)
    assert len(openings) >= 10 and openings == demos[: len(openings)]
    # ... and the only other states are retries after a malformed call (an error observation), which a
    # student that always makes a well-formed call never visits
    assert all(any((x["content"] or "").startswith("error:") for x in r[0] if x["role"] == "tool")
               for r in ours if len(r[0]) > 2)


def test_a_rounds_token_overshoot_comes_off_the_next_rounds_budget(tmp_path, tiny_path, lm_teacher, monkeypatch):
    # Waves end a token budget about one episode past it; DAgger's rounds keep to the cumulative schedule
    # (after round i: (i + 1) x budget), so the run ends about one episode past its total, not one per round.
    asked = []

    def spy(*args, token_budgets=None, **kw):
        asked.append(token_budgets)
        return collect(*args, token_budgets=token_budgets, **kw)

    monkeypatch.setattr(dagger, "collect", spy)
    m = run_dagger(config(tmp_path, tiny_path, "name=tok", "collect.labels_per_horizon=0",
                          "collect.teacher_tokens_per_horizon=3000", "collect.horizons=[2]", "teacher.kind=hf",
                          f"teacher.path={lm_teacher}", "teacher.max_new_tokens=16", "eval.horizons=[2]",
                          "eval.episodes=2", "eval.max_new_tokens=16"))
    spent = [r["teacher_tokens_by_T"]["2"] for r in m["rounds"]]
    assert spent == [r["teacher_tokens"] for r in m["rounds"]] and sum(spent) == m["teacher_tokens"]
    assert asked == [{2: 3000}, {2: 6000 - spent[0]}, {2: 9000 - spent[0] - spent[1]}]
    assert spent[0] > 3000 and asked[1][2] < 3000  # round 0 overshot, round 1 got that much less
    assert all(sum(spent[: i + 1]) >= 3000 * (i + 1) for i in range(3))


def test_resume_takes_a_key_added_since_the_run_started_as_its_default(tmp_path):
    import yaml

    from sftbc.bc import run_dir
    from sftbc.config import to_dict
    from sftbc.dagger import check_resume

    cfg = load_config(None, [f"runs_dir={tmp_path}", "name=old", "distill.curve_every=1"])
    run_dir(cfg)
    saved = to_dict(cfg)
    del saved["report_to"], saved["distill"]["keep_best"]  # as written by a version without them
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(saved))
    check_resume(cfg, resume=True)  # at their defaults: the same run
    with pytest.raises(ConfigError, match="distill.keep_best differs"):
        check_resume(load_config(None, [f"runs_dir={tmp_path}", "name=old", "distill.keep_best=true",
                                        "distill.curve_every=1"]), resume=True)
