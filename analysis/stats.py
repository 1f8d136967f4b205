"""Uncertainty of the report's numbers: bootstrap intervals over runs, paired Wilcoxon tests.

A run is the unit of replication: every interval resamples whole runs with replacement (a
run's receivers or packets are never counted as independent evidence). Peering on and off
runs with the same run index share a seed (the same drawn link delays), so on/off
comparisons are paired by seed and tested with the Wilcoxon signed-rank test
(`scipy.stats.wilcoxon`, two-sided).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 0  # fixed: the same runs always give the same intervals

Statistic = Callable[[np.ndarray], float]


@dataclass(frozen=True)
class Interval:
    """A statistic over runs and its 95 % percentile-bootstrap interval (NaN: no data).

    With a single run the interval is that run's value: one run says nothing about the
    spread, which `n` shows next to every interval.
    """

    value: float
    low: float
    high: float
    n: int

    @property
    def missing(self) -> bool:
        return self.n == 0 or math.isnan(self.value)

    def meets(self, lo: float, hi: float) -> bool:
        """True when the interval and [lo, hi] share a value (the claim is not excluded)."""
        return self.low <= hi and self.high >= lo

    def text(self, spec: str = "{:.1f}") -> str:
        """'12.3 [10.1, 14.0], n=10', or an en dash without data."""
        if self.missing:
            return "–"
        return (
            f"{spec.format(self.value)} [{spec.format(self.low)}, {spec.format(self.high)}],"
            f" n={self.n}"
        )


NO_INTERVAL = Interval(math.nan, math.nan, math.nan, 0)


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[~np.isnan(v)]


def _interval(statistic, data: tuple, vectorized: bool, n_resamples: int, seed: int):
    ci = stats.bootstrap(
        data,
        statistic,
        vectorized=vectorized,
        n_resamples=n_resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return float(ci.low), float(ci.high)


def bootstrap(
    per_run: Sequence[float] | np.ndarray, *, n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> Interval:
    """Median over runs of one number per run, with its 95 % percentile-bootstrap interval
    (`scipy.stats.bootstrap`, runs resampled with replacement). NaN runs are left out."""
    v = _clean(per_run)
    if len(v) == 0:
        return NO_INTERVAL
    value = float(np.median(v))
    if len(v) == 1:
        return Interval(value, value, value, 1)
    low, high = _interval(np.median, (v,), True, n_resamples, seed)
    return Interval(value, low, high, len(v))


def pooled_bootstrap(
    runs: Sequence[np.ndarray | Sequence[float]],
    statistic: Statistic,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """`statistic` of the pooled values of `runs` (one array per run), with its interval:
    each resample draws whole runs with replacement and pools their values."""
    clusters = [c for c in (_clean(r) for r in runs) if len(c)]
    if not clusters:
        return NO_INTERVAL
    value = float(statistic(np.concatenate(clusters)))
    if len(clusters) == 1:
        return Interval(value, value, value, 1)

    def resampled(index: np.ndarray) -> float:
        return float(statistic(np.concatenate([clusters[int(i)] for i in index])))

    low, high = _interval(resampled, (np.arange(len(clusters)),), False, n_resamples, seed)
    return Interval(value, low, high, len(clusters))


@dataclass(frozen=True)
class Paired:
    """A peering off/on comparison over seed-paired runs."""

    seeds: list[object]
    off: np.ndarray
    on: np.ndarray
    p_value: float  # two-sided Wilcoxon signed-rank; NaN without pairs
    off_interval: Interval
    on_interval: Interval
    difference: Interval  # median of (on - off) over the pairs

    @property
    def n(self) -> int:
        return len(self.seeds)


def wilcoxon_p(off: Sequence[float], on: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples (NaN without pairs)."""
    if len(off) == 0:
        return math.nan
    if np.array_equal(np.asarray(off, dtype=float), np.asarray(on, dtype=float)):
        return 1.0  # no difference at all (scipy: p = 1 with a warning, or an error for n=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.wilcoxon(off, on).pvalue)


def paired(off: Mapping[object, float], on: Mapping[object, float]) -> Paired:
    """Pair off and on values by seed (keys); seeds with a missing or NaN side are left out."""
    seeds = sorted(
        (s for s in set(off) & set(on) if not (math.isnan(off[s]) or math.isnan(on[s]))),
        key=str,
    )
    x = np.array([off[s] for s in seeds], dtype=float)
    y = np.array([on[s] for s in seeds], dtype=float)
    return Paired(
        seeds=seeds,
        off=x,
        on=y,
        p_value=wilcoxon_p(x, y),
        off_interval=bootstrap(x),
        on_interval=bootstrap(y),
        difference=bootstrap(y - x),
    )


def format_p(p: float) -> str:
    """A p-value cell: three significant digits, an en dash without a test."""
    if math.isnan(p):
        return "–"
    return f"{p:.3g}"


__all__ = [
    "CONFIDENCE",
    "NO_INTERVAL",
    "Interval",
    "Paired",
    "bootstrap",
    "format_p",
    "paired",
    "pooled_bootstrap",
    "wilcoxon_p",
]
