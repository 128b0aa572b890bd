"""Budgeted search: ASHA over fine-tune steps ranks models and reports the steps it saved."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sweeps.search import rank_search, summarize_search


def test_rank_search_prefers_the_furthest_rung_then_validation_then_name():
    trials = [
        {"model": "a", "iterations": 1, "val_acc": 0.9},   # stopped at the first rung
        {"model": "b", "iterations": 3, "val_acc": 0.5},
        {"model": "b", "iterations": 1, "val_acc": 0.95},  # b's other learning rate
        {"model": "c", "iterations": 3, "val_acc": 0.7},
        {"model": "d", "iterations": 3, "val_acc": 0.7},
    ]
    assert rank_search(trials) == ["c", "d", "b", "a"]


def test_summarize_search_scores_the_pick_against_exhaustive_finetuning():
    report = {"finetune_test_acc": {"t1": {"a": 0.8, "b": 0.9}, "t2": {"a": 0.5, "b": 0.4}}}
    results = {"t1": {"ranking": ["a", "b"], "steps": 30, "exhaustive_steps": 100},
               "t2": {"ranking": ["a", "b"], "steps": 50, "exhaustive_steps": 100}}
    s = summarize_search(report, results)
    assert s["per_task"]["t1"]["relative_regret"] == pytest.approx((0.9 - 0.8) / (1 - 0.8))
    assert s["per_task"]["t2"]["relative_regret"] == 0.0
    assert s["step_fraction"] == pytest.approx(0.4)
    assert s["mean_relative_regret"] == pytest.approx(0.25)


@pytest.mark.slow
def test_asha_search_spends_fewer_steps_than_exhaustive_and_reports_it(tmp_path, monkeypatch,
                                                                      ray_session, capsys):
    from sweeps.cli import main
    from tests.tiny import ZOO, sweep

    monkeypatch.setenv("WHICHMODEL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "zoo.yaml").write_text(ZOO)
    # One trial at a time, so ASHA sees the rungs in grid order (deterministic); lr 1e-4 leaves
    # the zero-initialised head at chance after 5 steps, far below lr 0.3 (about 0.75), so ASHA
    # must stop it at its first rung whatever the order.
    text = sweep("srch", tasks="[digits]", steps=20).replace(
        "lrs: [0.01, 0.001]", "lrs: [0.3, 0.0001]").replace(
        "resources: {", "resources: {max_concurrent_trials: 1, ") + (
        "search: {enabled: true, rung_steps: 5, reduction_factor: 2}\n")
    (tmp_path / "s.yaml").write_text(text)
    assert main(["zoo", "build", str(tmp_path / "zoo.yaml")]) == 0
    assert main(["run", str(tmp_path / "s.yaml"), "--reports-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "Budgeted search" in out
    report = json.loads((tmp_path / "r" / "srch" / "regret.json").read_text())
    summary = report["budgeted_search"]
    assert summary["per_task"]["digits"]["pick"] in ("tiny-shapes", "tiny-random")
    # 2 models x 2 lrs x (5 head + 20 steps) exhaustively; ASHA stops the lr 1e-4 trials early.
    assert summary["exhaustive_steps"] == 100
    assert 0 < summary["steps"] < summary["exhaustive_steps"]
    assert 0.0 <= summary["mean_relative_regret"] <= 1.0
    # Replayed from the exhaustive sweep's validation curves (no new training) ...
    assert summary["replayed"] == 1 and summary["per_task"]["digits"]["replayed"]
    assert "replayed from the exhaustive sweep's validation curves" in out
    # ... with the decisions real ASHA trials take, run one after another in the same order
    from sweeps.paths import default_paths
    from sweeps.plan import plan_sweep
    from sweeps.search import _asha_trials, exhaustive_curves, replay_asha
    from sweeps.tracking.client import Tracker

    plan = plan_sweep(tmp_path / "s.yaml")
    tracker = Tracker(default_paths().tracking_uri(), "srch", create=False)
    curves = exhaustive_curves(tracker, plan, "digits", [0.3, 0.0001])
    order = [(m, lr) for m in plan.models for lr in (0.3, 0.0001)]
    replayed = replay_asha({k: [(i + 1, v) for i, (_, v) in enumerate(c)]
                            for k, c in curves.items()}, order, grace=1, reduction_factor=2,
                           max_t=4)
    real = {(t["model"], t["lr"]): (t["iterations"], t["val_acc"])
            for t in _asha_trials(plan, default_paths(), "digits", [0.3, 0.0001], 4)}
    assert real == {k: (it, pytest.approx(v)) for k, (it, v) in replayed.items()}


def test_replay_takes_the_decisions_of_tunes_asha_bracket():
    """replay_asha against Ray's own _Bracket fed the same results in the same order."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    from sweeps.search import replay_asha

    rng = np.random.default_rng(0)
    for trial_count, rf, max_t in ((9, 3, 9), (8, 2, 4), (12, 2, 8)):
        curves = {f"t{i}": [(it, float(v)) for it, v in enumerate(
            np.cumsum(rng.uniform(0, 0.1, max_t)) + rng.uniform(0, 0.3), start=1)]
            for i in range(trial_count)}
        order = list(curves)
        ours = replay_asha(curves, order, grace=1, reduction_factor=rf, max_t=max_t)
        bracket = _Bracket(1, max_t, rf, 0)

        class T:
            def __init__(self, trial_id):
                self.trial_id = trial_id

        expected = {}
        for name in order:
            trial = T(name)
            for it, value in curves[name]:
                if it >= max_t:  # ASHAScheduler stops it at max_t, then records it on completion
                    bracket.on_result(trial, it, value)
                    expected[name] = (it, value)
                    break
                if bracket.on_result(trial, it, value) == "STOP":
                    expected[name] = (it, value)
                    break
        assert ours == expected
