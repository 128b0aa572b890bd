"""Regret report: score every model-search strategy on a pool.

:func:`compute_report` turns records (long ``model, task, metric, value``), optional model
metadata and optional ChoiceNet predictions into the JSON-serialisable dict documented below.
Rendering it is elsewhere: :mod:`selection.report_text` (terminal, Markdown, CSV),
:mod:`selection.report_plots` (PNG figures) and :func:`selection.report_files.write_report`
(every file, atomically).

Definitions (Renggli et al. 2022): for task t the pool is the pool's models that have
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

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from selection.checks import check_accuracies
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

MAX_BUDGET = 10  # Renggli et al. 2022: budgets B = 1 .. min(10, pool size)
CHOICENET_VERSIONS = ("v1", "v2")
ZERO = 1e-12  # regret at or below this counts as zero
_LISTED = 10  # model names quoted in an error message


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _check_max_budget(max_budget: object) -> int:
    if isinstance(max_budget, bool) or not isinstance(max_budget, (int, np.integer)) or max_budget < 1:
        raise ValueError(f"max_budget={max_budget!r} must be an integer >= 1")
    if max_budget > MAX_BUDGET:
        raise ValueError(f"max_budget={max_budget!r}: budgets go up to {MAX_BUDGET} "
                         f"(Renggli et al. 2022: B = 1 .. min(10, pool size)); pass at most {MAX_BUDGET}")
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
        check_accuracies(values.to_numpy(), f"predictions[{name!r}]",
                         lambda ij, v=values: f": model {v.index[ij[0]]!r}, task {v.columns[ij[1]]!r}")
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
