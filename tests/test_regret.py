"""Regret formulas (selection.regret): hand-computed values and brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from selection.regret import log_odds_regret, random_max_probabilities, relative_regret
from tests.regret_oracles import (
    best_of_top,
    expected_random_regret,
    expected_random_regret_by_budget,
    random_zero_regret_budget,
    ranking_zero_regret_budget,
    zero_regret_budget,
)


def brute_force_random_regret(accs, budget, regret_fn):
    """Average regret of the best model over every size-B subset (the definition)."""
    s_star = max(accs)
    subsets = list(itertools.combinations(accs, budget))
    return sum(float(regret_fn(s_star, max(s))) for s in subsets) / len(subsets)


def test_relative_regret_matches_formula():
    # (s* - s) / (1 - min(s*, s))
    assert relative_regret(0.9, 0.8) == pytest.approx(0.1 / 0.2)
    assert relative_regret(1.0, 0.5) == pytest.approx(1.0)
    assert relative_regret(0.6, 0.3) == pytest.approx(0.3 / 0.7)
    assert relative_regret(0.8, 0.8) == 0.0
    assert isinstance(relative_regret(0.9, 0.8), float)


def test_relative_regret_is_zero_when_both_accuracies_are_one():
    assert relative_regret(1.0, 1.0) == 0.0
    assert relative_regret(np.array([1.0, 1.0]), np.array([1.0, 0.5])).tolist() == [0.0, 1.0]


def test_relative_regret_broadcasts_over_arrays():
    out = relative_regret(0.9, np.array([0.9, 0.8, 0.7]))
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, [0.0, 0.5, 0.2 / 0.3])


def test_relative_regret_rejects_percentages():
    with pytest.raises(ValueError, match="divide percentages by 100"):
        relative_regret(90.0, 80.0)


def test_log_odds_regret_is_logit_difference():
    # logit(0.9) - logit(0.8) = ln 9 - ln 4
    assert log_odds_regret(0.9, 0.8) == pytest.approx(math.log(9) - math.log(4))
    assert log_odds_regret(0.7, 0.7) == 0.0


def test_log_odds_regret_clips_perfect_accuracy_to_stay_finite():
    eps = 1e-4
    value = log_odds_regret(1.0, 0.5, eps=eps)
    assert math.isfinite(value)
    assert value == pytest.approx(math.log((1 - eps) / eps))
    assert log_odds_regret(1.0, 1.0) == 0.0
    assert log_odds_regret(1.0, 0.0, eps=eps) == pytest.approx(2 * math.log((1 - eps) / eps))


def test_random_max_probabilities_sum_to_one_and_match_binomials():
    p = random_max_probabilities(5, 2)  # C(i-1, 1) / C(5, 2) = (i-1)/10
    np.testing.assert_allclose(p, [0.0, 0.1, 0.2, 0.3, 0.4])
    for n in range(1, 8):
        for b in range(1, n + 1):
            assert random_max_probabilities(n, b).sum() == pytest.approx(1.0)


@pytest.mark.parametrize("regret_fn", [relative_regret, log_odds_regret])
@pytest.mark.parametrize("budget", [1, 2, 3, 4, 5])
def test_expected_random_regret_equals_brute_force_over_all_subsets(budget, regret_fn):
    accs = [0.62, 0.91, 0.55, 0.78, 0.83]
    exact = expected_random_regret(np.array(accs), budget, regret_fn)
    assert exact == pytest.approx(brute_force_random_regret(accs, budget, regret_fn), abs=1e-12)


@pytest.mark.parametrize("budget", [1, 2, 3, 4, 5])
def test_expected_random_regret_with_tied_accuracies_equals_brute_force(budget):
    accs = [0.8, 0.6, 0.8, 0.6, 0.5]
    exact = expected_random_regret(accs, budget)
    assert exact == pytest.approx(brute_force_random_regret(accs, budget, relative_regret), abs=1e-12)


def test_expected_random_regret_hand_computed():
    # B = 1 over [0.9, 0.8, 0.7]: (0 + 0.1/0.2 + 0.2/0.3) / 3 = 7/18
    assert expected_random_regret([0.9, 0.8, 0.7], 1) == pytest.approx(7 / 18)
    # B = 2: best is 0.9 in 2 of 3 pairs, 0.8 in 1: (0 + 0 + 0.5) / 3
    assert expected_random_regret([0.9, 0.8, 0.7], 2) == pytest.approx(1 / 6)
    # ties: [0.8, 0.8, 0.6], B = 1: (0 + 0 + 0.2/0.4) / 3
    assert expected_random_regret([0.8, 0.8, 0.6], 1) == pytest.approx(1 / 6)


def test_expected_random_regret_is_not_regret_of_expected_accuracy():
    accs = [0.9, 0.5]
    expected_acc = float(np.mean(accs))
    assert expected_random_regret(accs, 1) == pytest.approx(0.5 * (0.4 / 0.5))
    assert expected_random_regret(accs, 1) != pytest.approx(relative_regret(0.9, expected_acc))


def test_expected_random_regret_whole_pool_or_more_is_zero():
    assert expected_random_regret([0.9, 0.8, 0.7], 3) == 0.0
    assert expected_random_regret([0.9, 0.8, 0.7], 10) == 0.0


def test_all_one_task_has_zero_regret_for_every_budget():
    for b in (1, 2, 3):
        assert expected_random_regret([1.0, 1.0, 1.0], b) == 0.0
        assert expected_random_regret([1.0, 1.0, 1.0], b, log_odds_regret) == 0.0


def test_expected_random_regret_rejects_empty_pool_and_bad_budget():
    with pytest.raises(ValueError, match="at least one model"):
        expected_random_regret([], 1)
    with pytest.raises(ValueError, match="budget"):
        expected_random_regret([0.5], 0)


def test_zero_regret_budget_is_smallest_budget_at_zero():
    assert zero_regret_budget({1: 0.3, 2: 0.0, 3: 0.0}) == 2
    assert zero_regret_budget({3: 0.0, 1: 0.2, 2: 1e-13}) == 2
    assert zero_regret_budget({"1": 0.0, "2": 0.0}) == 1


def test_zero_regret_budget_is_none_when_never_zero():
    assert zero_regret_budget({1: 0.3, 2: 0.1, 3: 1e-6}) is None
    assert zero_regret_budget({}) is None
    assert zero_regret_budget({1: None, 2: float("nan")}) is None


# ---------------------------------------------------------------------------------------------
# vectorised forms (what the report uses)


def test_best_of_top_is_the_running_maximum_per_budget():
    ranked = [0.6, 0.8, 0.7, 0.9]
    assert best_of_top(ranked, [1, 2, 3, 4]).tolist() == [0.6, 0.8, 0.8, 0.9]
    assert best_of_top(ranked, [10]).tolist() == [0.9]  # beyond the pool: the whole pool
    with pytest.raises(ValueError, match="at least 1"):
        best_of_top(ranked, [0])


def test_expected_random_regret_by_budget_matches_scalar_form_up_to_b10():
    rng = np.random.default_rng(0)
    accs = rng.uniform(0.3, 1.0, 12)
    budgets = list(range(1, 11))
    out = expected_random_regret_by_budget(accs, budgets, {"rel": relative_regret, "lo": log_odds_regret})
    for k, b in enumerate(budgets):
        assert out["rel"][k] == pytest.approx(expected_random_regret(accs, b), abs=1e-12)
        assert out["lo"][k] == pytest.approx(expected_random_regret(accs, b, log_odds_regret), abs=1e-12)
    assert np.all(np.diff(out["rel"]) <= 1e-15)  # more picks never hurt


def test_expected_random_regret_by_budget_brute_force_b10_of_11():
    accs = [0.61, 0.92, 0.55, 0.78, 0.83, 0.70, 0.66, 0.91, 0.50, 0.74, 0.88]
    out = expected_random_regret_by_budget(accs, [9, 10])["relative"]
    assert out[0] == pytest.approx(brute_force_random_regret(accs, 9, relative_regret), abs=1e-12)
    assert out[1] == pytest.approx(brute_force_random_regret(accs, 10, relative_regret), abs=1e-12)


def test_ranking_zero_regret_budget_is_position_of_first_best_model():
    assert ranking_zero_regret_budget([0.7, 0.9, 0.8]) == 2
    assert ranking_zero_regret_budget([0.9, 0.9]) == 1
    assert ranking_zero_regret_budget([0.5, 0.6, 0.7, 0.8, 0.6, 0.7, 0.6, 0.5, 0.4, 0.3, 0.95]) == 11


def test_random_zero_regret_budget_is_pool_minus_ties_plus_one():
    # expected regret is zero only once every size-B subset holds a best model
    accs = [0.9, 0.8, 0.9, 0.5]
    assert random_zero_regret_budget(accs) == 3
    for b in (1, 2):
        assert expected_random_regret(accs, b) > 0
    assert expected_random_regret(accs, 3) == 0.0
    assert random_zero_regret_budget([1.0, 1.0, 1.0]) == 1
