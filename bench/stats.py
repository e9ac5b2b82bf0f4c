"""Summary statistics over repeated runs (seeds)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, std, half_width)`` of ``values``: sample std and a Student-t confidence half-width.

    With fewer than two values the std and the half-width are NaN (one seed says nothing about the
    spread); with none, all three are NaN.
    """
    from scipy import stats

    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, math.nan, math.nan
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, half
