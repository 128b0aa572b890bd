"""A report at a large table's size (200 models x 15 tasks x 10 proxies, two ChoiceNet tables,
B = 1..10) is complete: every strategy, every budget, every file. How long it takes is
measured by ``python -m benchmarks.report_speed`` (README, "Benchmarks"), not here."""

from __future__ import annotations

import json

import pytest

from benchmarks.report_speed import SIZES, synthetic_table, task_groups
from selection.report.compute import compute_report
from selection.report.files import write_report
from selection.report.text import format_table


@pytest.mark.slow
def test_200_models_15_tasks_10_proxies_report_has_every_strategy_budget_and_file(tmp_path):
    n_models, n_tasks, n_proxies = SIZES[False]
    records, metadata, predictions = synthetic_table(n_models, n_tasks, n_proxies)
    report = compute_report(records, metadata, task_groups=task_groups(n_tasks), max_budget=10,
                            predictions=predictions)
    assert report["budgets"] == list(range(1, 11))
    # task_agnostic, two static rankings (params, imagenet_acc), proxies, hybrids, the two
    # oracles, two ChoiceNets, the ensemble and the records learner, per_task_best, random
    assert len(report["strategy_order"]) == 1 + 2 + 2 * n_proxies + 2 + 2 + 2 + 2
    assert len(report["models"]) == n_models and len(report["tasks"]) == n_tasks
    assert all(report["strategies"][n][str(b)]["mean"] is not None
               for n in report["strategy_order"] for b in report["budgets"])
    assert format_table(report).count("relative regret, pool 'all', B = ") == 10
    assert json.loads(json.dumps(report, allow_nan=False))["budgets"] == report["budgets"]
    paths = write_report(report, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths.values())


def test_report_speed_benchmark_prints_its_keys(capsys):
    from benchmarks.report_speed import main

    assert main(["--quick"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["quick"] is True and (out["models"], out["tasks"], out["proxies"]) == SIZES[True]
    assert out["report_s"] > 0 and out["write_report_s"] > 0 and out["met"] is None
