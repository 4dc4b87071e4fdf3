import json
import math

import pytest
from datasets import load_from_disk

from sftbc.compare import run_compare
from sftbc.config import load_config
from sftbc.report import fit_exponent


def test_fit_recovers_a_power_law_and_skips_zero_mistake_horizons():
    f = fit_exponent([1, 2, 4, 8, 16], [0.0, 0.0, 0.3 * 4**2, 0.3 * 8**2, 0.3 * 16**2])
    assert math.isclose(f["exponent"], 2.0) and math.isclose(f["r2"], 1.0) and f["horizons_used"] == [4, 8, 16]
    noisy = fit_exponent([1, 2, 4, 8], [1.0, 2.5, 3.5, 9.0])
    assert 0.9 < noisy["exponent"] < 1.1 and 0.9 < noisy["r2"] < 1.0
    assert fit_exponent([1, 2], [0.0, 1.0])["exponent"] is None  # one point is no fit
    assert fit_exponent([1, 2, 4], [0.0, 1.0, 4.0])["exponent"] is None  # two points always fit: no evidence


def test_compare_seeds_pair_on_held_out_episodes_and_shards_report_as_one_run(tmp_path, tiny_path):
    args = [f"model={tiny_path}", "name=cmp", "compare.methods=[bc,dagger]", "compare.horizons=[1,2]",
            "compare.seeds=[0,1]", "compare.labels=6", "dagger.rounds=1", "train.epochs=1", "train.min_steps=0", "lora.rank=4",
            "eval.episodes=3", "eval.max_new_tokens=24"]
    cfg = load_config(None, [f"runs_dir={tmp_path / 'one'}", *args])
    out = run_compare(cfg)
    d = tmp_path / "one" / "cmp"
    results = json.loads((d / "results.json").read_text())
    rows = results["rows"]
    assert [(r["method"], r["T"], r["seed"]) for r in rows] == [(m, T, s) for s in (0, 1) for T in (1, 2)
                                                                for m in ("bc", "dagger")]
    for r in rows:
        assert r["teacher_labels"] == 6 and r["episodes"] == 3 and len(r["per_episode"]) == 3
    # two seeds: different training episodes, the same held-out ones (so every difference is paired)
    data = {s: load_from_disk(str(d / f"bc-T002-s{s}" / "data")) for s in (0, 1)}
    assert set(data[0]["seed"]).isdisjoint(data[1]["seed"]) and data[0]["messages"] != data[1]["messages"]
    assert len({tuple(e["seed"] for e in r["per_episode"]) for r in rows}) == 1
    agg = {(a["method"], a["T"]): a for a in results["aggregate"]}
    assert set(agg) == {(m, T) for m in ("bc", "dagger") for T in (1, 2)} and all(a["n_seeds"] == 2 for a in agg.values())
    assert all(a["success_lo"] <= a["success_rate"] <= a["success_hi"] for a in agg.values())
    assert [(x["method"], x["T"]) for x in results["differences"]] == [("dagger", 1), ("dagger", 2)]
    scaling = json.loads((d / "scaling.json").read_text())["methods"]
    assert set(scaling["bc"]["per_seed"]) == {"0", "1"} and scaling["bc"]["exponent"] is None  # 2 horizons: no fit
    for png in ("mistakes_vs_T.png", "success_vs_T.png", "dagger_rounds.png"):
        assert (d / png).read_bytes()[:4] == b"\x89PNG"
    report = (d / "report.md").read_text()
    assert "| dagger | 2 | 2 |" in report and "dagger − bc at T = 2: success" in report
    assert (d / "dagger-T002-s1" / "round-001" / "adapter").is_dir()
    assert "(bc-T002-s1/episodes.html)" in report and (d / "bc-T002-s1" / "episodes.html").read_text().startswith("<!DOCTYPE")
    # resuming a finished sweep recomputes nothing and reports the same
    stamp = (d / "bc-T001-s0" / "metrics.json").stat().st_mtime_ns
    assert run_compare(cfg, resume=True)["rows"] == out["rows"]
    assert (d / "bc-T001-s0" / "metrics.json").stat().st_mtime_ns == stamp
    # the same sweep as two shards (two jobs), then --report: the same report
    shards = tmp_path / "two"
    for i in (0, 1):
        part = run_compare(load_config(None, [f"runs_dir={shards}", *args, f"compare.shard={i}/2"]))
        assert part["rows"] == [] and part["cells"] == 4
    with pytest.raises(ValueError, match="no finished cells"):
        run_compare(load_config(None, [f"runs_dir={tmp_path / 'none'}", *args]), report_only=True)
    merged = run_compare(load_config(None, [f"runs_dir={shards}", *args]), report_only=True)
    assert merged["missing"] == [] and (shards / "cmp" / "report.md").read_text() == report
    assert merged["aggregate"] == out["aggregate"] and merged["differences"] == out["differences"]
