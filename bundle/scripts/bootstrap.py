# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The cluster bootstrap behind every interval of the evaluation (floor 1 of DESIGN.md: numpy only).

Test images are not independent (augmented copies of a dozen slices, several images per patient), so each resample
draws the independent units with replacement and takes all their images (:func:`unit_bootstrap_weights`); a
statistic computed under each resample's weights gives its 95 % percentile interval (:func:`percentile_interval`).
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["unit_bootstrap_weights", "percentile_interval", "resampled_means", "paired_differences",
           "bootstrap_interval", "bootstrap_p_value", "holm"]


def unit_bootstrap_weights(units: Sequence, n_resamples: int, seed: int = 0) -> np.ndarray:
    """``(n_resamples, N)`` image weights of a cluster bootstrap: each resample draws as many units as there are
    (with replacement) and counts each image as often as its unit was drawn."""
    unique, inverse = np.unique(np.asarray([str(u) for u in units]), return_inverse=True)
    draws = np.random.default_rng(seed).multinomial(len(unique), np.full(len(unique), 1 / len(unique)),
                                                    size=n_resamples)
    return draws[:, inverse].astype(np.float64)


def percentile_interval(values, level: float = 0.95) -> List[float]:
    """``[low, high]`` percentile interval of resampled statistics (NaN resamples left out; NaN when none), each end
    the nearest resample outward, so the interval is never narrower than the interpolated one."""
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).all():
        return [math.nan, math.nan]
    tail = (1 - level) / 2 * 100
    # the order statistics just outside the interval (not interpolated): an infinite ratio stays inf, never NaN
    low = np.nanpercentile(values, tail, method="lower")
    high = np.nanpercentile(values, 100 - tail, method="higher")
    return [float(low), float(high)]


def resampled_means(values: Sequence[float], weights: np.ndarray) -> np.ndarray:
    """``(R,)`` means of per-image ``values`` (NaN ones left out) under each resample's ``weights``."""
    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array)
    totals = weights[:, finite].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, weights[:, finite] @ array[finite] / totals, np.nan)


def paired_differences(resampled: Dict[str, np.ndarray], ours: str) -> Dict[str, List[float]]:
    """Interval of ``ours`` minus every other method, resample by resample (the paired comparison)."""
    if ours not in resampled:
        return {}
    with np.errstate(invalid="ignore"):
        return {m: percentile_interval(resampled[ours] - v) for m, v in resampled.items() if m != ours}


def bootstrap_interval(values: Sequence[float], n_resamples: int = 2000, seed: int = 0) -> Tuple[float, float, float]:
    """Mean of the finite ``values`` (one per independent unit) and its 95 % bootstrap interval (each value its own
    unit); ``(mean, low, high)``, the interval NaN for fewer than 2 finite values."""
    array = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    mean = float(array.mean()) if array.size else math.nan
    if array.size < 2:
        return mean, math.nan, math.nan
    weights = unit_bootstrap_weights(range(array.size), n_resamples, seed)
    return (mean, *percentile_interval(resampled_means(array, weights)))


def bootstrap_p_value(differences: np.ndarray) -> float:
    """One-sided bootstrap p-value of "ours is higher" from resampled differences ours minus other ``(R,)``: the
    share of resamples at or below 0, counted as (1 + k) / (1 + R) so it is never 0 (NaN resamples left out; NaN
    when all are)."""
    values = np.asarray(differences, dtype=np.float64)
    values = values[~np.isnan(values)]
    if not values.size:
        return math.nan
    return float((1 + np.count_nonzero(values <= 0)) / (1 + values.size))


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm's step-down adjustment of a family of p-values (family-wise error rate); NaN ones stay NaN and do not
    count towards the family. Written here: scipy has no Holm, and statsmodels is not a dependency."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, math.nan)
    order = [i for i in np.argsort(p, kind="stable") if not np.isnan(p[i])]
    running, m = 0.0, len(order)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
