"""Order statistics of benchmark samples: percentiles, medians and a short description."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def percentile(values: Iterable[float], p: float) -> float:
    """Linear-interpolated percentile (numpy's default), NaN for no values."""
    xs = sorted(values)
    if not xs:
        return math.nan
    k = (len(xs) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def describe(values: list[float]) -> dict[str, Any]:
    """n, p50/p95/p99, mean, min, max of ``values`` (all in the unit of the values)."""
    xs = [v for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "p50": percentile(xs, 50),
        "p95": percentile(xs, 95),
        "p99": percentile(xs, 99),
        "mean": sum(xs) / len(xs),
        "min": min(xs),
        "max": max(xs),
    }


def median(values: Iterable[float]) -> float:
    return percentile(values, 50)
