"""Regret: how much accuracy a model-search strategy leaves on the table (Renggli et al. 2022).

A strategy picks a set S of B models (the budget) from the pool for a task t. With s(m, t) the
fine-tune test accuracy, s(S) = max over S of s(m, t) and the oracle s* = max over the pool:

- relative regret   r = (s* - s(S)) / (1 - min(s*, s(S)))   (0 when both are 1);
- log-odds regret   logit(s*) - logit(s(S));
- :func:`random_max_probabilities`: the distribution of the best of a uniformly random size-B
  subset, which every tie group cut by a budget follows (:mod:`selection.outcomes`).

The expectations over a strategy's randomness (ties, random subsets) are in
:mod:`selection.outcomes`; the bootstrap's vectorised form in :mod:`selection.noise`.

All functions take accuracies as fractions in [0, 1] and work on floats and numpy arrays.
"""

from __future__ import annotations

from math import comb

import numpy as np

from whichmodel.accuracy import check_accuracies

ArrayLike = float | np.ndarray
ZERO = 1e-12  # a regret (or a difference of accuracies) at or below this counts as zero


def _as_fractions(name: str, value: object) -> np.ndarray:
    return check_accuracies(value, name)


def _scalar_or_array(arr: np.ndarray) -> ArrayLike:
    return float(arr) if arr.ndim == 0 else arr


def relative_regret(s_star: ArrayLike, s_sel: ArrayLike) -> ArrayLike:
    """Relative regret (s* - s(S)) / (1 - min(s*, s(S))); 0 when s* = s(S) = 1.

    The denominator is the error rate left to recover, so closing half the remaining error counts
    the same on an easy task as on a hard one. Broadcasts over numpy arrays; floats in, float out.
    """
    star = _as_fractions("s_star", s_star)
    sel = _as_fractions("s_sel", s_sel)
    return _scalar_or_array(np.asarray(relative_regret_unchecked(star, sel), dtype=float))


def relative_regret_unchecked(star: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """:func:`relative_regret` of arrays already known to be fractions (no input check: the
    bootstrap's hot loop, :mod:`selection.noise`, calls it on millions of values)."""
    denom = 1.0 - np.minimum(star, sel)
    return np.where(denom == 0.0, 0.0, (star - sel) / np.where(denom == 0.0, 1.0, denom))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def log_odds_regret(s_star: ArrayLike, s_sel: ArrayLike, eps: float = 1e-4) -> ArrayLike:
    """Log-odds regret logit(s*) - logit(s(S)).

    Accuracies are clipped to [eps, 1 - eps] first: logit(0) = -inf and logit(1) = +inf, so a
    perfect (or zero) accuracy, which VTAB-1k test sets do produce, would otherwise make the
    regret infinite or undefined (inf - inf). With the default eps = 1e-4 the largest possible
    value is 2 * logit(1 - 1e-4) ~ 18.4.
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"log_odds_regret: eps={eps!r} must lie in (0, 0.5)")
    star = np.clip(_as_fractions("s_star", s_star), eps, 1.0 - eps)
    sel = np.clip(_as_fractions("s_sel", s_sel), eps, 1.0 - eps)
    return _scalar_or_array(np.asarray(_logit(star) - _logit(sel), dtype=float))


def random_max_probabilities(n: int, budget: int) -> np.ndarray:
    """P(the best of a uniformly random size-B subset is the i-th smallest of n), i = 1..n.

    P_i = C(i - 1, B - 1) / C(n, B): the subset holds a_(i) and B - 1 of the i - 1 smaller ones.
    Exact integer binomials, so large pools do not lose precision. ``budget`` > n is clipped to n.
    """
    if n < 1:
        raise ValueError("random_max_probabilities: the pool is empty; need at least one model")
    if budget < 1:
        raise ValueError(f"random_max_probabilities: budget={budget!r} must be at least 1")
    b = min(int(budget), int(n))
    total = comb(n, b)
    return np.array([comb(i - 1, b - 1) / total for i in range(1, n + 1)], dtype=float)
