"""The intervals `sftbc compare` reports, on inputs whose answer is known."""

import math

import numpy as np
from scipy import stats as sp

from sftbc import stats
from sftbc.compare import aggregate, scaling


def test_bootstrap_of_a_fixed_sample_gives_its_known_percentile_interval():
    # 30 successes in 100: the bootstrap mean is Binomial(100, 0.3) / 100, so the percentile interval is
    # that distribution's 2.5% and 97.5% quantiles, up to one step (1/100) of Monte Carlo error
    sample = np.array([[1.0] * 30 + [0.0] * 70])
    mean, lo, hi = stats.crossed_interval(sample)
    assert mean == 0.3
    assert abs(lo - sp.binom.ppf(0.025, 100, 0.3) / 100) <= 0.011
    assert abs(hi - sp.binom.ppf(0.975, 100, 0.3) / 100) <= 0.011
    assert stats.crossed_interval(np.ones((3, 5))) == (1.0, 1.0, 1.0)  # nothing varies: nothing to resample


def test_wilson_interval_covers_the_true_rate_in_about_95_percent_of_experiments():
    # 400 simulated experiments of 60 episodes at a true success rate of 0.3. The Wilson interval's
    # coverage is close to 95% (not exactly: the binomial is discrete), and 400 repetitions measure it
    # to about +-1.1 points (one standard error), so we accept 92% to 98%.
    rng = np.random.default_rng(0)
    covered = sum(lo <= 0.3 <= hi for lo, hi in (stats.wilson(int(k), 60) for k in rng.binomial(60, 0.3, size=400)))
    assert 0.92 <= covered / 400 <= 0.98
    assert stats.rate_interval(np.array([[1, 1, 0, 0]]))[1:] == stats.wilson(2, 4)  # one seed: Wilson


def test_crossed_interval_widens_with_seed_to_seed_variation():
    # the same 200 outcomes, once as one seed and once split into two seeds that disagree completely:
    # resampling seeds must show that the mean depends on which seed trained the student
    rng = np.random.default_rng(1)
    a, b = (rng.random(100) < 0.2).astype(float), (rng.random(100) < 0.8).astype(float)
    pooled = stats.crossed_interval(np.concatenate([a, b])[None, :])
    two_seeds = stats.crossed_interval(np.stack([a, b]))
    assert math.isclose(pooled[0], two_seeds[0])
    assert two_seeds[2] - two_seeds[1] > 3 * (pooled[2] - pooled[1])


def test_t_interval_over_seeds():
    mean, lo, hi = stats.t_interval([1.0, 2.0, 3.0])  # sd 1, sem 1/sqrt(3), t(0.975, 2 df) = 4.303
    assert mean == 2.0 and math.isclose(hi - mean, 4.302653 / math.sqrt(3), rel_tol=1e-5) and math.isclose(lo, 4 - hi)
    assert stats.t_interval([0.7]) == (0.7, None, None)


def rows(method, successes_by_seed, mistakes_by_seed=None, T=8, step_limit_rate=0.0):
    """compare result rows of one method at one T: per seed, each held-out episode's outcome."""
    out = []
    for seed, succ in enumerate(successes_by_seed):
        mis = mistakes_by_seed[seed] if mistakes_by_seed else [0] * len(succ)
        per_episode = [{"seed": 10**9 + i, "success": bool(s), "mistakes": m} for i, (s, m) in enumerate(zip(succ, mis))]
        out.append({"method": method, "T": T, "seed": seed, "episodes": len(succ), "step_limit_rate": step_limit_rate,
                    "success_rate": sum(succ) / len(succ), "mistakes_mean": sum(mis) / len(mis),
                    "per_episode": per_episode})
    return out


def test_paired_difference_sees_what_two_overlapping_intervals_hide():
    # bc solves a random ~half of 60 episodes per seed; dagger solves the same ones plus 6 more. Each
    # method's interval is wide (which episodes were drawn), but on the same episodes the gain is certain.
    rng = np.random.default_rng(2)
    bc = [(rng.random(60) < 0.5).astype(int) for _ in range(3)]
    dagger = [b.copy() for b in bc]
    for d in dagger:
        d[np.flatnonzero(d == 0)[:6]] = 1
    agg, diffs = aggregate(rows("bc", bc) + rows("dagger", dagger), baseline="bc")
    a_bc, a_dagger = sorted(agg, key=lambda a: a["method"])
    assert a_bc["success_hi"] > a_dagger["success_lo"]  # the intervals overlap
    [d] = diffs
    assert (d["method"], d["baseline"], d["n_seeds"]) == ("dagger", "bc", 3)
    assert math.isclose(d["success_diff"], 0.1) and d["success_lo"] > 0 and stats.excludes_zero(d["success_lo"], d["success_hi"])
    assert d["mistakes_diff"] == 0.0 and not stats.excludes_zero(d["mistakes_lo"], d["mistakes_hi"])


def test_exponent_fitted_per_seed_leaves_out_step_limit_horizons_and_pairs_with_the_baseline():
    Ts, k = [1, 2, 4, 8, 16], {0: 2.0, 1: 1.8, 2: 2.2}
    rs = []
    for T in Ts:
        for seed, e in k.items():
            for method, scale in (("bc", 0.1), ("dagger", 0.1 / T**0.5)):  # dagger: half a power less
                m = scale * T**e
                r = rows(method, [[True]], [[m]], T=T, step_limit_rate=0.9 if T == 16 else 0.0)[0]
                rs.append(r | {"seed": seed})
    # the capped horizon, far off the power law, must not be fitted
    for r in rs:
        if r["T"] == 16:
            r["mistakes_mean"] = 5.0
    fits = scaling(rs, baseline="bc")
    bc, dagger = fits["bc"], fits["dagger"]
    assert bc["flagged_horizons"] == [16] and bc["per_seed"][1]["horizons_used"] == [1, 2, 4, 8]
    assert all(math.isclose(bc["per_seed"][s]["exponent"], e) for s, e in k.items())
    _, lo, hi = stats.t_interval(list(k.values()))
    assert math.isclose(bc["exponent"], 2.0) and math.isclose(bc["lo"], lo) and math.isclose(bc["hi"], hi)
    assert math.isclose(dagger["exponent"], 1.5) and math.isclose(dagger["diff"], -0.5)
    assert math.isclose(dagger["diff_lo"], -0.5) and math.isclose(dagger["diff_hi"], -0.5)  # the same gap every seed


def test_a_rate_over_some_episodes_resamples_them_with_the_rest():
    # 100 episodes, 40 with a mistake, 10 of those recovered: recovery 0.25 whatever the other 60 did
    erred = np.array([[1.0] * 40 + [0.0] * 60])
    recovered = np.array([[1.0] * 10 + [0.0] * 90])
    mean, lo, hi = stats.crossed_interval(recovered, den=erred)
    assert mean == 0.25 and 0.1 < lo < 0.25 < hi < 0.4
    assert stats.crossed_interval(recovered[:, 40:], den=erred[:, 40:]) == (None, None, None)  # nothing erred
    # a seed with no episode in the ratio: resamples that draw only it have no ratio and are left out
    two = stats.crossed_interval(np.vstack([recovered, np.zeros((1, 100))]), den=np.vstack([erred, np.zeros((1, 100))]))
    assert two[0] == 0.25 and None not in two
