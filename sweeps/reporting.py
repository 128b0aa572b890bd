"""The regret report of a sweep: records from MLflow (or files) -> tables, files, MLflow artifacts.

    whichmodel report --experiment quickstart
    whichmodel report --records results.csv --models models.csv --format json --output -

Writes ``reports/<experiment>/regret.{md,csv,json,png}`` and logs them as artifacts of the
experiment's report run (one per pool).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from sweeps.config import WhichModelError


def report_from_tables(records: pd.DataFrame, metadata: pd.DataFrame | None,
                       task_groups: dict[str, str] | None, *, pool: str = "all",
                       pool_models: list[str] | None = None, max_budget: int = 3,
                       strategies: list[str] | None = None) -> dict[str, Any]:
    from selection.records import RecordsError
    from selection.report import compute_report

    try:
        return compute_report(records, metadata, pool=pool, pool_models=pool_models,
                              task_groups=task_groups, max_budget=max_budget,
                              strategies=strategies)
    except (RecordsError, KeyError, ValueError) as exc:
        raise WhichModelError(str(exc).strip('"')) from None


def report_experiment(tracker, *, pool: str = "all", pool_models: list[str] | None = None,
                      max_budget: int = 3, strategies: list[str] | None = None,
                      protocol_hashes: dict[str, str] | None = None) -> dict[str, Any]:
    records, metadata, groups = tracker.records(protocol_hashes)
    if records.empty:
        raise WhichModelError(f"experiment {tracker.experiment!r} has no finished pair runs to "
                              "report on; run a sweep first (whichmodel run CONFIG)")
    report = report_from_tables(records, metadata, groups, pool=pool, pool_models=pool_models,
                                max_budget=max_budget, strategies=strategies)
    report["experiment"] = tracker.experiment
    return report


def write_and_log(report: dict[str, Any], out_dir: Path, tracker=None,
                  stream=None) -> dict[str, Path]:
    from selection.report import format_table, write_report

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
