"""Intervals for `sftbc compare`: a result is a claim only with its uncertainty.

A compare cell is one method at one horizon T trained with one seed, evaluated on held-out episodes
that are the same for every seed and method. So each method x T is a seeds x episodes matrix of
outcomes, and two methods' matrices are paired cell by cell (same seed index, same episode). Two
sources of variation matter: which seed trained the student (its data, initialisation, batch order)
and which episodes it was tested on. The interval resamples both, independently: a two-way
bootstrap of the crossed design, drawing seeds (rows) and episodes (columns) with replacement.

The resampling is `scipy.stats.bootstrap`'s (percentile method), given the row and column indices as
two independent samples; we chose it over `rliable` (its stratified bootstrap resamples runs within
tasks, not the episodes shared by all runs, and it pins an old `arch`). With one seed there is no
seed variation to resample: a success rate gets the Wilson score interval (scipy's `binomtest`), other
means a bootstrap over episodes. The power-law exponent is fitted per seed; its mean gets a Student-t
interval over seeds (with 3 seeds, a bootstrap over 3 values is too coarse to mean anything).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 9999


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a binomial rate."""
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return ci.low, ci.high


def crossed_interval(m: np.ndarray, seed: int = 0, den: np.ndarray | None = None) -> tuple[float, float, float]:
    """Mean of a seeds x episodes matrix and its 95% two-way bootstrap interval (module docstring).
    A one-row matrix resamples episodes only. With `den` (same shape), the ratio sum(m) / sum(den)
    instead of the mean: a rate over some of the episodes (recoveries per episode with a mistake), its
    episodes resampled with the rest; None where `den` is all 0."""
    m = np.asarray(m, dtype=float)
    d = np.ones_like(m) if den is None else np.asarray(den, dtype=float)
    if d.sum() == 0:
        return None, None, None
    mean = float(m.sum() / d.sum())
    if np.ptp(m) == 0 and np.ptp(d) == 0:  # every outcome the same (all solved, say): nothing to resample
        return mean, mean, mean

    def ratio_of(rows, cols):  # vectorized: a batch of resampled row and column indices
        at = (rows.astype(int)[..., :, None], cols.astype(int)[..., None, :])
        with np.errstate(invalid="ignore", divide="ignore"):  # a resample without any erring episode: no ratio
            return m[at].sum(axis=(-2, -1)) / d[at].sum(axis=(-2, -1))

    rows, cols = np.arange(m.shape[0]), np.arange(m.shape[1])
    if m.shape[0] == 1:  # one seed: episodes only
        samples, statistic = (cols,), lambda c, axis=-1: ratio_of(np.zeros(c.shape[:-1] + (1,)), c)
    else:
        samples, statistic = (rows, cols), lambda r, c, axis=-1: ratio_of(r, c)
    with warnings.catch_warnings():  # resamples without a ratio are handled below
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(samples, statistic, vectorized=True, method="percentile", n_resamples=RESAMPLES,
                              batch=500, rng=seed)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        # some resamples held no episode the ratio is over (a seed with none, drawn twice): the interval
        # is conditional on at least one, the percentiles of the resamples that have a ratio
        lo, hi = np.nanpercentile(res.bootstrap_distribution, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    return mean, float(lo), float(hi)


def rate_interval(m: np.ndarray) -> tuple[float, float, float]:
    """A success rate's mean and interval: Wilson for one seed, the two-way bootstrap for several. Where
    every episode of every seed came out the same (all failed, say), resampling can only return that
    one value, [0, 0]; the Wilson interval of the pooled episodes is then the honest bound."""
    m = np.asarray(m, dtype=float)
    if m.shape[0] == 1 or np.ptp(m) == 0:
        return (float(m.mean()), *wilson(int(m.sum()), m.size))
    return crossed_interval(m)


def t_interval(values: list[float]) -> tuple[float, float | None, float | None]:
    """Mean of per-seed values and its 95% Student-t interval (none from a single value)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), None, None
    sem = float(x.std(ddof=1)) / math.sqrt(len(x))
    if sem == 0:
        return float(x.mean()), float(x.mean()), float(x.mean())
    lo, hi = stats.t.interval(CONFIDENCE, len(x) - 1, loc=x.mean(), scale=sem)
    return float(x.mean()), float(lo), float(hi)


def excludes_zero(lo: float | None, hi: float | None) -> bool:
    return lo is not None and hi is not None and (lo > 0 or hi < 0)
