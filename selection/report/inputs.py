"""A report's inputs, validated once: the records aggregated, the pool and each task's pool
(:class:`PoolView`), the score tables (proxies, the ground truth, predicted and ranking tables),
the budgets -- what every stage of :func:`selection.report.compute.compute_report` reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from selection.pools import resolve_pool
from selection.records import (
    GROUND_TRUTH,
    RecordsError,
    aggregate_records,
    index_metadata,
    list_proxy_metrics,
    pivot_metric,
    validate_records,
)
from selection.strategies import check_predicted_name
from whichmodel.accuracy import check_accuracies
from whichmodel.errors import InputError

_LISTED = 10  # model names quoted in an error message


class PoolView:
    """A pool's models on the records' tasks: each task's pool (the models with a result) and
    their accuracies, as float matrices (no per-cell pandas lookups)."""

    def __init__(self, truth: pd.DataFrame, members: list[str]):
        self.members, self.all_tasks = members, list(truth.columns)
        acc = truth.reindex(index=members, columns=self.all_tasks).to_numpy(dtype=float)
        has = np.isfinite(acc)
        self.tasks = [t for j, t in enumerate(self.all_tasks) if has[:, j].any()]
        self.skipped = [t for j, t in enumerate(self.all_tasks) if not has[:, j].any()]
        self.col = {t: self.all_tasks.index(t) for t in self.tasks}
        self.rows = {t: np.flatnonzero(has[:, self.col[t]]) for t in self.tasks}
        self.task_pool = {t: [members[i] for i in self.rows[t]] for t in self.tasks}
        self.task_accs = {t: acc[self.rows[t], self.col[t]] for t in self.tasks}

    def values(self, table: pd.DataFrame) -> dict[str, np.ndarray]:
        """A score table's values on each task's pool (NaN where none)."""
        m = table.reindex(index=self.members, columns=self.all_tasks).to_numpy(dtype=float)
        return {t: m[self.rows[t], self.col[t]] for t in self.tasks}


@dataclass
class ReportInputs:
    """The validated inputs of one report: what every stage reads."""

    clean: pd.DataFrame  # validated records (repetitions kept)
    meta: pd.DataFrame | None  # metadata indexed by model
    truth: pd.DataFrame  # fine-tune test accuracy, index model, columns task (median)
    members: list[str]  # the pool's models
    view: PoolView  # each task's pool and accuracies
    budgets: list[int]
    groups: dict[str, str | None]  # task -> group
    proxies: list[str]  # proxy metrics present
    scores: dict[str, pd.DataFrame]  # metric or strategy name -> table (proxies, truth, learned)
    predicted: dict[str, pd.DataFrame]  # predicted-accuracy tables
    ranked: dict[str, pd.DataFrame]  # ranking-score tables

    @property
    def tasks(self) -> list[str]:
        return self.view.tasks


def check_tables(tables: Mapping[str, pd.DataFrame] | None, accuracies: bool = True
                 ) -> dict[str, pd.DataFrame]:
    """Predicted-accuracy tables: index model, columns task, values in [0, 1] or NaN (with
    ``accuracies=False``: ranking scores, any real number or NaN)."""
    if tables is None:
        return {}
    what = "predictions" if accuracies else "rankings"
    if not isinstance(tables, Mapping):
        raise InputError(f"{what} must map a strategy name (e.g. 'choicenet_v1') to a table "
                         f"(index model, columns task); got {type(tables).__name__}")
    out = {}
    for name, table in tables.items():
        check_predicted_name(name)
        if not isinstance(table, pd.DataFrame):
            raise InputError(f"{what}[{name!r}]: expected a pandas DataFrame (index model, "
                             f"columns task), got {type(table).__name__}")
        if table.index.has_duplicates or table.columns.has_duplicates:
            raise InputError(f"{what}[{name!r}]: duplicate model or task labels; one row per "
                             "model, one column per task")
        values = table.apply(pd.to_numeric, errors="coerce").astype(float)
        if accuracies:
            check_accuracies(values.to_numpy(), f"{what}[{name!r}]",
                             lambda ij, v=values: f": model {v.index[ij[0]]!r}, task {v.columns[ij[1]]!r}")
        elif np.isinf(values.to_numpy()).any():
            raise InputError(f"{what}[{name!r}]: infinite scores; use finite numbers or NaN")
        values.index = values.index.astype(str)
        values.columns = values.columns.astype(str)
        out[name] = values
    return out


def prepare_inputs(records: pd.DataFrame, metadata: pd.DataFrame | None, s,
                   predictions: Mapping[str, pd.DataFrame] | None = None,
                   rankings: Mapping[str, pd.DataFrame] | None = None) -> ReportInputs:
    """Validate the records and tables, aggregate repetitions (median), resolve the pool and each
    task's pool (the pool's models with a result), and the budgets. ``s``: the report's
    :class:`~selection.report.compute.ReportSettings`."""
    predicted, ranked = check_tables(predictions), check_tables(rankings, accuracies=False)
    clean = validate_records(records, source="records")
    agg = aggregate_records(clean)
    meta = index_metadata(metadata)
    if not (agg["metric"] == GROUND_TRUTH).any():
        raise RecordsError(
            f"records: no '{GROUND_TRUTH}' rows; regret needs the fine-tune test accuracy of the "
            f"pool's models (metrics present: {sorted(agg['metric'].unique().tolist())})")
    truth = pivot_metric(agg, GROUND_TRUTH)
    members = resolve_pool(s.pool, agg["model"].unique().tolist(), meta, s.pools, s.pool_models)
    view = PoolView(truth, members)
    if not view.tasks:
        raise RecordsError(
            f"pool {s.pool!r}: none of its {len(members)} model(s) {members[:_LISTED]} has a "
            f"'{GROUND_TRUTH}' on any task; check the pool's model names against the records")
    largest = max(len(v) for v in view.task_pool.values())
    proxies = list_proxy_metrics(agg)
    scores = {m: pivot_metric(agg, m) for m in proxies}
    scores[GROUND_TRUTH] = truth
    scores.update(predicted)
    scores.update(ranked)
    return ReportInputs(clean, meta, truth, members, view,
                        list(range(1, min(s.max_budget, largest) + 1)),
                        {t: (s.task_groups or {}).get(t) for t in view.tasks}, proxies, scores,
                        predicted, ranked)


def _listed(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def input_warnings(inputs: ReportInputs) -> list[str]:
    """One line each for inputs a report can be computed from but says little about, which the
    report repeats at its top (``warnings``): pool models without a fine-tune result, a single
    model with results, a single task."""
    view, out = inputs.view, []
    with_results = sorted({m for t in view.tasks for m in view.task_pool[t]})
    without = [m for m in inputs.members if m not in with_results]
    if without:
        out.append(f"{len(without)} of the pool's {len(inputs.members)} models "
                   f"({_listed(without)}) have no '{GROUND_TRUTH}' on any task: no table or "
                   "regret includes them; give their fine-tune results or leave them out")
    if len(with_results) == 1:
        out.append(f"one model with fine-tune results ({with_results[0]!r}): every strategy "
                   "picks it and every regret is 0; compare two or more models")
    if len(view.tasks) == 1:
        out.append(f"one task ({view.tasks[0]!r}): the intervals resample tasks and the "
                   "leave-one-task-out strategies learn from other tasks, so neither means "
                   "anything here; report two or more tasks")
    return out


def task_accuracies(inputs: ReportInputs) -> dict[str, dict[str, float]]:
    view = inputs.view
    return {t: dict(zip(view.task_pool[t], view.task_accs[t].tolist())) for t in view.tasks}
