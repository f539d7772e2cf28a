"""Pareto fronts of (accuracy up, reconstruction error down) and how far a front is from its ideal."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def pareto_optimal(accuracy: Sequence[float], error: Sequence[float]) -> np.ndarray:
    """Which points no other point dominates (higher accuracy is better, lower error is better).

    Point ``j`` dominates ``i`` when ``accuracy[j] >= accuracy[i]`` and ``error[j] <= error[i]``
    with at least one strict. Points with a NaN are never optimal and dominate nothing; exact
    duplicates of an optimal point are all optimal.

    Args:
        accuracy: ``(n,)`` accuracies; error: ``(n,)`` errors (e.g. reconstruction MSE).

    Returns: ``(n,)`` boolean array.
    """
    acc, err = np.asarray(accuracy, dtype=float), np.asarray(error, dtype=float)
    if acc.shape != err.shape or acc.ndim != 1:
        raise ValueError(f"accuracy and error must be 1-d of equal length, got shapes {acc.shape} and {err.shape}")
    valid = np.isfinite(acc) & np.isfinite(err)
    optimal = valid.copy()
    for i in np.flatnonzero(valid):
        others = valid & (acc >= acc[i]) & (err <= err[i]) & ((acc > acc[i]) | (err < err[i]))
        optimal[i] = not others.any()
    return optimal


def mark_pareto(
    frame: pd.DataFrame,
    by: Sequence[str],
    accuracy: str = "test_accuracy",
    error: str = "recon_mse",
    column: str = "pareto_optimal",
) -> pd.DataFrame:
    """A copy of ``frame`` with boolean ``column``: Pareto-optimal within its group ``by``."""
    for name in [*by, accuracy, error]:
        if name not in frame.columns:
            raise ValueError(f"mark_pareto: column {name!r} not in the table; it has {list(frame.columns)}")
    out = frame.copy()
    out[column] = False
    if out.empty:
        return out
    for _, group in out.groupby(list(by), sort=False, dropna=False):
        out.loc[group.index, column] = pareto_optimal(group[accuracy].to_numpy(), group[error].to_numpy())
    return out


def tradeoff_gap(accuracy: Sequence[float], error: Sequence[float]) -> float:
    """How far the best compromise of a trade-off curve is from its ideal point (>= 0).

    For each point (e.g. one per ``lam``): its relative accuracy shortfall ``1 - acc / max acc``
    and its relative error excess ``err / min err - 1``; the gap is the smallest, over the points,
    of the larger of the two. ``0``: one point attains both the best accuracy and the best error
    (no trade-off); ``0.05``: the best compromise loses 5 % of the best accuracy or has 5 % more
    than the best error. NaN points are ignored; NaN if fewer than two remain or a best value is
    not positive.
    """
    acc, err = np.asarray(accuracy, dtype=float), np.asarray(error, dtype=float)
    keep = np.isfinite(acc) & np.isfinite(err)
    acc, err = acc[keep], err[keep]
    if len(acc) < 2 or acc.max() <= 0 or err.min() <= 0:
        return float("nan")
    shortfall = 1.0 - acc / acc.max()
    excess = err / err.min() - 1.0
    return float(np.min(np.maximum(shortfall, excess)))


def hypervolume(accuracy: Sequence[float], error: Sequence[float], reference_error: float, reference_accuracy: float = 0.1) -> float:
    """Area of the accuracy-vs-error plane that a front dominates, as a fraction of the box between
    the reference point and the ideal point (error 0, accuracy 1); in [0, 1], higher is better.

    A point ``(a, e)`` dominates the rectangle ``[e, reference_error] x [reference_accuracy, a]``;
    the hypervolume is the area of the union of these rectangles over the points, divided by
    ``reference_error * (1 - reference_accuracy)``. The reference is fixed per data set (chance
    accuracy and the error of predicting the mean training image), so hypervolumes of different
    fronts share one scale: a front that moves towards the ideal point never loses area. Points no
    better than the reference in both coordinates, and NaN points, add nothing; an empty front has 0.

    Args:
        accuracy: ``(n,)`` accuracies in [0, 1]; error: ``(n,)`` errors >= 0 (e.g. reconstruction MSE).
        reference_error: error of the reference point (> 0).
        reference_accuracy: accuracy of the reference point (< 1).
    """
    acc, err = np.asarray(accuracy, dtype=float), np.asarray(error, dtype=float)
    if acc.shape != err.shape or acc.ndim != 1:
        raise ValueError(f"accuracy and error must be 1-d of equal length, got shapes {acc.shape} and {err.shape}")
    if not (np.isfinite(reference_error) and reference_error > 0 and reference_accuracy < 1):
        raise ValueError(f"reference point: expected error > 0 and accuracy < 1, got ({reference_error!r}, {reference_accuracy!r})")
    keep = np.isfinite(acc) & np.isfinite(err) & (acc > reference_accuracy) & (err < reference_error)
    acc, err = np.minimum(acc[keep], 1.0), np.maximum(err[keep], 0.0)
    if len(acc) == 0:
        return 0.0
    order = np.argsort(err, kind="stable")
    err, height = err[order], np.maximum.accumulate(acc[order]) - reference_accuracy  # best accuracy at error <= e
    widths = np.diff(np.append(err, reference_error))
    return float(np.sum(widths * height) / (reference_error * (1.0 - reference_accuracy)))
