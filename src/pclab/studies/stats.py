"""Differences over seeds, with an interval, and the sentences a report's Findings are made of.

A study that compares two rules on the same seeds (paired runs: same initial weights, same data
order) summarises ``a[seed] - b[seed]`` by its mean and a two-sided Student-t confidence interval.
:func:`claim` turns such an interval into one sentence that never says more than the interval
does: "no detectable difference" when it contains zero, "within 1 point" only when it lies inside
``+-1``, and "the interval cannot be computed (n=1)" for a single seed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values and its confidence interval ``[low, high]`` (NaN when ``n < 2``)."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    @property
    def computable(self) -> bool:
        """True when the interval exists (at least two finite values)."""
        return self.n >= 2 and math.isfinite(self.low) and math.isfinite(self.high)

    def contains_zero(self) -> bool:
        """True when the interval includes 0 (False when it cannot be computed)."""
        return self.computable and self.low <= 0.0 <= self.high

    def clipped(self, low: float, high: float) -> Interval:
        """The interval cut to a quantity's range (e.g. ``[-1, 1]`` for a cosine): a t-interval of a
        bounded quantity can reach past its bounds."""
        return Interval(self.mean, min(max(self.low, low), high), max(min(self.high, high), low), self.n, self.confidence)

    def within(self, bound: float) -> bool:
        """True when the whole interval lies inside ``[-bound, bound]``."""
        return self.computable and -bound <= self.low and self.high <= bound


def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return float(_scipy_stats.t.ppf(probability, df))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and two-sided t-interval of ``values`` (non-finite values are dropped).

    ``mean +- t_{(1+c)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation; with fewer
    than two values the interval is ``(nan, nan)``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = np.asarray([float(v) for v in values], dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, confidence)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, confidence)
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, confidence)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and t-interval of ``a[i] - b[i]`` over pairs (seeds); pairs with a non-finite side drop out."""
    if len(a) != len(b):
        raise ValueError(f"paired values: expected equal lengths, got {len(a)} and {len(b)}")
    return mean_interval([float(x) - float(y) for x, y in zip(a, b)], confidence)


def _number(value: float, digits: int, signed: bool = True) -> str:
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def describe(interval: Interval, unit: str = "points", digits: int = 2, within: float | None = 1.0, over: str = "seeds",
             null: str = "no detectable difference", signed: bool = True) -> str:
    """The number and what it supports, e.g. ``"+0.42 points (95 % CI -0.31 to +1.15, n=3 seeds):
    no detectable difference"``.

    ``within`` (same unit): also say "within <within> <unit>" when the interval lies inside
    ``+-within``; ``None`` never does. ``null``: what an interval containing zero means (for a
    quantity that is not a difference, e.g. "no detectable alignment" for a mean cosine). ``signed``:
    print a ``+`` on positive numbers (differences); False for levels such as an accuracy.
    """
    sign = functools.partial(_number, digits=digits, signed=signed)
    unit_text = f" {unit}" if unit else ""
    if interval.n == 0:
        return "no paired result"
    if not interval.computable:
        single = over[:-1] if over.endswith("s") else over
        return f"{sign(interval.mean)}{unit_text} (n={interval.n} {single}: the interval cannot be computed)"
    level = f"{100 * interval.confidence:g} % CI"
    text = f"{sign(interval.mean)}{unit_text} ({level} {sign(interval.low)} to {sign(interval.high)}, n={interval.n} {over})"
    verdicts = []
    if interval.contains_zero():
        verdicts.append(null)
    if within is not None and interval.within(within):
        verdicts.append(f"within {within:g}{unit_text.rstrip('s') if within == 1 else unit_text}")
    return text + (": " + ", ".join(verdicts) if verdicts else "")


def claim(subject: str, interval: Interval, unit: str = "points", digits: int = 2, within: float | None = 1.0,
          over: str = "seeds", null: str = "no detectable difference", signed: bool = True) -> str:
    """One Findings sentence: ``"<subject>: <describe(...)>."``."""
    return f"{subject}: {describe(interval, unit, digits, within, over, null, signed)}."
