"""The noise of the ground truth and the intervals of the report (selection/noise.py), on
synthetic tables whose noise is known."""

from __future__ import annotations

from math import comb

import numpy as np
import pandas as pd
import pytest

from selection.noise import (
    TaskEvidence,
    regret_draws,
    resample_task,
    strategy_intervals,
    task_noise,
)
from selection.records import RecordsError
from selection.regret import relative_regret
from selection.report.compute import compute_report


def _exact_p_first_better(n_plus: int, n_minus: int, n: int) -> float:
    """P(A's resampled accuracy > B's) + 1/2 P(equal) when the n shared test examples are drawn
    with replacement: A alone right on n_plus of them, B alone on n_minus (multinomial sum)."""
    p_plus, p_minus = n_plus / n, n_minus / n
    p_zero = 1 - p_plus - p_minus
    total = 0.0
    for x in range(n + 1):
        for y in range(n + 1 - x):
            pmf = (comb(n, x) * comb(n - x, y) * p_plus ** x * p_minus ** y
                   * p_zero ** (n - x - y))
            total += pmf if x > y else 0.5 * pmf if x == y else 0.0
    return total


def test_p_best_sums_to_one_and_matches_the_closed_form_for_two_models():
    n = 40
    a = np.zeros(n, bool)
    b = np.zeros(n, bool)
    a[:26] = True           # A right on 26, B on 24; they disagree on 8 examples: 5 vs 3
    b[:21] = True
    b[26:29] = True
    ev = TaskEvidence(["a", "b"], [np.array([a.mean()]), np.array([b.mean()])],
                      [a[None, :], b[None, :]])
    p_best, floor, acc = task_noise("t", ev, np.array([a.mean(), b.mean()]))
    assert sum(p_best.values()) == pytest.approx(1.0, abs=1e-12)
    exact = _exact_p_first_better(5, 3, n)
    assert p_best["a"] == pytest.approx(exact, abs=0.015)  # 10,000 draws: SE 0.005
    # the noise floor is the mean regret of the observed best (a) under the same draws
    assert floor == pytest.approx(float(np.mean(relative_regret(acc.max(1), acc[:, 0]))))
    assert 0 < floor < 0.1


def test_p_best_sums_to_one_per_task_in_the_report_and_is_null_without_noise():
    rng = np.random.default_rng(0)
    rows, results = [], {}
    for t in ("t1", "t2"):
        results[t] = {}
        for m in ("m1", "m2", "m3"):
            c = rng.random((2, 200)) < rng.uniform(0.6, 0.9)
            results[t][m] = c
            rows += [(m, t, "finetune_test_acc", float(c[r].mean())) for r in range(2)]
    rows += [("m1", "t3", "finetune_test_acc", 0.5), ("m2", "t3", "finetune_test_acc", 0.6)]
    rep = compute_report(pd.DataFrame(rows, columns=["model", "task", "metric", "value"]),
                         test_results=results, noise_draws=2000)
    for t in ("t1", "t2"):
        assert sum(rep["p_best"][t].values()) == pytest.approx(1.0)
        assert rep["noise_source"][t] == "examples+repetitions"
    assert rep["p_best"]["t3"] is None and rep["noise_floor"]["t3"] is None  # 1 rep, no examples
    assert rep["noise_source"]["t3"] is None
    assert rep["above_noise_floor"]["random"]["1"]["t3"] is None


def test_repetitions_alone_resample_the_median_of_drawn_repetitions():
    ev = TaskEvidence(["a", "b"], [np.array([0.80, 0.70]), np.array([0.74, 0.74])])
    acc = resample_task(ev, 20_000, np.random.default_rng(1))
    # a's two draws: both 0.8 (1/4), both 0.7 (1/4), one of each (1/2, median 0.75)
    values, counts = np.unique(acc[:, 0].round(6), return_counts=True)
    assert values.tolist() == [0.7, 0.75, 0.8]
    assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.015)
    assert np.all(acc[:, 1] == 0.74)
    p_best, _, _ = task_noise("t", ev, np.array([0.75, 0.74]), draws=20_000)
    assert p_best["a"] == pytest.approx(0.75, abs=0.015)  # a best unless both draws are 0.7


def _table(rng: np.random.Generator, tasks: int, models: int = 5):
    acc = rng.uniform(0.6, 0.95, size=(tasks, models))
    return acc, acc + rng.normal(0.0, 0.05, size=(tasks, models))  # a proxy that errs


@pytest.mark.slow
def test_interval_covers_the_true_mean_regret_in_93_to_97_percent_of_400_tables():
    """Tasks drawn from a known population (5 models, accuracies uniform in [0.6, 0.95], a proxy
    with Gaussian error): the interval of the proxy's mean regret at B = 1 over 40 tasks must
    cover the population's mean regret (Monte Carlo over 400,000 tasks) about 95% of the time."""
    rng = np.random.default_rng(123)
    acc, score = _table(rng, 400_000)
    true = float(np.mean(relative_regret(acc.max(1), acc[np.arange(len(acc)), score.argmax(1)])))
    tasks = [f"t{i}" for i in range(40)]
    hits = 0
    for k in range(400):
        acc, score = _table(rng, len(tasks))
        per_task, point = {"proxy": {}}, {"proxy": [np.empty(len(tasks))]}
        for i, t in enumerate(tasks):
            r = regret_draws([(1.0, [[j] for j in np.argsort(-score[i])])], acc[i][None, :], [1])
            per_task["proxy"][t] = np.broadcast_to(r, (10_000, 1))
            point["proxy"][0][i] = r[0, 0]
        ci = strategy_intervals(per_task, tasks, [1], point, seed=k)["ci"]["proxy"]["1"]
        hits += ci["low"] <= true <= ci["high"]
    assert 0.93 <= hits / 400 <= 0.97, hits / 400
    print(f"coverage {hits / 400:.4f}")


def test_better_than_is_one_half_for_identical_strategies_and_orders_different_ones():
    rng = np.random.default_rng(2)
    tasks = [f"t{i}" for i in range(12)]
    per_task, point = {"a": {}, "a_copy": {}, "worse": {}}, {"a": [[]], "a_copy": [[]], "worse": [[]]}
    for t in tasks:
        base = rng.uniform(0.5, 0.9, size=4)  # four models, measured with noise of 1 point
        acc = np.clip(base + rng.normal(0.0, 0.01, size=(500, 4)), 0.0, 1.0)
        good = regret_draws([(1.0, [[int(np.argmax(base))]])], acc, [1])
        bad = regret_draws([(1.0, [[int(np.argmin(base))]])], acc, [1])
        for name, r in (("a", good), ("a_copy", good), ("worse", bad)):
            per_task[name][t] = r
            point[name][0].append(float(r.mean()))
    out = strategy_intervals(per_task, tasks, [1], point, draws=500)
    assert out["better_than"]["1"]["a"]["a_copy"] == 0.5
    assert out["better_than"]["1"]["a_copy"]["a"] == 0.5
    assert out["better_than"]["1"]["a"]["worse"] > 0.99
    assert out["better_than"]["1"]["worse"]["a"] < 0.01
    assert out["within_noise"]["1"] == ["a", "a_copy"]  # worse is beaten at P >= 0.95


def test_regret_draws_are_the_regret_of_the_expected_pick():
    acc = np.array([[0.9, 0.8, 0.7, 0.6]])
    # B = 1 cuts the tie {1, 2, 3}: each is first with probability 1/3, s(S) = 0.7
    r = regret_draws([(1.0, [[1, 2, 3], [0]])], acc, [1, 3, 4])[0]
    assert r[0] == pytest.approx(relative_regret(0.9, 0.7))
    assert r[1] == pytest.approx(relative_regret(0.9, 0.8)) and r[2] == 0.0
    # a mixture: half the time [0] first, half the time [3] first
    half = regret_draws([(0.5, [[0], [1, 2, 3]]), (0.5, [[3], [0, 1, 2]])], acc, [1])[0]
    assert half[0] == pytest.approx(relative_regret(0.9, (0.9 + 0.6) / 2))


def test_test_results_that_do_not_reproduce_the_records_are_an_error_naming_the_pair():
    rows = [("m1", "t", "finetune_test_acc", 0.5), ("m2", "t", "finetune_test_acc", 0.75)]
    results = {"t": {"m1": np.array([[1, 0, 1, 0]]), "m2": np.array([[1, 1, 1, 0]])}}
    df = pd.DataFrame(rows, columns=["model", "task", "metric", "value"])
    assert compute_report(df, test_results=results, noise_draws=200)["p_best"]["t"]
    results["t"]["m2"] = np.array([[1, 1, 0, 0]])
    with pytest.raises(RecordsError, match="'m2' on 't'.*another run"):
        compute_report(df, test_results=results, noise_draws=200)
    results["t"]["m2"] = np.array([[1, 1, 1, 0, 1]])
    with pytest.raises(RecordsError, match="share its test set"):
        compute_report(df, test_results=results, noise_draws=200)


def test_regret_draws_match_the_report_outcomes_on_300_random_tied_rankings():
    from selection.outcomes import ranking_outcomes, relative

    rng = np.random.default_rng(3)
    for _ in range(300):
        n = int(rng.integers(2, 9))
        acc = rng.choice([0.5, 0.6, 0.7, 0.8, 0.9], size=n)  # ties in accuracy too
        cuts = sorted(set(rng.integers(1, n, size=rng.integers(0, n)).tolist()))
        groups = [g.tolist() for g in np.split(rng.permutation(n), cuts) if len(g)]
        budgets = list(range(1, n + 2))
        got = regret_draws([(1.0, groups)], acc[None, :], budgets)[0]
        exact = [relative(acc.max(), o)
                 for o in ranking_outcomes([acc[g] for g in groups], budgets)]
        assert got == pytest.approx(exact, abs=1e-12)


def test_resampling_test_examples_in_blocks_of_draws_gives_the_numbers_of_one_block():
    """The examples' counts per draw are built a block of draws at a time (memory); the
    accuracies are those of the counts of all draws at once, bit for bit."""
    from selection.noise import DRAW_BLOCK, TaskEvidence, resample_task, task_rng

    rng = np.random.default_rng(5)
    correct = [rng.random((3, 301)) < p for p in (0.6, 0.7, 0.8, 0.9)]
    ev = TaskEvidence(["a", "b", "c", "d"], [c.mean(axis=1) for c in correct], correct)
    draws = 2 * DRAW_BLOCK + 17  # blocks of unequal size
    got = resample_task(ev, draws, task_rng(0, "t"))
    stream = task_rng(0, "t")
    n = 301
    idx = stream.integers(0, n, size=(draws, n), dtype=np.int32)
    idx += (n * np.arange(draws, dtype=np.int32))[:, None]
    counts = np.bincount(idx.ravel(), minlength=draws * n).reshape(draws, n)
    per_rep = (counts @ np.concatenate(correct).T) / n  # exact integers, then one division
    expected = np.column_stack([np.median(np.take_along_axis(
        per_rep[:, 3 * i:3 * i + 3], stream.integers(0, 3, size=(draws, 3)), axis=1), axis=1)
        for i in range(4)])
    assert np.array_equal(got, expected)
