"""Regret report: score every model-search strategy on a pool, and write it out.

:func:`compute_report` turns records (long ``model, task, metric, value``), optional model
metadata and optional ChoiceNet predictions into a JSON-serialisable dict; :func:`format_table`
renders it for a terminal, :func:`format_markdown` as Markdown, and :func:`write_report` writes
``regret.md``, ``regret.csv``, ``regret.json`` and four PNG plots, each file atomically.

Definitions (DESIGN.md, Renggli et al. 2022): for task t the pool is the pool's models that have
a ``finetune_test_acc`` for t (a missing pair is simply not in that task's pool); s* is the best
accuracy in it; a ranking strategy with budget B scores s(S) = the best accuracy among its top B;
``random`` scores the exact expected regret of a uniformly random size-B subset. A budget larger
than a task's pool picks the whole pool (s(S) = s*). Budgets are B = 1 .. min(max_budget, largest
task pool), max_budget <= 10.

JSON (stable; budget keys are strings "1".."10"; ``null`` wherever a value does not exist)::

    pool: str                        # the pool's name
    models: [model]                  # the pool's models (sorted)
    models_without_results: [model]  # pool models with no finetune_test_acc on any reported task
    tasks: [task]                    # reported tasks (sorted): those with >= 1 pool model result
    task_groups: {task: group|null}
    skipped_tasks: [task]            # tasks in the records with no result in the pool
    budgets: [1, 2, ...]
    strategy_order: [strategy]       # task_agnostic, proxies, hybrids, choicenet_*, oracle, random
    strategies: {strategy: {"B": {mean, per_task: {task}, per_group: {group}}}}  # relative regret
    log_odds: {same shape}                                                       # log-odds regret
    zero_regret_budget: {strategy: {task: B|null}}    # smallest *reported* B with regret 0
    zero_regret_budget_full: {strategy: {task: B}}    # smallest B over 1 .. task pool size
                                                      # (Appendix G); random: n - ties + 1
    zero_regret_fraction: {strategy: {"B": fraction of tasks with regret 0}}       # Figure 7
    weighted_tau: {proxy: {task: tau|null}}  # scipy.stats.weightedtau(acc, score, rank=None)
    pearson: {proxy: {task: r|null}}         # both over the task's pool models with a score,
                                             # in model-name order; null if < 2 or constant
    proxy_scores: {proxy: {task: {model: score}}}     # the task pool's scores (for the plots)
    choicenet: {"v1"|"v2"|<name>: {mse, n_pairs, per_task_mse: {task}, weighted_tau: {task},
                                   pearson: {task}}}  # mse null, n_pairs 0 without predictions
    picks: {strategy: {task: top max_budget models | null for random}}
    finetune_test_acc: {task: {model: acc}}
    oracle_model: {task: model}                       # best per task, ties by name

ChoiceNet: ``predictions={"choicenet_v1": table, "choicenet_v2": table}`` (index model, columns
task, predicted fine-tune accuracy in [0, 1], NaN where none; made leave-one-task-out by
:func:`lightning_modules.choicenet.predict_choicenet`) adds one ranking strategy per table and
fills ``choicenet`` (``choicenet_v1`` reports as ``v1``). MSE is over the reported tasks' pool
pairs that have a prediction.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

from selection.pools import Pools, resolve_pool
from selection.rank_agreement import pearson, weighted_tau
from selection.records import (
    GROUND_TRUTH,
    POOL_ALL,
    RecordsError,
    aggregate_records,
    index_metadata,
    list_proxy_metrics,
    pivot_metric,
    validate_records,
)
from selection.regret import (
    best_of_top,
    expected_random_regret_by_budget,
    log_odds_regret,
    random_zero_regret_budget,
    ranking_zero_regret_budget,
    relative_regret,
)
from selection.strategies import check_predicted_name, create_strategy, list_strategies

REPORT_FILES = {"md": "regret.md", "csv": "regret.csv", "json": "regret.json", "png": "regret.png",
                "png_b2": "regret_b2.png", "png_zero": "zero_regret.png", "png_proxies": "proxies.png"}
CSV_COLUMNS = ("strategy", "budget", "task", "group", "relative_regret", "log_odds_regret")
MEAN_ROW = "mean"
MAX_BUDGET = 10  # DESIGN.md: budgets B = 1 .. min(10, pool size)
CHOICENET_VERSIONS = ("v1", "v2")
ZERO = 1e-12  # regret at or below this counts as zero
_LISTED = 10  # model names quoted in an error message


# ----------------------------------------------------------------------------------------------
# computing


def _finite(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _check_max_budget(max_budget: object) -> int:
    if isinstance(max_budget, bool) or not isinstance(max_budget, (int, np.integer)) or max_budget < 1:
        raise ValueError(f"max_budget={max_budget!r} must be an integer >= 1")
    if max_budget > MAX_BUDGET:
        raise ValueError(f"max_budget={max_budget!r}: budgets go up to {MAX_BUDGET} "
                         f"(DESIGN.md: B = 1 .. min(10, pool size)); pass at most {MAX_BUDGET}")
    return int(max_budget)


def _check_predictions(predictions: Mapping[str, pd.DataFrame] | None) -> dict[str, pd.DataFrame]:
    """Predicted-accuracy tables: index model, columns task, values in [0, 1] or NaN."""
    if predictions is None:
        return {}
    if not isinstance(predictions, Mapping):
        raise TypeError("predictions must map a strategy name (e.g. 'choicenet_v1') to a table "
                        f"(index model, columns task); got {type(predictions).__name__}")
    out = {}
    for name, table in predictions.items():
        check_predicted_name(name)
        if not isinstance(table, pd.DataFrame):
            raise TypeError(f"predictions[{name!r}]: expected a pandas DataFrame (index model, columns "
                            f"task), got {type(table).__name__}")
        if table.index.has_duplicates or table.columns.has_duplicates:
            raise ValueError(f"predictions[{name!r}]: duplicate model or task labels; one row per model, "
                             "one column per task")
        values = table.apply(pd.to_numeric, errors="coerce").astype(float)
        bad = np.argwhere((values.to_numpy() < 0) | (values.to_numpy() > 1) | np.isinf(values.to_numpy()))
        if bad.size:
            i, j = bad[0]
            raise ValueError(
                f"predictions[{name!r}]: model {values.index[i]!r}, task {values.columns[j]!r}: predicted "
                f"accuracy {values.iat[i, j]!r} is outside [0, 1] ({len(bad)} such value(s)); predicted "
                "accuracies are fractions in [0, 1], NaN where there is no prediction")
        values.index = values.index.astype(str)
        values.columns = values.columns.astype(str)
        out[name] = values
    return out


def _choicenet_key(name: str) -> str:
    return name[len("choicenet_"):] if name.startswith("choicenet_") else name


def _empty_choicenet(tasks: list[str]) -> dict[str, Any]:
    return {"mse": None, "n_pairs": 0, "per_task_mse": {t: None for t in tasks},
            "weighted_tau": {t: None for t in tasks}, "pearson": {t: None for t in tasks}}


def compute_report(
    records: pd.DataFrame,
    metadata: pd.DataFrame | None = None,
    *,
    pool: str = POOL_ALL,
    pool_models: list[str] | None = None,
    pools: Pools | None = None,
    task_groups: dict[str, str] | None = None,
    max_budget: int = 3,
    strategies: list[str] | None = None,
    predictions: Mapping[str, pd.DataFrame] | None = None,
    log_odds_eps: float = 1e-4,
) -> dict[str, Any]:
    """Regret of each strategy on each task of ``pool`` for budgets B = 1 .. min(max_budget, pool size).

    ``records`` are validated and repeated rows aggregated by median. The pool's models are
    ``pool_models`` if given, else ``pools[pool]`` (explicit named lists), else every model of the
    records for ``pool="all"``, else the models whose metadata ``pools`` field names ``pool``
    (:func:`selection.pools.resolve_pool`). Per task, the pool is the pool's models with a
    ``finetune_test_acc`` for that task; tasks with none are listed under ``skipped_tasks``.
    Pool size for the budget range is the largest per-task pool; ``max_budget`` is at most 10.

    ``strategies`` defaults to :func:`selection.strategies.list_strategies` of the proxies present
    and the ``predictions`` given. ``predictions`` maps a strategy name (``choicenet_v1``,
    ``choicenet_v2``) to predicted accuracies (index model, columns task, NaN where none).
    ``task_groups`` maps task -> group (e.g. natural/specialized/structured); tasks it does not
    name get group None and no group mean.

    Returns the JSON-serialisable dict documented in the module docstring.
    """
    max_budget = _check_max_budget(max_budget)
    predicted = _check_predictions(predictions)
    clean = validate_records(records, source="records")
    agg = aggregate_records(clean)
    meta = index_metadata(metadata)
    if not (agg["metric"] == GROUND_TRUTH).any():
        raise RecordsError(
            f"records: no '{GROUND_TRUTH}' rows; regret needs the fine-tune test accuracy of the "
            f"pool's models (metrics present: {sorted(agg['metric'].unique().tolist())})"
        )
    truth = pivot_metric(agg, GROUND_TRUTH)
    members = resolve_pool(pool, agg["model"].unique().tolist(), meta, pools, pool_models)

    # one float matrix per metric (pool models x record tasks): no per-cell pandas lookups below
    all_tasks = list(truth.columns)
    acc_matrix = truth.reindex(index=members, columns=all_tasks).to_numpy(dtype=float)
    has_acc = np.isfinite(acc_matrix)
    tasks = [t for j, t in enumerate(all_tasks) if has_acc[:, j].any()]
    skipped = [t for j, t in enumerate(all_tasks) if not has_acc[:, j].any()]
    if not tasks:
        raise RecordsError(
            f"pool {pool!r}: none of its {len(members)} model(s) {members[:_LISTED]} has a "
            f"'{GROUND_TRUTH}' on any task; check the pool's model names against the records"
        )
    col = {t: all_tasks.index(t) for t in tasks}
    rows = {t: np.flatnonzero(has_acc[:, col[t]]) for t in tasks}   # pool-model rows per task
    task_pool = {t: [members[i] for i in rows[t]] for t in tasks}
    task_accs = {t: acc_matrix[rows[t], col[t]] for t in tasks}
    with_results = {m for t in tasks for m in task_pool[t]}
    budgets = list(range(1, min(max_budget, max(len(v) for v in task_pool.values())) + 1))

    if task_groups is not None and not isinstance(task_groups, Mapping):
        raise TypeError(f"task_groups must map task -> group, got {type(task_groups).__name__}")
    groups: dict[str, str | None] = {t: (task_groups or {}).get(t) for t in tasks}
    group_names = sorted({g for g in groups.values() if g is not None})

    proxies = list_proxy_metrics(agg)
    scores = {m: pivot_metric(agg, m) for m in proxies}
    scores[GROUND_TRUTH] = truth
    scores.update(predicted)
    names = list(strategies) if strategies is not None else list_strategies(proxies, list(predicted))
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"strategies: {duplicates} listed more than once; list each strategy once")
    built = {name: create_strategy(name, scores, meta) for name in names}

    rel, logodds, zero_full, picks = _score_strategies(built, tasks, task_pool, task_accs, budgets,
                                                       max_budget, log_odds_eps)
    b_keys = [str(b) for b in budgets]

    def shape(values: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in names:
            out[name] = {}
            for k, b in enumerate(b_keys):
                per_task = {t: float(values[name][t][k]) for t in tasks}
                per_group = {g: _mean([per_task[t] for t in tasks if groups[t] == g]) for g in group_names}
                out[name][b] = {"mean": _mean(list(per_task.values())), "per_task": per_task,
                                "per_group": per_group}
        return out

    def first_zero(regrets: np.ndarray) -> int | None:
        hit = np.flatnonzero(np.abs(regrets) <= ZERO)
        return budgets[int(hit[0])] if hit.size else None

    zero_budget = {name: {t: first_zero(rel[name][t]) for t in tasks} for name in names}
    zero_fraction = {
        name: {b: float(np.mean([abs(rel[name][t][k]) <= ZERO for t in tasks])) for k, b in enumerate(b_keys)}
        for name in names
    }

    # rank agreement of each proxy with the fine-tune accuracy, per task, over its pool
    proxy_matrix = {p: scores[p].reindex(index=members, columns=all_tasks).to_numpy(dtype=float) for p in proxies}
    agreement = {"weighted_tau": {}, "pearson": {}}
    proxy_scores: dict[str, dict[str, dict[str, float]]] = {}
    for p in proxies:
        agreement["weighted_tau"][p], agreement["pearson"][p], proxy_scores[p] = {}, {}, {}
        for t in tasks:
            s = proxy_matrix[p][rows[t], col[t]]
            agreement["weighted_tau"][p][t] = weighted_tau(task_accs[t], s)
            agreement["pearson"][p][t] = pearson(task_accs[t], s)
            proxy_scores[p][t] = {m: float(v) for m, v in zip(task_pool[t], s.tolist()) if math.isfinite(v)}

    choicenet = {v: _empty_choicenet(tasks) for v in CHOICENET_VERSIONS}
    for name, table in predicted.items():
        pred = table.reindex(index=members, columns=all_tasks).to_numpy(dtype=float)
        choicenet[_choicenet_key(name)] = _prediction_summary(
            {t: pred[rows[t], col[t]] for t in tasks}, task_accs, tasks)

    accs = {t: dict(zip(task_pool[t], task_accs[t].tolist())) for t in tasks}
    oracle_model = {t: task_pool[t][int(np.argmax(task_accs[t]))] for t in tasks}  # first max: by name
    return {
        "pool": pool,
        "models": members,
        "models_without_results": [m for m in members if m not in with_results],
        "tasks": tasks,
        "task_groups": groups,
        "skipped_tasks": skipped,
        "budgets": budgets,
        "strategy_order": names,
        "strategies": shape(rel),
        "log_odds": shape(logodds),
        "zero_regret_budget": zero_budget,
        "zero_regret_budget_full": zero_full,
        "zero_regret_fraction": zero_fraction,
        "weighted_tau": agreement["weighted_tau"],
        "pearson": agreement["pearson"],
        "proxy_scores": proxy_scores,
        "choicenet": choicenet,
        "picks": picks,
        "finetune_test_acc": accs,
        "oracle_model": oracle_model,
    }


def _score_strategies(built, tasks, task_pool, task_accs, budgets, max_budget, eps):
    """Relative and log-odds regret arrays (over budgets), full zero-regret budgets and picks."""
    def lo_fn(star, sel):
        return log_odds_regret(star, sel, eps=eps)

    rel: dict[str, dict[str, np.ndarray]] = {}
    logodds: dict[str, dict[str, np.ndarray]] = {}
    zero_full: dict[str, dict[str, int]] = {}
    picks: dict[str, dict[str, list[str] | None]] = {}
    random_cache: dict[str, dict[str, np.ndarray]] = {}
    for name, strategy in built.items():
        rel[name], logodds[name], zero_full[name], picks[name] = {}, {}, {}, {}
        for task in tasks:
            pool_models, accs = task_pool[task], task_accs[task]
            if getattr(strategy, "expected", False):
                if task not in random_cache:
                    random_cache[task] = expected_random_regret_by_budget(
                        accs, budgets, {"rel": relative_regret, "lo": lo_fn})
                rel[name][task] = random_cache[task]["rel"]
                logodds[name][task] = random_cache[task]["lo"]
                zero_full[name][task] = random_zero_regret_budget(accs)
                picks[name][task] = None
                continue
            ranking = list(strategy.rank(task, list(pool_models)))
            position = {m: i for i, m in enumerate(pool_models)}
            if len(ranking) != len(pool_models) or set(ranking) != set(pool_models):
                raise ValueError(
                    f"strategy {name!r} ranked {ranking[:_LISTED]} on task {task!r}; a ranking must hold "
                    f"every model of the task's pool {pool_models[:_LISTED]} exactly once"
                )
            ranked = accs[[position[m] for m in ranking]]
            s_sel = best_of_top(ranked, budgets)
            star = float(accs.max())
            rel[name][task] = np.asarray(relative_regret(star, s_sel), dtype=float)
            logodds[name][task] = np.asarray(lo_fn(star, s_sel), dtype=float)
            zero_full[name][task] = ranking_zero_regret_budget(ranked)
            picks[name][task] = ranking[:max_budget]
    return rel, logodds, zero_full, picks


def _prediction_summary(pred: dict[str, np.ndarray], accs: dict[str, np.ndarray], tasks: list[str]) -> dict[str, Any]:
    """MSE (overall and per task) and rank agreement of predicted with fine-tune accuracy."""
    errors, per_task = [], {}
    for t in tasks:
        known = np.isfinite(pred[t])
        sq = (pred[t][known] - accs[t][known]) ** 2
        errors.append(sq)
        per_task[t] = float(sq.mean()) if sq.size else None
    every = np.concatenate(errors) if errors else np.zeros(0)
    return {"mse": float(every.mean()) if every.size else None, "n_pairs": int(every.size),
            "per_task_mse": per_task,
            "weighted_tau": {t: weighted_tau(accs[t], pred[t]) for t in tasks},
            "pearson": {t: pearson(accs[t], pred[t]) for t in tasks}}


def prediction_mse(predictions: pd.DataFrame, targets: pd.DataFrame) -> float | None:
    """Mean squared error of predicted accuracies over the (model, task) pairs where both tables
    have a finite value; None when there is no such pair. Tables: index model, columns task."""
    p, y = predictions.align(targets, join="inner")
    p, y = p.to_numpy(dtype=float), y.to_numpy(dtype=float)
    known = np.isfinite(p) & np.isfinite(y)
    return float(np.mean((p[known] - y[known]) ** 2)) if known.any() else None


# ----------------------------------------------------------------------------------------------
# formatting


def _strategy_order(report: Mapping[str, Any]) -> list[str]:
    return list(report.get("strategy_order") or report["strategies"])


def _check_budget(report: Mapping[str, Any], budget: int | None) -> list[int]:
    budgets = [int(b) for b in report["budgets"]]
    if budget is None:
        return budgets
    if int(budget) not in budgets:
        raise ValueError(f"budget {budget!r} is not in the report; budgets reported: {budgets}")
    return [int(budget)]


def _layout(report: Mapping[str, Any]) -> Iterator[tuple[str, str, str, str | None]]:
    """Rows as (group label, task label, kind, key): kind is task / group / mean."""
    groups: Mapping[str, str | None] = report.get("task_groups") or {}
    tasks = list(report["tasks"])
    for group in sorted({g for g in groups.values() if g is not None}):
        for task in tasks:
            if groups.get(task) == group:
                yield group, task, "task", task
        yield group, MEAN_ROW, "group", group
    for task in tasks:
        if groups.get(task) is None:
            yield "", task, "task", task
    yield "", MEAN_ROW, "mean", None


def _cell(block: Mapping[str, Any], kind: str, key: str | None) -> float | None:
    if kind == "task":
        return block["per_task"].get(key)
    if kind == "group":
        return block["per_group"].get(key)
    return block["mean"]


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or not _finite(value) else f"{value:.{digits}f}"


def _has_groups(report: Mapping[str, Any]) -> bool:
    return any(g is not None for g in (report.get("task_groups") or {}).values())


def _regret_rows(report: Mapping[str, Any], budget: int, which: str = "strategies") -> tuple[list[str], list[list[str]]]:
    names = _strategy_order(report)
    grouped = _has_groups(report)
    header = (["group"] if grouped else []) + ["task"] + names
    rows = []
    for group, task, kind, key in _layout(report):
        values = [_fmt(_cell(report[which][n][str(budget)], kind, key)) for n in names]
        rows.append(([group] if grouped else []) + [task] + values)
    return header, rows


def format_table(report: Mapping[str, Any], budget: int | None = None) -> str:
    """Plain-text tables of relative regret: rows = tasks (grouped, with group means) and a
    ``mean`` row; columns = strategies; one table per budget, or only ``budget``."""
    out = []
    for b in _check_budget(report, budget):
        header, rows = _regret_rows(report, b)
        n_labels = len(header) - len(_strategy_order(report))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if i < n_labels else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        title = f"relative regret, pool '{report['pool']}', B = {b}"
        if "random" in report["strategies"]:
            title += " (random: exact expected regret)"
        out.append("\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, rows)]))
    summary = _summary_rows(report)
    if summary:
        header = ["score", "mean weighted tau", "mean pearson", "tasks", "mse"]
        out.append(f"rank agreement with {GROUND_TRUTH} (mean over tasks where defined)\n"
                   + _plain_table(header, summary, 1))
    skipped = report.get("skipped_tasks") or []
    if skipped:
        out.append(f"skipped tasks (no {GROUND_TRUTH} in the pool): {', '.join(skipped)}")
    return "\n\n".join(out) + "\n"


def _plain_table(header: list[str], rows: list[list[str]], n_labels: int) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < n_labels else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _defined_mean(values: Mapping[str, float | None]) -> tuple[float | None, int]:
    defined = [v for v in values.values() if v is not None]
    return _mean(defined), len(defined)


def _summary_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """Per proxy and per ChoiceNet version with predictions: mean weighted tau, mean Pearson,
    tasks where tau is defined, and (ChoiceNet) the MSE."""
    rows = []
    for proxy, by_task in (report.get("weighted_tau") or {}).items():
        tau, n = _defined_mean(by_task)
        r, _ = _defined_mean(report["pearson"][proxy])
        rows.append([proxy, _fmt(tau), _fmt(r), str(n), "-"])
    for version, block in (report.get("choicenet") or {}).items():
        if not block or block.get("mse") is None:
            continue
        tau, n = _defined_mean(block["weighted_tau"])
        r, _ = _defined_mean(block["pearson"])
        rows.append([f"choicenet {version}", _fmt(tau), _fmt(r), str(n), _fmt(block["mse"], 5)])
    return rows


def _md_escape(text: object) -> str:
    return str(text).replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[str]], n_labels: int) -> str:
    align = ["---" if i < n_labels else "---:" for i in range(len(header))]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(_md_escape(c) if j != 1 else c for c in cells) + " |"
                     for j, cells in enumerate(lines))


def format_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: relative-regret tables per budget, the smallest zero-regret budget
    per task, and the fine-tune test accuracies (models x tasks, best per task in bold)."""
    names = _strategy_order(report)
    parts = [
        f"# Regret report: pool `{report['pool']}`",
        f"{len(report['models'])} models, {len(report['tasks'])} tasks, budgets "
        f"{', '.join(map(str, report['budgets']))}.",
        "Relative regret r = (s* - s(S)) / (1 - min(s*, s(S))): s(S) is the best fine-tune test "
        "accuracy among a strategy's top B models, s* the best in the task's pool. "
        "`random` is the exact expected regret over uniformly random size-B subsets.",
    ]
    if report.get("skipped_tasks"):
        parts.append(f"Skipped tasks (no `{GROUND_TRUTH}` in the pool): {', '.join(report['skipped_tasks'])}.")
    for b in _check_budget(report, None):
        header, rows = _regret_rows(report, b)
        parts += [f"## Relative regret, B = {b}", _md_table(header, rows, len(header) - len(names))]

    parts.append("## Smallest budget with zero regret (`-`: not within the budgets reported)")
    header = ["task", *names]
    rows = [[t, *[("-" if report["zero_regret_budget"][n][t] is None else str(report["zero_regret_budget"][n][t]))
                  for n in names]] for t in report["tasks"]]
    parts.append(_md_table(header, rows, 1))

    full = report.get("zero_regret_budget_full")
    if full:
        parts.append("## Smallest budget with zero regret over the whole pool (Appendix G; "
                     "`random`: expected regret)")
        rows = [[t, *[str(full[n][t]) for n in names]] for t in report["tasks"]]
        parts.append(_md_table(["task", *names], rows, 1))

    fraction = report.get("zero_regret_fraction")
    if fraction:
        parts.append("## Fraction of tasks at zero regret (Figure 7)")
        budgets = [str(b) for b in report["budgets"]]
        rows = [[n, *[_fmt(fraction[n][b], 3) for b in budgets]] for n in names]
        parts.append(_md_table(["strategy", *(f"B = {b}" for b in budgets)], rows, 1))

    for key, title in (("weighted_tau", "weighted Kendall tau (`scipy.stats.weightedtau(acc, score, "
                                         "rank=None)`)"), ("pearson", "Pearson r")):
        table = report.get(key) or {}
        if not table:
            continue
        parts.append(f"## Rank agreement with `{GROUND_TRUTH}`: {title}; `-`: undefined "
                     "(< 2 models or constant values)")
        proxies = list(table)
        rows = [[t, *[_fmt(table[p][t]) for p in proxies]] for t in report["tasks"]]
        rows.append([MEAN_ROW, *[_fmt(_defined_mean(table[p])[0]) for p in proxies]])
        parts.append(_md_table(["task", *proxies], rows, 1))

    cn = {v: b for v, b in (report.get("choicenet") or {}).items() if b and b.get("mse") is not None}
    if cn:
        parts.append("## ChoiceNet, leave-one-task-out (predicted vs fine-tune test accuracy)")
        rows = []
        for version, block in cn.items():
            tau, n = _defined_mean(block["weighted_tau"])
            rows.append([version, _fmt(block["mse"], 5), str(block["n_pairs"]), _fmt(tau),
                         _fmt(_defined_mean(block["pearson"])[0])])
        parts.append(_md_table(["version", "MSE", "pairs", "mean weighted tau", "mean pearson"], rows, 1))

    parts.append(f"## Fine-tune test accuracy (`{GROUND_TRUTH}`; best per task in bold)")
    acc = report["finetune_test_acc"]
    tasks = list(report["tasks"])
    models = sorted({m for t in tasks for m in acc[t]} | set(report["models"]))
    rows = []
    for m in models:
        row = [m]
        for t in tasks:
            v = acc[t].get(m)
            text = _fmt(v)
            if v is not None and v == max(acc[t].values()):
                text = f"**{text}**"
            row.append(text)
        rows.append(row)
    parts.append(_md_table(["model", *tasks], rows, 1))
    return "\n\n".join(parts) + "\n"


def _csv_number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _render_csv(report: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for name in _strategy_order(report):
        for b in report["budgets"]:
            rel = report["strategies"][name][str(b)]
            lo = report["log_odds"][name][str(b)]
            for group, task, kind, key in _layout(report):
                writer.writerow([name, b, task, group, _csv_number(_cell(rel, kind, key)),
                                 _csv_number(_cell(lo, kind, key))])
    return buf.getvalue()


def _ordered_tasks(report: Mapping[str, Any]) -> list[str]:
    return [key for _, _, kind, key in _layout(report) if kind == "task"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _colors(names: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _note_png(title: str, text: str) -> bytes:
    fig = _figure(6.0, 2.0)
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return _png_bytes(fig)


def _render_regret_png(report: Mapping[str, Any], budget: int) -> bytes:
    """Bars of relative regret per task and strategy at one budget (the paper's Figures 3-6),
    beside the mean over tasks against the budget."""
    names = _strategy_order(report)
    tasks = _ordered_tasks(report)
    budgets = [int(b) for b in report["budgets"]]
    if budget not in budgets:
        return _note_png(f"relative regret per task, B = {budget}",
                         f"B = {budget} is not reported (budgets: {budgets}); "
                         "raise max_budget or enlarge the pool")
    colors = _colors(names)
    width_in = min(40.0, 6.0 + 0.18 * len(tasks) * max(1, len(names)))
    fig = _figure(width_in, 5.0)
    ax_bar, ax_line = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})

    x = np.arange(len(tasks))
    bar = 0.8 / max(1, len(names))
    for j, n in enumerate(names):
        per_task = report["strategies"][n][str(budget)]["per_task"]
        values = [per_task[t] if per_task[t] is not None else np.nan for t in tasks]
        ax_bar.bar(x - 0.4 + (j + 0.5) * bar, values, bar, label=n, color=colors[n])
    ax_bar.set_xticks(x, tasks, rotation=45, ha="right")
    ax_bar.set_ylabel("relative regret")
    ax_bar.set_title(f"relative regret per task, B = {budget} (pool '{report['pool']}')")
    ax_bar.set_xlim(-0.6, len(tasks) - 0.4)

    for n in names:
        means = [report["strategies"][n][str(b)]["mean"] for b in budgets]
        ax_line.plot(budgets, [np.nan if v is None else v for v in means], marker="o", label=n, color=colors[n])
    ax_line.set_xticks(budgets)
    ax_line.set_xlabel("budget B")
    ax_line.set_ylabel("mean relative regret")
    ax_line.set_title("mean over tasks")
    ax_line.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    return _png_bytes(fig, dpi=110)


def _render_png(report: Mapping[str, Any]) -> bytes:
    return _render_regret_png(report, 1)


def _render_png_b2(report: Mapping[str, Any]) -> bytes:
    return _render_regret_png(report, 2)


def _render_zero_png(report: Mapping[str, Any]) -> bytes:
    """Fraction of tasks at zero regret against the budget (Figure 7), beside the smallest
    zero-regret budget over the whole pool per task and strategy (Appendix G)."""
    names = _strategy_order(report)
    tasks = _ordered_tasks(report)
    budgets = [int(b) for b in report["budgets"]]
    colors = _colors(names)
    fraction = report.get("zero_regret_fraction") or {}
    full = report.get("zero_regret_budget_full") or {}
    fig = _figure(min(40.0, 7.0 + 0.35 * len(names)), max(4.0, 1.5 + 0.3 * len(tasks)))
    ax_line, ax_heat = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    for n in names:
        if n in fraction:
            ax_line.plot(budgets, [fraction[n][str(b)] for b in budgets], marker="o", label=n, color=colors[n])
    ax_line.set_xticks(budgets)
    ax_line.set_ylim(-0.03, 1.03)
    ax_line.set_xlabel("budget B")
    ax_line.set_ylabel("fraction of tasks with zero regret")
    ax_line.set_title(f"zero regret against budget (pool '{report['pool']}')")
    # Below the panels: with one entry per strategy the legend is taller than the line plot.
    fig.legend(*ax_line.get_legend_handles_labels(), loc="outside lower center",
               ncol=min(6, max(1, len(names))), fontsize="x-small", frameon=False)

    shown = [n for n in names if n in full]
    if shown:
        grid = np.array([[full[n][t] for n in shown] for t in tasks], dtype=float)
        from matplotlib.ticker import MaxNLocator

        image = ax_heat.imshow(grid, aspect="auto", cmap="viridis_r")
        fig.colorbar(image, ax=ax_heat, label="models to fine-tune", ticks=MaxNLocator(integer=True))
        if grid.size <= 200:  # numbers stay legible (and text is slow to draw)
            middle = (np.nanmin(grid) + np.nanmax(grid)) / 2
            for (i, j), v in np.ndenumerate(grid):
                ax_heat.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                             color="black" if v <= middle else "white")
        ax_heat.set_xticks(np.arange(len(shown)), shown, rotation=60, ha="right", fontsize="small")
        ax_heat.set_yticks(np.arange(len(tasks)), tasks, fontsize="small")
    ax_heat.set_title("smallest budget with zero regret (whole pool)")
    return _png_bytes(fig)


def _render_proxies_png(report: Mapping[str, Any]) -> bytes:
    """One small scatter per task: each proxy's score (min-max scaled per task, since proxies
    live on different scales) against the fine-tune test accuracy; one colour per proxy."""
    scores = report.get("proxy_scores") or {}
    tasks = _ordered_tasks(report)
    if not scores:
        return _note_png("proxy score against fine-tune accuracy", "no proxy scores in the records")
    proxies = list(scores)
    colors = _colors(proxies)
    ncols = min(5, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig = _figure(2.8 * ncols + 1.8, 2.5 * nrows + 0.4)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    acc = report["finetune_test_acc"]
    for ax, task in zip(axes, tasks):
        for p in proxies:
            by_model = scores[p].get(task) or {}
            models = [m for m in by_model if m in acc[task]]
            if not models:
                continue
            x = np.array([by_model[m] for m in models], dtype=float)
            span = float(x.max() - x.min())
            x = (x - x.min()) / span if span > 0 else np.full_like(x, 0.5)
            # plain markers draw much faster than scatter collections
            ax.plot(x, [acc[task][m] for m in models], "o", ms=2.5, alpha=0.7, color=colors[p], label=p)
        ax.set_title(task, fontsize="small")
        ax.tick_params(labelsize="x-small")
        ax.set_xlim(-0.05, 1.05)
    for ax in axes[len(tasks):]:
        ax.set_axis_off()
    fig.supxlabel("proxy score, min-max scaled per task", fontsize="small")
    fig.supylabel(f"{GROUND_TRUTH}", fontsize="small")
    handles = [axes[0].plot([], [], "o", ms=4, color=colors[p], label=p)[0] for p in proxies]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)
    return _png_bytes(fig, dpi=90)


_RENDERERS = {
    "md": lambda r: format_markdown(r).encode("utf-8"),
    "csv": lambda r: _render_csv(r).encode("utf-8"),
    "json": lambda r: (json.dumps(r, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8"),
    "png": lambda r: _render_png(r),
    "png_b2": lambda r: _render_png_b2(r),
    "png_zero": lambda r: _render_zero_png(r),
    "png_proxies": lambda r: _render_proxies_png(r),
}


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the report's files into ``out_dir`` and return their paths by kind:

    - ``md``: ``regret.md`` (:func:`format_markdown`);
    - ``csv``: ``regret.csv``, long ``strategy,budget,task,group,relative_regret,log_odds_regret``
      with task ``mean`` rows for each group (group = its name) and overall (group empty);
    - ``json``: ``regret.json``, ``json.dumps(report, indent=2, sort_keys=True)``;
    - ``png``: ``regret.png``, regret per task and strategy at B = 1 and the mean against B;
    - ``png_b2``: ``regret_b2.png``, the same at B = 2 (a note when B = 2 is not reported);
    - ``png_zero``: ``zero_regret.png``, fraction of tasks at zero regret against B (Figure 7)
      and the smallest zero-regret budget per task and strategy (Appendix G);
    - ``png_proxies``: ``proxies.png``, proxy score against fine-tune accuracy, one panel per task.

    Everything is rendered in memory first (matplotlib's Agg canvas, no pyplot state); each file
    is then written to a temporary file in ``out_dir`` and moved into place with ``os.replace``,
    so a failure leaves no partial file.
    """
    rendered = {kind: render(report) for kind, render in _RENDERERS.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / REPORT_FILES[kind] for kind in REPORT_FILES}
    for kind, data in rendered.items():
        _write_atomic(paths[kind], data)
    return paths
