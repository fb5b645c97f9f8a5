"""Intervals for the workbook's numbers: a circular block bootstrap over per-token NLL (one stream's tokens are
correlated, so whole blocks are resampled), paired for two policies on the same tokens, and Wilson's interval for
an accuracy.

* Perplexity's 95 % interval: resample the NLL in contiguous blocks of ``block`` tokens (circular: a block may wrap
  from the end to the start, so every token is equally likely to be drawn; Politis & Romano, 1992), take the mean of
  each resample, and read the 2.5 and 97.5 percentiles; ``exp`` of those is the interval of ``exp(mean NLL)``.
* A paired comparison of policies A and B on the same tokens: the same blocks are drawn for both, i.e. the
  per-token difference ``nll_A - nll_B`` is resampled. The ratio of perplexities is ``exp(mean difference)``; a
  policy against itself has a difference of exactly zero in every resample, so an interval of zero width.
* Wilson's score interval for ``k`` successes in ``n`` trials (Wilson, 1927): never outside [0, 1], sensible at 0/n
  and n/n, where the normal approximation gives a zero-width interval.

Every function is deterministic for a given ``seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BLOCK = 128  # tokens per bootstrap block: longer than the span over which one token's NLL predicts the next's
RESAMPLES = 2000
LEVEL = 0.95


def _check(values, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 2:
        raise ValueError(f"{name} must hold at least 2 values; got {x.size}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


def _check_settings(block: int, resamples: int, level: float) -> None:
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be an integer >= 1; got {block!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 100:
        raise ValueError(f"resamples must be an integer >= 100; got {resamples!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level!r}")


def bootstrap_means(values, *, block: int = BLOCK, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """The means of ``resamples`` circular-block-bootstrap resamples of ``values`` (a 1-D series), each made of
    ``ceil(n / block)`` blocks of ``block`` consecutive values drawn at random starts (wrapping around)."""
    x = _check(values, "values")
    _check_settings(block, resamples, 0.5)
    n = x.size
    b = min(block, n)
    k = -(-n // b)  # blocks per resample
    # sum of every circular block of b values, by prefix sums over the series followed by its first b values
    wrapped = np.concatenate([x, x[: b - 1]])
    prefix = np.concatenate([[0.0], np.cumsum(wrapped)])
    block_sums = prefix[b : b + n] - prefix[:n]
    starts = np.random.default_rng(seed).integers(0, n, size=(resamples, k))
    return block_sums[starts].sum(axis=1) / (k * b)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval at ``level``, with how it was made."""

    value: float
    low: float
    high: float
    level: float = LEVEL
    method: str = ""

    def excludes(self, point: float) -> bool:
        """Whether ``point`` lies outside the interval: the difference from it is resolved."""
        return point < self.low or point > self.high

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def mean_interval(values, *, block: int = BLOCK, resamples: int = RESAMPLES, level: float = LEVEL,
                  seed: int = 0) -> Interval:
    """The mean of a correlated series with its block-bootstrap percentile interval."""
    _check_settings(block, resamples, level)
    x = _check(values, "values")
    lo, hi = _percentiles(bootstrap_means(x, block=block, resamples=resamples, seed=seed), level)
    return Interval(float(x.mean()), lo, hi, level, f"circular block bootstrap, {block}-token blocks, {resamples} resamples")


def perplexity_interval(nll, **kwargs) -> Interval:
    """Perplexity ``exp(mean NLL)`` and its interval (``exp`` of the mean NLL's interval). ``nll``: per-token NLL in
    nats along one stream. Keyword arguments go to :func:`mean_interval`."""
    m = mean_interval(nll, **kwargs)
    return Interval(math.exp(m.value), math.exp(m.low), math.exp(m.high), m.level, m.method)


def paired_ratio_interval(nll_a, nll_b, **kwargs) -> Interval:
    """The ratio of perplexities A / B on the same tokens, ``exp(mean(nll_a - nll_b))``, with the paired
    block-bootstrap interval (the same blocks for both: the per-token difference is resampled). 1 means no
    difference; the interval excludes 1 where the difference is resolved."""
    a, b = _check(nll_a, "nll_a"), _check(nll_b, "nll_b")
    if a.shape != b.shape:
        raise ValueError(f"nll_a and nll_b must be the same tokens (same length); got {a.size} and {b.size}")
    m = mean_interval(a - b, **kwargs)
    return Interval(math.exp(m.value), math.exp(m.low), math.exp(m.high), m.level, "paired " + m.method)


def wilson_interval(successes: int, trials: int, level: float = LEVEL) -> Interval:
    """The accuracy ``successes / trials`` with Wilson's score interval."""
    for name, v in (("successes", successes), ("trials", trials)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0; got {v!r}")
    if trials < 1 or successes > trials:
        raise ValueError(f"trials must be >= 1 and >= successes = {successes}; got {trials}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level!r}")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # at 0 of n (n of n) the bound is 0 (1) exactly; the formula leaves a rounding error of 1e-17 there
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Interval(p, low, high, level, "Wilson score")


def median_spread(values) -> tuple[float, float, float]:
    """Median and interquartile range (25th, 75th percentiles) of repeated timings."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 1:
        raise ValueError("values must hold at least 1 timing")
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    return float(med), float(q1), float(q3)
