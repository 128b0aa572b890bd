"""Ties, expectations and comparisons (selection.outcomes, selection.scoring) on hand-computed
tables: s(S) of a tied ranking is the expected best accuracy over the orders of the tied models
and every measure is taken of it (checked against brute force), a constant proxy scores exactly
as random, Figure 7's probability, absolute regret, deltas of the expected picks and their
antisymmetry, Appendix G's budgets, both weighted-tau conventions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import weightedtau

from selection.outcomes import (
    log_odds,
    log_odds_delta,
    ranking_outcomes,
    relative,
    relative_delta,
    zero_regret_budget,
)
from selection.rank_agreement import weighted_tau, weighted_tau_scipy_default
from selection.regret import log_odds_regret, relative_regret
from selection.report.compute import compute_report


def expected_best(groups: list[list[float]], budget: int) -> float:
    """E[best of the first B] over every order of every tie group (the definition of s(S))."""
    values = []
    for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
        ranking = [a for order in orders for a in order]
        values.append(max(ranking[:budget]))
    return float(np.mean(values))


def brute_force(groups: list[list[float]], budget: int, s_star: float, fn=relative_regret) -> float:
    """The regret of the expected best pick over every order of every tie group."""
    return float(fn(s_star, expected_best(groups, budget)))


@pytest.mark.parametrize("groups", [
    [[0.6], [0.9, 0.5, 0.7], [0.95]],
    [[0.8, 0.8], [0.6, 0.99, 0.7, 0.2]],
    [[0.3, 0.4, 0.5, 0.6, 0.7]],
    [[0.5], [0.4], [0.7, 0.7]],
])
def test_tied_rankings_score_the_exact_expectation_over_tie_orders(groups):
    s_star = max(max(g) for g in groups)
    n = sum(len(g) for g in groups)
    budgets = list(range(1, n + 1))
    for b, outcome in zip(budgets, ranking_outcomes(groups, budgets)):
        assert relative(s_star, outcome) == pytest.approx(brute_force(groups, b, s_star), abs=1e-12)
        assert outcome.probs.sum() == pytest.approx(1.0)
        # a tied ranking's log-odds regret is the logit of the expectation
        assert log_odds(s_star, outcome) == pytest.approx(
            brute_force(groups, b, s_star, log_odds_regret), abs=1e-9)


def test_zero_regret_budget_needs_every_draw_to_hold_a_best_model():
    assert zero_regret_budget([[0.6], [0.9, 0.5, 0.7], [0.95]], 0.95) == 5
    assert zero_regret_budget([[0.6], [0.9, 0.95, 0.7]], 0.95) == 4  # all of the group
    assert zero_regret_budget([[0.95, 0.95, 0.1]], 0.95) == 2  # two of three are best
    assert zero_regret_budget([[0.95], [0.1]], 0.95) == 1


def long_records(**metrics) -> pd.DataFrame:
    rows = [(m, t, metric.replace("__", "/"), v) for metric, by_task in metrics.items()
            for t, by_model in by_task.items() for m, v in by_model.items()]
    return pd.DataFrame(rows, columns=["model", "task", "metric", "value"])


ACC = {"t1": {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.5},
       "t2": {"a": 0.5, "b": 0.6, "c": 0.4, "d": 0.65}}
CONSTANT = {"t1": {m: 0.3 for m in "abcd"}, "t2": {m: -1.0 for m in "abcd"}}
LINEAR = {"t1": {"a": 0.2, "b": 0.9, "c": 0.9, "d": 0.1}, "t2": {"a": 0.5, "b": 0.1, "c": 0.4,
                                                                  "d": 0.3}}
META = pd.DataFrame({"imagenet_acc": [0.70, 0.80, 0.75, np.nan]},
                    index=pd.Index(list("abcd"), name="model"))


@pytest.fixture(scope="module")
def report():
    return compute_report(long_records(finetune_test_acc=ACC, proxy__constant=CONSTANT,
                                       proxy__linear=LINEAR), META, max_budget=4)


def test_a_constant_proxy_scores_exactly_as_random(report):
    for b in report["budgets"]:
        for t in report["tasks"]:
            for kind in ("strategies", "absolute", "log_odds"):
                constant = report[kind]["proxy/constant"][str(b)]["per_task"][t]
                assert constant == pytest.approx(report[kind]["random"][str(b)]["per_task"][t],
                                                 abs=1e-15)
            accs = list(ACC[t].values())
            assert report["strategies"]["random"][str(b)]["per_task"][t] == pytest.approx(
                brute_force([accs], b, max(accs)))


def test_tied_proxy_scores_match_brute_force_in_the_report(report):
    # linear on t1: b and c tie at the top (0.8 and 0.7), then a (0.9), then d
    groups = [[0.8, 0.7], [0.9], [0.5]]
    for b in (1, 2, 3):
        assert report["strategies"]["proxy/linear"][str(b)]["per_task"]["t1"] == pytest.approx(
            brute_force(groups, b, 0.9))
    # B = 1 picks b or c: s(S) = 0.75, and the regret is of it (not the mean of two regrets)
    assert report["strategies"]["proxy/linear"]["1"]["per_task"]["t1"] == pytest.approx(
        (0.9 - 0.75) / (1 - 0.75))
    assert report["log_odds"]["proxy/linear"]["1"]["per_task"]["t1"] == pytest.approx(
        math.log(0.9 / 0.1) - math.log(0.75 / 0.25))


def test_absolute_regret_is_s_star_minus_the_expected_pick(report):
    # task_agnostic picks b (0.80) on every task: t1 0.9 - 0.8, t2 0.65 - 0.6
    assert report["absolute"]["task_agnostic"]["1"]["per_task"] == pytest.approx(
        {"t1": 0.1, "t2": 0.05})
    assert report["absolute"]["proxy/linear"]["1"]["per_task"]["t1"] == pytest.approx(
        0.9 - (0.8 + 0.7) / 2)


def test_deltas_compare_hybrid_and_task_agnostic_with_each_proxy_and_are_antisymmetric(report):
    assert set(report["deltas"]) == {"hybrid:proxy/constant vs proxy/constant",
                                     "task_agnostic vs proxy/constant",
                                     "hybrid:proxy/linear vs proxy/linear",
                                     "task_agnostic vs proxy/linear"}
    # t2, B = 1: task_agnostic picks b (0.6), linear picks a (0.5): (0.6 - 0.5) / (1 - 0.5)
    assert report["deltas"]["task_agnostic vs proxy/linear"]["1"]["per_task"]["t2"] == \
        pytest.approx(0.2)
    assert report["log_odds_deltas"]["task_agnostic vs proxy/linear"]["1"]["per_task"]["t2"] == \
        pytest.approx(math.log(0.6 / 0.4) - math.log(0.5 / 0.5))
    # t1, B = 1: task_agnostic picks b (0.8); linear picks b or c: s(S) = 0.75
    assert report["deltas"]["task_agnostic vs proxy/linear"]["1"]["per_task"]["t1"] == \
        pytest.approx((0.8 - 0.75) / (1 - 0.75))
    outcomes = ranking_outcomes([[0.8, 0.7], [0.9], [0.5]], [1, 2])
    other = ranking_outcomes([[0.5], [0.9], [0.8, 0.7]], [1, 2])
    for a, b in zip(outcomes, other):
        assert relative_delta(a, b) == pytest.approx(-relative_delta(b, a))
        assert log_odds_delta(a, b) == pytest.approx(-log_odds_delta(b, a))
    one = ranking_outcomes([[1.0]], [1])[0]
    assert relative_delta(one, one) == 0.0  # both 1: 0, not 0/0


def test_appendix_g_budgets_of_the_oracle_each_proxy_and_task_agnostic(report):
    table = report["appendix_g"]["all"]
    assert set(table["t1"]) == {"task_agnostic_oracle", "proxy/constant", "proxy/linear",
                                "task_agnostic"}
    # t1: linear ranks {b, c}, a, d: the best (a) needs B = 3; constant: every draw at B = 4
    assert table["t1"]["proxy/linear"] == 3 and table["t1"]["proxy/constant"] == 4
    # task_agnostic: b (0.8), c (0.75), a (0.7), d: a at B = 3 on t1; d (0.65) at B = 4 on t2
    assert table["t1"]["task_agnostic"] == 3 and table["t2"]["task_agnostic"] == 4
    # oracle by mean accuracy: a 0.7, b 0.7 (tie), d 0.575, c 0.55: on t1 a in the first group
    assert table["t1"]["task_agnostic_oracle"] == 2
    assert report["zero_regret_budget_full"]["proxy/linear"]["t1"] == 3


def test_appendix_g_covers_every_named_pool():
    rep = compute_report(long_records(finetune_test_acc=ACC, proxy__linear=LINEAR), META,
                         pools={"small": ["b", "c", "d"]})
    assert set(rep["appendix_g"]) == {"all", "small"}
    # t1: b (0.8) is the best of the three, tied with c on linear: every draw holds it at B = 2
    assert rep["appendix_g"]["small"]["t1"]["proxy/linear"] == 2
    assert rep["appendix_g"]["small"]["t2"]["task_agnostic"] == 3  # b, c, then d (the best)


@pytest.mark.parametrize("acc, score", [
    ([0.9, 0.8, 0.7, 0.6, 0.5], [0.5, 0.9, 0.7, 0.1, 0.3]),
    ([0.5, 0.6, 0.7], [3.0, -1.0, 2.0]),
    ([0.2, 0.9, 0.4, 0.4, 0.8, 0.1], [0.2, 0.8, 0.5, 0.5, 0.1, 0.3]),
])
def test_both_weighted_tau_conventions_are_scipys(acc, score):
    assert weighted_tau(acc, score) == pytest.approx(weightedtau(acc, score, rank=None).statistic)
    assert weighted_tau_scipy_default(acc, score) == pytest.approx(weightedtau(acc, score).statistic)
    assert weighted_tau([0.5, 0.5], [1, 2]) is None and weighted_tau_scipy_default([1], [2]) is None


def test_the_report_carries_both_tau_conventions(report):
    acc, lin = list(ACC["t2"].values()), list(LINEAR["t2"].values())
    assert report["weighted_tau"]["proxy/linear"]["t2"] == pytest.approx(
        weightedtau(acc, lin, rank=None).statistic)
    assert report["weighted_tau_scipy_default"]["proxy/linear"]["t2"] == pytest.approx(
        weightedtau(acc, lin).statistic)
