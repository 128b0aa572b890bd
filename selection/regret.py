"""Regret: how much accuracy a model-search strategy leaves on the table (Renggli et al. 2022).

A strategy picks a set S of B models (the budget) from the pool for a task t. With s(m, t) the
fine-tune test accuracy, s(S) = max over S of s(m, t) and the oracle s* = max over the pool:

- relative regret   r = (s* - s(S)) / (1 - min(s*, s(S)))   (0 when both are 1);
- log-odds regret   logit(s*) - logit(s(S));
- the random strategy's *expected* regret over all size-B subsets, computed exactly
  (:func:`expected_random_regret`), not the regret of the expected accuracy;
- the smallest budget with zero regret (:func:`zero_regret_budget` over reported budgets;
  :func:`ranking_zero_regret_budget` and :func:`random_zero_regret_budget` over the whole pool).

Vectorised forms for the report, one call per task for every budget: :func:`best_of_top` (s(S)
of a ranking for each B) and :func:`expected_random_regret_by_budget`.

All functions take accuracies as fractions in [0, 1] and work on floats and numpy arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from math import comb

import numpy as np

from whichmodel.accuracy import check_accuracies

ArrayLike = float | np.ndarray
ZERO_TOLERANCE = 1e-12


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


def expected_random_regret(
    accs: np.ndarray | list[float],
    budget: int,
    regret_fn: Callable[[ArrayLike, ArrayLike], ArrayLike] = relative_regret,
) -> float:
    """Exact expected regret of picking B models uniformly at random from the pool.

    Sort the pool's accuracies ascending a_(1) <= ... <= a_(n); the subset's best model is a_(i)
    with probability C(i - 1, B - 1) / C(n, B), so E[regret] = sum_i P_i * regret(s*, a_(i)).
    Ties need no special care: tied models give the same regret whichever of them is "the max".
    This is the expected regret, not the regret of the expected best accuracy (regret is not
    linear in s(S)). A budget larger than the pool picks the whole pool: regret 0.
    """
    a = np.sort(np.asarray(accs, dtype=float).ravel())
    if a.size == 0:
        raise ValueError("expected_random_regret: the pool has no accuracies; need at least one model")
    if not np.all(np.isfinite(a)):
        raise ValueError("expected_random_regret: accuracies must be finite; drop models without a value first")
    p = random_max_probabilities(a.size, budget)
    regrets = np.asarray(regret_fn(a[-1], a), dtype=float)
    return float(np.dot(p, regrets))


def zero_regret_budget(regrets_by_budget: Mapping[int, float | None]) -> int | None:
    """Smallest budget B whose regret is 0 (within 1e-12); None if no budget reaches 0.

    Keys may be ints or int-like strings (the JSON form); None/NaN regrets never count as zero.
    """
    best: int | None = None
    for key, value in regrets_by_budget.items():
        try:
            b = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"zero_regret_budget: budget key {key!r} is not an integer") from None
        if value is None:
            continue
        v = float(value)
        if np.isfinite(v) and abs(v) <= ZERO_TOLERANCE and (best is None or b < best):
            best = b
    return best


# ----------------------------------------------------------------------------------------------
# vectorised forms, used by the report (one call per task, every budget at once)


def best_of_top(ranked_accs: np.ndarray | list[float], budgets: list[int] | np.ndarray) -> np.ndarray:
    """s(S) of a ranking for each budget: the best accuracy among its first B models.

    ``ranked_accs`` are the pool's accuracies in the strategy's order; a budget larger than the
    pool takes the whole pool.
    """
    a = np.asarray(ranked_accs, dtype=float).ravel()
    if a.size == 0:
        raise ValueError("best_of_top: the ranking is empty; need at least one model")
    b = np.asarray(budgets, dtype=int)
    if b.size and b.min() < 1:
        raise ValueError(f"best_of_top: budgets {b.tolist()} must all be at least 1")
    return np.maximum.accumulate(a)[np.minimum(b, a.size) - 1]


def random_max_probability_matrix(n: int, budgets: list[int] | np.ndarray) -> np.ndarray:
    """Rows of :func:`random_max_probabilities` for each budget: shape (len(budgets), n)."""
    return np.stack([random_max_probabilities(n, int(b)) for b in budgets]) if len(budgets) else np.zeros((0, n))


def expected_random_regret_by_budget(
    accs: np.ndarray | list[float],
    budgets: list[int] | np.ndarray,
    regret_fns: Mapping[str, Callable[[ArrayLike, ArrayLike], ArrayLike]] | None = None,
) -> dict[str, np.ndarray]:
    """:func:`expected_random_regret` for every budget and every regret function at once.

    Returns ``{name: array over budgets}``; ``regret_fns`` defaults to ``{"relative":
    relative_regret}``. The probabilities are computed once per pool and shared.
    """
    a = np.sort(np.asarray(accs, dtype=float).ravel())
    if a.size == 0:
        raise ValueError("expected_random_regret_by_budget: the pool has no accuracies; need at least one model")
    if not np.all(np.isfinite(a)):
        raise ValueError("expected_random_regret_by_budget: accuracies must be finite; drop models without a "
                         "value first")
    fns = regret_fns if regret_fns is not None else {"relative": relative_regret}
    p = random_max_probability_matrix(a.size, budgets)
    return {name: p @ np.asarray(fn(a[-1], a), dtype=float) for name, fn in fns.items()}


def ranking_zero_regret_budget(ranked_accs: np.ndarray | list[float]) -> int:
    """Smallest B at which a ranking has zero regret over the whole pool: 1 + the position of the
    first model with the pool's best accuracy. Always defined (B = pool size picks everything)."""
    a = np.asarray(ranked_accs, dtype=float).ravel()
    if a.size == 0:
        raise ValueError("ranking_zero_regret_budget: the ranking is empty; need at least one model")
    return int(np.flatnonzero(a >= a.max())[0]) + 1


def random_zero_regret_budget(accs: np.ndarray | list[float]) -> int:
    """Smallest B at which random selection's *expected* regret is zero: n - k + 1, where k models
    tie for the best accuracy (only then does every size-B subset hold one of them)."""
    a = np.asarray(accs, dtype=float).ravel()
    if a.size == 0:
        raise ValueError("random_zero_regret_budget: the pool is empty; need at least one model")
    return int(a.size - np.count_nonzero(a >= a.max()) + 1)
