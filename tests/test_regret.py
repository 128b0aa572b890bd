"""Regret formulas (selection.regret) and the random strategy's expected pick
(selection.outcomes): hand-computed values and brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from selection.outcomes import best_of_random_subset, log_odds, relative
from selection.regret import log_odds_regret, random_max_probabilities, relative_regret


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


def brute_force_expected_best(accs, budget) -> float:
    """E[max of a uniformly random size-B subset], by enumerating every subset (the definition)."""
    subsets = list(itertools.combinations(accs, min(budget, len(accs))))
    return sum(max(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("budget", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("accs", [[0.62, 0.91, 0.55, 0.78, 0.83], [0.8, 0.6, 0.8, 0.6, 0.5]])
def test_random_expected_best_accuracy_equals_brute_force_over_all_subsets(accs, budget):
    outcome = best_of_random_subset(accs, budget)
    assert outcome.mean == pytest.approx(brute_force_expected_best(accs, budget), abs=1e-12)
    assert outcome.probs.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("regret_fn, measure", [(relative_regret, relative),
                                                (log_odds_regret, log_odds)])
@pytest.mark.parametrize("budget", [1, 2, 3])
def test_random_regret_is_the_regret_of_the_expected_pick(regret_fn, measure, budget):
    """Sec. 3: s(S) is the expected best accuracy; the regret is taken of it."""
    accs = [0.62, 0.91, 0.55, 0.78, 0.83]
    expected = brute_force_expected_best(accs, budget)
    assert measure(max(accs), best_of_random_subset(accs, budget)) == pytest.approx(
        float(regret_fn(max(accs), expected)), abs=1e-12)


def test_random_regret_hand_computed_and_not_the_mean_of_the_ratios():
    # B = 1 over [0.9, 0.8, 0.7]: E[s] = 0.8, (0.9 - 0.8) / (1 - 0.8)
    assert relative(0.9, best_of_random_subset([0.9, 0.8, 0.7], 1)) == pytest.approx(0.5)
    # B = 2: best is 0.9 in 2 of 3 pairs, 0.8 in 1: E[s] = 26/30
    assert relative(0.9, best_of_random_subset([0.9, 0.8, 0.7], 2)) == pytest.approx(
        (0.9 - 26 / 30) / (1 - 26 / 30))
    # [0.9, 0.5], B = 1: the regret of E[s] = 0.7 (2/3), not the mean of the ratios (0.4)
    got = relative(0.9, best_of_random_subset([0.9, 0.5], 1))
    assert got == pytest.approx(0.2 / 0.3) and got != pytest.approx(0.5 * (0.4 / 0.5))


def test_random_regret_of_the_whole_pool_or_all_ones_is_zero():
    assert relative(0.9, best_of_random_subset([0.9, 0.8, 0.7], 3)) == 0.0
    assert relative(0.9, best_of_random_subset([0.9, 0.8, 0.7], 10)) == 0.0
    for b in (1, 2, 3):
        assert relative(1.0, best_of_random_subset([1.0, 1.0, 1.0], b)) == 0.0
        assert log_odds(1.0, best_of_random_subset([1.0, 1.0, 1.0], b)) == 0.0
