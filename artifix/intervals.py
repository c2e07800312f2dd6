"""Confidence intervals, one implementation each, all at a given confidence (the `--confidence` option).

- `z(confidence)`: the two-sided normal quantile;
- `normal(value, se, confidence)`: value +- z * se;
- `bootstrap_se(replicates)`: the standard error from bootstrap replicates;
- `percentile_bootstrap(x, confidence, seed)`: the mean of `x` (per-sample values) with a percentile bootstrap interval;
- `paired_bootstrap(a, b, confidence, seed)`: mean(b - a) on the same samples, with its percentile bootstrap interval;
- `wilson(k, n, confidence)`: a binomial rate with the Wilson score interval (sensible at 0/n and n/n);
- `binomial_se(k, n)`: a rate's standard error, Laplace-smoothed so that 0/n still has a non-zero one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

DEFAULT_CONFIDENCE = 0.95


def check_confidence(confidence: float) -> float:
    """`confidence` as a float in (0, 1); a ValueError otherwise (callers turn it into a user sentence)."""
    c = float(confidence)
    if not 0.0 < c < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}.")
    return c


def z(confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The two-sided standard-normal quantile for `confidence` (1.96 at 0.95)."""
    return NormalDist().inv_cdf(0.5 + check_confidence(confidence) / 2.0)


def normal(value: float, se: float, confidence: float = DEFAULT_CONFIDENCE) -> list[float]:
    """[value - z se, value + z se]."""
    h = z(confidence) * float(se)
    return [float(value) - h, float(value) + h]


def bootstrap_se(replicates: np.ndarray) -> float | None:
    """The standard deviation of bootstrap replicates (None with fewer than 2)."""
    r = np.asarray(replicates, float).ravel()
    return float(np.std(r, ddof=1)) if r.size >= 2 else None


def _tails(confidence: float) -> tuple[float, float]:
    a = (1.0 - check_confidence(confidence)) / 2.0
    return a, 1.0 - a


@dataclass(frozen=True)
class Interval:
    """An estimate with its standard error and interval at `confidence`, from `n` samples."""

    value: float
    lo: float
    hi: float
    se: float
    n: int
    confidence: float

    @property
    def ci(self) -> list[float]:
        """[lo, hi]."""
        return [self.lo, self.hi]


def percentile_bootstrap(x: Sequence[float] | np.ndarray, confidence: float = DEFAULT_CONFIDENCE, seed: int = 0,
                         reps: int = 1000) -> Interval:
    """The mean of per-sample values `x` with a percentile bootstrap interval (NaN values are ignored by the replicates)."""
    v = np.asarray(x, float).ravel()
    lo_q, hi_q = _tails(confidence)
    if v.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), float("nan"), 0, float(confidence))
    rng = np.random.default_rng(seed)
    boots = np.nanmean(v[rng.integers(0, v.size, (reps, v.size))], 1) if np.isnan(v).any() else v[rng.integers(0, v.size, (reps, v.size))].mean(1)
    value = float(np.nanmean(v))
    se = bootstrap_se(boots[np.isfinite(boots)])
    return Interval(value, float(np.nanquantile(boots, lo_q)), float(np.nanquantile(boots, hi_q)),
                    float("nan") if se is None else se, int(v.size), float(confidence))


def paired_bootstrap(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = DEFAULT_CONFIDENCE,
                     seed: int = 0, reps: int = 2000) -> Interval:
    """mean(b - a) over the same samples with a paired percentile bootstrap interval."""
    d = np.asarray(b, float).ravel() - np.asarray(a, float).ravel()
    return percentile_bootstrap(d, confidence, seed, reps)


def wilson(k: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """The rate k/n with its Wilson score interval and the smoothed standard error (`binomial_se`)."""
    if n <= 0:
        return Interval(float("nan"), float("nan"), float("nan"), float("nan"), 0, float(confidence))
    q = z(confidence)
    p = k / n
    den = 1.0 + q * q / n
    mid = (p + q * q / (2 * n)) / den
    half = q * math.sqrt(p * (1 - p) / n + q * q / (4 * n * n)) / den
    lo, hi = (0.0 if k == 0 else max(0.0, mid - half)), (1.0 if k == n else min(1.0, mid + half))
    return Interval(p, lo, hi, binomial_se(k, n), int(n), float(confidence))


def binomial_se(k: int, n: int) -> float:
    """A rate's standard error, Laplace-smoothed ((k + 1) / (n + 2)) so that 0/n still has a non-zero one."""
    p = (k + 1.0) / (n + 2.0)
    return math.sqrt(p * (1.0 - p) / n)


def percentile_interval(replicates: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> list[float]:
    """The central `confidence` range of bootstrap replicates (NaN replicates ignored)."""
    lo_q, hi_q = _tails(confidence)
    r = np.asarray(replicates, float)
    return [float(np.nanquantile(r, lo_q)), float(np.nanquantile(r, hi_q))]
