"""Report speed: 200 models x 15 tasks x 10 proxies (plus two ChoiceNet prediction tables) must
report -- compute_report, format_table and the JSON dump, B = 1..10 -- within 10 s on 2 cores.
Plots are timed separately (write_report renders four PNGs)."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from selection.report.compute import compute_report
from selection.report.files import write_report
from selection.report.text import format_table

N_MODELS, N_TASKS, N_PROXIES = 200, 15, 10
BUDGET_S = 10.0


def synthetic_table(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    rng = np.random.default_rng(seed)
    models = [f"model{i:03d}" for i in range(N_MODELS)]
    tasks = [f"task{j:02d}" for j in range(N_TASKS)]
    acc = rng.uniform(0.2, 0.99, (N_MODELS, N_TASKS))
    acc[rng.random(acc.shape) < 0.05] = np.nan  # some missing pairs
    mm, tt = np.meshgrid(models, tasks, indexing="ij")
    frames = []
    for metric, values in [("finetune_test_acc", acc),
                           *((f"proxy/p{k}", acc + rng.normal(0, 0.1 * (k + 1), acc.shape)) for k in range(N_PROXIES))]:
        keep = np.isfinite(values).ravel()
        frames.append(pd.DataFrame({"model": mm.ravel()[keep], "task": tt.ravel()[keep], "metric": metric,
                                    "value": values.ravel()[keep]}))
    # two repetitions of every fine-tune: the median has to be taken
    frames.append(frames[0].assign(value=np.clip(frames[0]["value"] + 0.01, 0, 1)))
    records = pd.concat(frames, ignore_index=True)
    metadata = pd.DataFrame({"model": models, "imagenet_acc": rng.uniform(0.5, 0.9, N_MODELS),
                             "params": rng.integers(1, 100, N_MODELS).astype(float)})
    predictions = {f"choicenet_{v}": pd.DataFrame(np.clip(acc + rng.normal(0, 0.05, acc.shape), 0, 1),
                                                  index=models, columns=tasks) for v in ("v1", "v2")}
    return records, metadata, predictions


@pytest.mark.slow
def test_200_models_15_tasks_10_proxies_report_within_10_seconds(tmp_path):
    records, metadata, predictions = synthetic_table()
    groups = {f"task{j:02d}": ("natural", "specialized", "structured")[j % 3] for j in range(N_TASKS)}
    start = time.perf_counter()
    report = compute_report(records, metadata, task_groups=groups, max_budget=10, predictions=predictions)
    table = format_table(report)
    text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False)
    elapsed = time.perf_counter() - start
    assert report["budgets"] == list(range(1, 11))
    # task_agnostic, proxies, hybrids, the two oracles, two ChoiceNets, the ensemble and the
    # records learner, per_task_best, random
    assert len(report["strategy_order"]) == 1 + 2 * N_PROXIES + 2 + 2 + 2 + 2
    assert len(table) > 0 and len(text) > 0
    assert elapsed <= BUDGET_S, f"report took {elapsed:.1f} s (budget {BUDGET_S} s)"

    # with the plots: every file of write_report (reported, loosely bounded for a shared machine)
    start = time.perf_counter()
    paths = write_report(report, tmp_path)
    with_plots = time.perf_counter() - start
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert with_plots <= 3 * BUDGET_S, f"write_report took {with_plots:.1f} s"
