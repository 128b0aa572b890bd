"""Independent implementations of the regret quantities, kept as the tests' oracles (production
computes them through :mod:`selection.outcomes`): each is the textbook formula, written once
more so a test can hold the two against each other and against brute-force enumeration."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from selection.regret import ZERO, ArrayLike, random_max_probabilities, relative_regret


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
        if np.isfinite(v) and abs(v) <= ZERO and (best is None or b < best):
            best = b
    return best


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
