import json
import math

from sftbc.compare import run_compare
from sftbc.config import load_config
from sftbc.report import fit_exponent


def test_fit_recovers_a_power_law_and_skips_zero_mistake_horizons():
    f = fit_exponent([1, 2, 4, 8, 16], [0.0, 0.0, 0.3 * 4**2, 0.3 * 8**2, 0.3 * 16**2])
    assert math.isclose(f["exponent"], 2.0) and math.isclose(f["r2"], 1.0) and f["horizons_used"] == [4, 8, 16]
    noisy = fit_exponent([1, 2, 4, 8], [1.0, 2.5, 3.5, 9.0])
    assert 0.9 < noisy["exponent"] < 1.1 and 0.9 < noisy["r2"] < 1.0
    assert fit_exponent([1, 2], [0.0, 1.0])["exponent"] is None  # one point is no fit


def test_compare_writes_results_scaling_report_and_plots_and_resumes(tmp_path, tiny_path):
    cfg = load_config(None, [f"runs_dir={tmp_path}", f"model={tiny_path}", "name=cmp", "compare.horizons=[1,2]",
                             "compare.labels=6", "dagger.rounds=1", "train.epochs=1", "lora.rank=4",
                             "eval.episodes=3", "eval.max_new_tokens=24"])
    out = run_compare(cfg)
    d = tmp_path / "cmp"
    rows = json.loads((d / "results.json").read_text())["rows"]
    assert [(r["method"], r["T"]) for r in rows] == [(m, T) for T in (1, 2) for m in ("bc", "dart", "dagger")]
    for r in rows:
        assert r["teacher_labels"] == 6 and r["episodes"] == 3 and 0 <= r["success_rate"] <= 1
        assert {"mistakes_mean", "eps", "train_tokens", "wall_s"} <= set(r) and r["train_tokens"] > 0
    scaling = json.loads((d / "scaling.json").read_text())
    assert set(scaling["methods"]) == {"bc", "dart", "dagger"} and "eps_ref" in scaling
    assert all({"exponent", "r2", "horizons_used"} <= set(f) for f in scaling["methods"].values())
    for png in ("mistakes_vs_T.png", "success_vs_T.png", "dagger_rounds.png"):
        assert (d / png).read_bytes()[:4] == b"\x89PNG"
    report = (d / "report.md").read_text()
    assert "| dagger | 2 |" in report and "![mistakes vs T](mistakes_vs_T.png)" in report
    assert (d / "dagger-T002" / "round-001" / "adapter").is_dir()
    # resuming a finished sweep recomputes nothing and reports the same
    stamp = (d / "bc-T001" / "metrics.json").stat().st_mtime_ns
    again = run_compare(cfg, resume=True)
    assert again["rows"] == out["rows"] and (d / "bc-T001" / "metrics.json").stat().st_mtime_ns == stamp
