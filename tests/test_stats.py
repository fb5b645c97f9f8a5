"""The intervals: block bootstrap coverage on correlated data, paired intervals, Wilson's known values."""

import math

import numpy as np
import pytest

from streamlib.core.format import format_interval
from streamlib.core.stats import (bootstrap_means, mean_interval, median_spread, paired_ratio_interval,
                                  perplexity_interval, wilson_interval)


def ar1(reps: int, n: int, phi: float, mean: float, seed: int) -> np.ndarray:
    """``reps`` stationary AR(1) series of length ``n`` around ``mean`` (unit innovations)."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((reps, n))
    x = np.empty((reps, n))
    x[:, 0] = e[:, 0] / math.sqrt(1 - phi * phi)
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x + mean


def coverage(reps: int, block: int, resamples: int, seed: int) -> float:
    """The share of ``reps`` AR(1) series (phi = 0.5, length 2048, true mean 3) whose interval covers the mean."""
    series = ar1(reps, 2048, 0.5, 3.0, seed=seed)
    hits = 0
    for i, x in enumerate(series):
        iv = mean_interval(x, block=block, resamples=resamples, seed=i)
        hits += iv.low <= 3.0 <= iv.high
    return hits / reps


def test_block_bootstrap_covers_a_known_mean_at_its_nominal_rate():
    # AR(1) with phi = 0.5: neighbouring values correlated, as per-token NLL along a text is
    assert 0.92 <= coverage(1000, block=128, resamples=1000, seed=11) <= 0.98


def test_iid_blocks_undercover_correlated_data():
    # blocks of one token ignore the correlation (the variance misses the factor (1+phi)/(1-phi) = 3): the interval
    # is too narrow, so the block is what makes the coverage right, and the test above can tell the difference
    assert coverage(300, block=1, resamples=500, seed=12) < 0.85


def test_bootstrap_means_centre_on_the_sample_mean_and_are_deterministic():
    x = np.arange(1000, dtype=float) % 17
    a, b = bootstrap_means(x, block=64, resamples=4000, seed=3), bootstrap_means(x, block=64, resamples=4000, seed=3)
    assert np.array_equal(a, b)
    assert abs(a.mean() - x.mean()) < 0.05
    assert np.ptp(bootstrap_means(np.full(500, 2.5), block=32, resamples=200)) == 0


def test_a_policy_against_itself_has_a_zero_width_paired_interval():
    nll = np.random.default_rng(0).gamma(2.0, 1.5, size=1023)
    iv = paired_ratio_interval(nll, nll)
    assert iv.value == iv.low == iv.high == 1.0
    assert not iv.excludes(1.0)


def test_paired_interval_is_narrower_than_the_unpaired_one_on_shared_difficulty():
    rng = np.random.default_rng(1)
    difficulty = rng.gamma(2.0, 1.5, size=2048)  # what both policies find hard: most of the variance
    a = difficulty + rng.normal(0.05, 0.1, size=2048)
    b = difficulty
    paired = paired_ratio_interval(a, b)
    assert paired.excludes(1.0) and paired.low > 1.0
    ia, ib = perplexity_interval(a), perplexity_interval(b)
    assert ia.low < ib.high  # unpaired, the two intervals overlap: the difference would look unresolved
    assert math.isclose(paired.value, math.exp(a.mean() - b.mean()))


def test_perplexity_interval_brackets_exp_mean():
    nll = np.random.default_rng(2).gamma(2.0, 1.5, size=700)
    iv = perplexity_interval(nll)
    assert iv.low < iv.value < iv.high
    assert math.isclose(iv.value, math.exp(nll.mean()))


@pytest.mark.parametrize("k, n, low, high", [(0, 8, 0.0, 0.3244), (4, 8, 0.2152, 0.7848), (8, 8, 0.6756, 1.0),
                                             (1, 10, 0.0179, 0.4042)])
def test_wilson_matches_known_values(k, n, low, high):
    iv = wilson_interval(k, n)
    assert iv.value == k / n
    assert iv.low == pytest.approx(low, abs=1e-4) and iv.high == pytest.approx(high, abs=1e-4)


@pytest.mark.parametrize("n", [1, 8, 20, 1000])
def test_wilson_bounds_at_none_and_all_are_exact(n):
    # 0 of 20 printed as [1.39e-17, 0.16] in 06's table before
    assert wilson_interval(0, n).low == 0.0 and wilson_interval(n, n).high == 1.0
    assert format_interval(wilson_interval(0, n).low, 0.5) == "[0, 0.50]"


@pytest.mark.parametrize("call, message", [
    (lambda: wilson_interval(5, 4), "trials must be >= 1"),
    (lambda: wilson_interval(-1, 4), "successes must be an integer >= 0"),
    (lambda: mean_interval([1.0]), "values must hold at least 2"),
    (lambda: mean_interval([1.0, 2.0], block=0), "block must be an integer >= 1"),
    (lambda: mean_interval([1.0, 2.0], resamples=10), "resamples must be an integer >= 100"),
    (lambda: mean_interval([1.0, float("nan")]), "values must be finite"),
    (lambda: paired_ratio_interval([1.0, 2.0], [1.0, 2.0, 3.0]), "same tokens"),
])
def test_bad_input_names_the_parameter(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_median_spread():
    assert median_spread([4.0, 1.0, 3.0, 2.0, 5.0]) == (3.0, 2.0, 4.0)
