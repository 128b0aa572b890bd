"""The regret report of a sweep: records from MLflow (or files) -> tables, files, MLflow artifacts.

    whichmodel report --experiment quickstart
    whichmodel report --records results.csv --models models.csv --format json --output -

Writes ``reports/<experiment>/regret.{md,csv,json,png}`` and logs them as artifacts of the
experiment's report run (one per pool).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from sweeps.config import WhichModelError


def report_from_tables(records: pd.DataFrame, metadata: pd.DataFrame | None,
                       task_groups: dict[str, str] | None, *, pool: str = "all",
                       pool_models: list[str] | None = None, max_budget: int = 3,
                       strategies: list[str] | None = None,
                       predictions: dict[str, pd.DataFrame] | None = None) -> dict[str, Any]:
    from selection.records import RecordsError
    from selection.report import compute_report

    try:
        return compute_report(records, metadata, pool=pool, pool_models=pool_models,
                              task_groups=task_groups, max_budget=max_budget,
                              strategies=strategies, predictions=predictions)
    except (RecordsError, KeyError, ValueError) as exc:
        raise WhichModelError(str(exc).strip('"')) from None


def report_experiment(tracker, *, pool: str = "all", pool_models: list[str] | None = None,
                      max_budget: int = 3, strategies: list[str] | None = None,
                      protocol_hashes: dict[str, str] | None = None,
                      choicenet=None) -> dict[str, Any]:
    """``choicenet(records) -> predictions`` adds the ChoiceNet strategies when given."""
    records, metadata, groups = tracker.records(protocol_hashes)
    if records.empty:
        raise WhichModelError(f"experiment {tracker.experiment!r} has no finished pair runs to "
                              "report on; run a sweep first (whichmodel run CONFIG)")
    predictions = choicenet(records) if choicenet is not None else None
    report = report_from_tables(records, metadata, groups, pool=pool, pool_models=pool_models,
                                max_budget=max_budget, strategies=strategies,
                                predictions=predictions)
    report["experiment"] = tracker.experiment
    return report


def choicenet_predictions(records: pd.DataFrame, plan, paths, stream=None
                          ) -> dict[str, pd.DataFrame] | None:
    """Leave-one-task-out ChoiceNet v1 and v2 predictions for the plan's models and tasks.

    Embeddings come from the sweep's models (zoo or hub) and its tasks' training images (see
    :mod:`lightning_modules.choicenet` for the architecture-independent choice); the fixed probe
    set and probe model keep them comparable between reports.
    """
    from lightning_modules.choicenet import compute_embeddings, load_probe_set, predict_choicenet, targets_from_records
    from sweeps.driver import trial_settings

    cfg = plan.cfg
    settings = cfg.report.choicenet
    targets = targets_from_records(records)
    if not settings.enabled or targets.shape[1] < 2:
        return None  # leave-one-task-out needs at least one other task to learn from
    stream = stream or sys.stderr
    start = time.perf_counter()
    trial = trial_settings(plan, paths)
    backbones = {m: trial.load_model(m)[0] for m in plan.models}
    tasks = {t: trial.load_task(t) for t in plan.tasks}
    probe_name = settings.probe_model or next(
        (m for m in plan.models if "generalist" in m), plan.models[0])
    if probe_name not in backbones:
        raise WhichModelError(f"{plan.path}: key 'report.choicenet.probe_model': {probe_name!r} "
                              f"is not in this sweep's models ({', '.join(plan.models)})")
    probe_x, probe_y = load_probe_set(paths.data_root, cfg.image_size, cfg.seed)
    emb = compute_embeddings(backbones, tasks, probe_x, probe_y,
                             probe_backbone=backbones[probe_name])
    predictions = predict_choicenet(emb, targets, seed=cfg.seed, steps=settings.steps)
    print(f"[whichmodel] ChoiceNet v1/v2 fitted leave-one-task-out on {targets.shape[1]} tasks "
          f"in {time.perf_counter() - start:.0f}s", file=stream, flush=True)
    return predictions


def write_and_log(report: dict[str, Any], out_dir: Path, tracker=None,
                  stream=None) -> dict[str, Path]:
    from selection.report_files import write_report
    from selection.report_text import format_table

    stream = stream or sys.stdout
    files = write_report(report, out_dir)
    print(format_table(report), file=stream)
    print(f"\n[whichmodel] report written to {out_dir}/ ({', '.join(p.name for p in files.values())})",
          file=stream)
    if tracker is not None:
        tracker.log_report(report.get("pool", "all"), files.values(),
                           tags={"pool": report.get("pool", "all")})
    return files


def results_table(report: dict[str, Any]) -> str:
    """Fine-tune test accuracy per model and task, best per task marked with *."""
    acc = report["finetune_test_acc"]
    tasks = report["tasks"]
    models = sorted({m for t in tasks for m in acc.get(t, {})})
    width = max(len(m) for m in models) + 2
    cols = [max(8, len(t)) + 2 for t in tasks]
    lines = ["".join([f"{'model':<{width}}"] + [f"{t:>{c}}" for t, c in zip(tasks, cols)])]
    for m in models:
        cells = []
        for t, c in zip(tasks, cols):
            v = acc.get(t, {}).get(m)
            best = v is not None and v == max(acc[t].values())
            cells.append(f"{'-' if v is None else f'{v:.3f}' + ('*' if best else ' '):>{c}}")
        lines.append(f"{m:<{width}}" + "".join(cells))
    return "\n".join(lines)
