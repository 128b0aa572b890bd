"""Records-only strategies (selection/learners.py): the ensemble of proxies and the
leave-one-task-out records learner ``choicenet_records``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from selection.learners import (
    RIDGE,
    ensemble_table,
    fit_fold,
    prepare_folds,
    records_learner_table,
    standardise_within_task,
)
from selection.report.compute import compute_report
from selection.strategies import UnknownStrategyError, create_strategy


def _tables(seed: int = 0, models: int = 8, tasks: int = 6):
    rng = np.random.default_rng(seed)
    names, cols = [f"m{i}" for i in range(models)], [f"t{j}" for j in range(tasks)]
    quality = rng.normal(size=models)
    acc = np.clip(rng.uniform(0.3, 0.8, tasks)[None, :] + 0.05 * quality[:, None]
                  + 0.02 * rng.normal(size=(models, tasks)), 0, 1)
    truth = pd.DataFrame(acc, index=names, columns=cols)
    proxies = [pd.DataFrame(acc + s * rng.normal(size=acc.shape), index=names, columns=cols)
               for s in (0.03, 0.06)]
    return truth, proxies


def test_ensemble_is_the_mean_of_within_task_z_scores():
    truth, (a, b) = _tables()
    b.iloc[0, 0] = np.nan  # a pair without one proxy averages the other
    got = ensemble_table([a, b])
    za, zb = standardise_within_task(a), standardise_within_task(b)
    assert got.iloc[1, 2] == pytest.approx((za.iloc[1, 2] + zb.iloc[1, 2]) / 2)
    assert got.iloc[0, 0] == pytest.approx(za.iloc[0, 0])
    assert standardise_within_task(a).std(axis=0, ddof=0).to_numpy() == pytest.approx(1.0)


def test_the_held_out_tasks_results_never_reach_its_own_fold():
    """Perturb the held-out task's fine-tune accuracies (and those of no other task): its
    column of predictions must not move, while another task's column does."""
    truth, proxies = _tables()
    before = records_learner_table(proxies, truth)
    rng = np.random.default_rng(9)
    for t in truth.columns:
        changed = truth.copy()
        changed[t] = rng.uniform(0, 1, len(truth))
        after = records_learner_table(proxies, changed)
        assert np.array_equal(after[t].to_numpy(), before[t].to_numpy()), t
        other = next(u for u in truth.columns if u != t)
        assert not np.allclose(after[other].to_numpy(), before[other].to_numpy())


def test_the_held_out_tasks_accuracies_and_proxy_scores_never_reach_its_folds_fit():
    """Replace the held-out task's accuracies and every proxy score of it with noise: the
    weights its fold fits are bit-identical (its proxy scores are the inputs of its prediction
    only, after the fit)."""
    truth, proxies = _tables()
    rng = np.random.default_rng(4)
    for t in truth.columns:
        before = fit_fold(*prepare_folds(proxies, truth), list(truth.columns).index(t), RIDGE)[0]
        changed_truth = truth.copy()
        changed_truth[t] = rng.uniform(0, 1, len(truth))
        changed = [p.copy() for p in proxies]
        for p in changed:
            p[t] = rng.normal(size=len(truth))
        after = fit_fold(*prepare_folds(changed, changed_truth), list(truth.columns).index(t), RIDGE)[0]
        assert np.array_equal(after, before), t


def test_records_learner_beats_random_on_tables_with_a_model_effect():
    truth, proxies = _tables(models=10, tasks=12)
    rows = [(m, t, "finetune_test_acc", truth.loc[m, t]) for m in truth.index for t in truth]
    rows += [(m, t, f"proxy/p{k}", p.loc[m, t]) for k, p in enumerate(proxies)
             for m in truth.index for t in truth]
    report = compute_report(pd.DataFrame(rows, columns=["model", "task", "metric", "value"]),
                            noise_draws=2000, timings=True)
    assert {"ensemble:all", "choicenet_records"} <= set(report["strategy_order"])
    assert report["better_than"]["1"]["choicenet_records"]["random"] > 0.95
    assert report["better_than"]["1"]["ensemble:all"]["random"] > 0.95
    assert report["strategy_seconds"]["choicenet_records"] >= 0


def test_report_gives_the_learners_weighted_tau_on_their_own_scores_and_no_mse():
    from scipy.stats import weightedtau

    truth, proxies = _tables(models=9, tasks=5)
    rows = [(m, t, "finetune_test_acc", truth.loc[m, t]) for m in truth.index for t in truth]
    rows += [(m, t, f"proxy/p{k}", p.loc[m, t]) for k, p in enumerate(proxies)
             for m in truth.index for t in truth]
    report = compute_report(pd.DataFrame(rows, columns=["model", "task", "metric", "value"]), noise_draws=200)
    learner = records_learner_table(proxies, truth)
    ensemble = ensemble_table(proxies)
    for name, table in (("choicenet_records", learner), ("ensemble:all", ensemble)):
        block = report["choicenet"][name]
        assert block["mse"] is None and block["n_pairs"] == truth.size
        for t in truth.columns:
            expected = weightedtau(truth[t].to_numpy(), table.loc[truth.index, t].to_numpy(), rank=None).statistic
            assert block["weighted_tau"][t] == pytest.approx(expected)


def test_ensemble_of_listed_proxies_and_an_unknown_proxy_is_a_named_error():
    truth, (a, b) = _tables()
    scores = {"finetune_test_acc": truth, "proxy/knn": a, "proxy/logme": b}
    one = create_strategy("ensemble:knn", scores)
    assert one.rank_groups("t0", list(truth.index)) == create_strategy(
        "proxy/knn", scores).rank_groups("t0", list(truth.index))
    with pytest.raises(UnknownStrategyError, match="no proxy.*leep.*known: knn, logme"):
        create_strategy("ensemble:knn+leep", scores)
