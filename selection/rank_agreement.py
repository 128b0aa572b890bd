"""Rank agreement of a score (a proxy, or a predicted accuracy) with fine-tune accuracy.

Per task, over the models that have both values (in the order given, by model name in the
report):

- weighted Kendall tau, exactly ``scipy.stats.weightedtau(acc, score, rank=None)``: hyperbolic
  weights, elements ranked by fine-tune accuracy (ties broken by the score), so disagreement
  among the best models costs most -- the ones a search cares about (Renggli et al. 2022, Sec. 5);
- the same with scipy's default ``rank=True`` (:func:`weighted_tau_scipy_default`), the convention
  of SFDA (Shao et al., ECCV 2022) and later transferability papers, to compare with them;
- Pearson's r of the raw values.

Both are None where undefined: fewer than 2 models, or a constant accuracy or score (e.g. a task
where every model scores 1.0).
"""

from __future__ import annotations

import math

import numpy as np


def _pair(acc: object, score: object) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(acc, dtype=float).ravel()
    s = np.asarray(score, dtype=float).ravel()
    if a.shape != s.shape:
        raise ValueError(f"rank agreement: {a.size} accuracies but {s.size} scores; pass one of each per model")
    keep = np.isfinite(a) & np.isfinite(s)
    return a[keep], s[keep]


def _defined(a: np.ndarray, s: np.ndarray) -> bool:
    return a.size >= 2 and np.ptp(a) > 0 and np.ptp(s) > 0


def weighted_tau(acc: object, score: object) -> float | None:
    """``scipy.stats.weightedtau(acc, score, rank=None).statistic`` over pairs where both are
    finite; None when undefined (< 2 models, constant inputs)."""
    from scipy.stats import weightedtau

    a, s = _pair(acc, score)
    if not _defined(a, s):
        return None
    value = float(weightedtau(a, s, rank=None).statistic)
    return value if math.isfinite(value) else None


def weighted_tau_scipy_default(acc: object, score: object) -> float | None:
    """``scipy.stats.weightedtau(acc, score).statistic`` with scipy's default ``rank=True`` (the
    convention of SFDA and the transferability papers after it: importance by the ranks of both
    variables, averaged); None when undefined. Compare published numbers with this one."""
    from scipy.stats import weightedtau

    a, s = _pair(acc, score)
    if not _defined(a, s):
        return None
    value = float(weightedtau(a, s).statistic)
    return value if math.isfinite(value) else None


def pearson(acc: object, score: object) -> float | None:
    """Pearson's r over pairs where both are finite; None when undefined (< 2 models, constant
    inputs). Centred sums in float64, clipped to [-1, 1] against rounding."""
    a, s = _pair(acc, score)
    if not _defined(a, s):
        return None
    da, ds = a - a.mean(), s - s.mean()
    denom = math.sqrt(float(np.dot(da, da)) * float(np.dot(ds, ds)))
    if denom == 0.0 or not math.isfinite(denom):
        return None
    return float(np.clip(np.dot(da, ds) / denom, -1.0, 1.0))
