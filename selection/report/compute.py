"""Regret report: score every model-search strategy on a pool.

:func:`compute_report` turns records (long ``model, task, metric, value``), optional model
metadata and optional ChoiceNet predictions into the JSON-serialisable dict documented below.
Rendering it is elsewhere: :mod:`selection.report.text` (terminal, Markdown, CSV),
:mod:`selection.report.plots` (PNG figures) and :func:`selection.report.files.write_report`
(every file, atomically).

Definitions (Renggli et al. 2022, Sec. 3): for task t the pool is the pool's models that have a
``finetune_test_acc`` for t (a missing pair is simply not in that task's pool); s* is the best
accuracy in it; with budget B a strategy's picks S are its first B models, a uniformly random
subset of the tie group B cuts, and s(S) is the best accuracy among them. Every measure is the
exact expectation over the tied orders (:mod:`selection.outcomes`): relative regret
(s* - s(S)) / (1 - min(s*, s(S))), absolute regret s* - s(S), log-odds regret (Appendix C), and
deltas between two strategies (Eq. 2; positive: the first is better). ``random`` is the whole
pool as one tie group. A budget larger than a task's pool picks the whole pool. Budgets are
B = 1 .. min(max_budget, largest task pool), max_budget <= 10.

JSON (stable; budget keys are strings "1".."10"; ``null`` wherever a value does not exist)::

    pool: str                        # the pool's name
    models: [model]                  # the pool's models (sorted)
    models_without_results: [model]  # pool models with no finetune_test_acc on any reported task
    tasks: [task]                    # reported tasks (sorted): those with >= 1 pool model result
    task_groups: {task: group|null}
    skipped_tasks: [task]            # tasks in the records with no result in the pool
    budgets: [1, 2, ...]
    strategy_order: [strategy]       # task_agnostic, proxies, hybrids, oracles, predicted tables
                                     # (choicenet_*, nearest_task), per_task_best, random
    tie_tolerance: float             # the task-agnostic rule's approximate ties
    strategies: {strategy: {"B": {mean, per_task: {task}, per_group: {group}}}}  # relative regret
    absolute: {same shape}                                                       # s* - s(S)
    log_odds: {same shape}                                                       # log-odds regret
    deltas: {"<a> vs <b>": {"B": {mean, per_task, per_group}}}  # hybrid:<p> vs <p>,
                                                                # task_agnostic vs <p>
    log_odds_deltas: {same shape}
    zero_regret_budget: {strategy: {task: B|null}}    # smallest *reported* B with regret 0
    zero_regret_budget_full: {strategy: {task: B}}    # smallest B over 1 .. task pool size
    zero_regret_fraction: {strategy: {"B": fraction of tasks with regret 0}}       # Figure 7
    appendix_g: {pool: {task: {strategy: B}}}         # Appendix G: task_agnostic_oracle, each
                                                      # proxy, task_agnostic; every named pool
    weighted_tau: {proxy: {task: tau|null}}  # scipy.stats.weightedtau(acc, score, rank=None)
    weighted_tau_scipy_default: {same}       # scipy.stats.weightedtau(acc, score) (rank=True)
    pearson: {proxy: {task: r|null}}         # all over the task's pool models with a score,
                                             # in model-name order; null if < 2 or constant
    proxy_coverage: {proxy: {pairs, of, note}}        # pairs with a score; why some have none
    proxy_scores: {proxy: {task: {model: score}}}     # the task pool's scores (for the plots)
    choicenet: {"v1"|"v2"|<name>: {mse, n_pairs, per_task_mse: {task}, weighted_tau: {task},
                                   pearson: {task}}}  # mse null, n_pairs 0 without predictions;
                                   # also "choicenet_records" and "ensemble:..." (mse null)
    choicenet_study_claim: {claim, v1_mse, v2_mse, reduction, reproduced, same_direction}
                                     # reproduced: v2's MSE <= 20% of v1's; null without both
    picks: {strategy: {task: first max_budget models (tied models by name)}}
    finetune_test_acc: {task: {model: acc}}
    best_model: {task: model}                         # best per task, ties by name
    # How sure (selection/noise.py; draws resample test examples, repetitions and tasks):
    p_best: {task: {model: p} | null}      # P(model is the task's best); null: no noise estimate
    noise_floor: {task: r | null}          # expected relative regret of the observed best model
    noise_source: {task: "examples+repetitions" | "repetitions" | null}
    ci: {strategy: {"B": {low, high}}}     # 95% percentile interval of the mean relative regret
    better_than: {"B": {a: {b: p}}}        # P(a has the lower mean regret than b); ties 1/2
    within_noise: {"B": [strategy]}        # not beaten by the best non-oracle one at P >= 0.95
    above_noise_floor: {strategy: {"B": {task: bool | null}}}  # regret > the task's noise floor
    noise: {draws, seed, level, resampled}
    strategy_seconds: {strategy: s}  # with timings=True: building each strategy (a learner's fit)

Predicted tables: ``predictions={"choicenet_v1": table, "nearest_task": table}`` (index model,
columns task, predicted accuracy in [0, 1], NaN where none; made without the task's own results)
add one ranking strategy each; ChoiceNet's fill ``choicenet`` (``choicenet_v1`` reports as
``v1``), with MSE over the reported tasks' pool pairs that have a prediction. Ranking tables
(``rankings={"choicenet_v3": scores}``: any real score, higher first, e.g. ChoiceNet v3's
within-task z-scores) are strategies the same way, with rank agreement and no MSE.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from selection.learners import is_records_learner
from selection.noise import DRAWS, SEED, noise_section
from selection.pools import Pools, resolve_pool
from selection.rank_agreement import pearson, weighted_tau, weighted_tau_scipy_default
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
from selection.scoring import delta_pairs, full_zero_regret_budget, picks, score_strategies, strategy_deltas
from selection.strategies import (
    TIE_TOLERANCE,
    ScoreStrategy,
    check_predicted_name,
    create_strategy,
    list_strategies,
)
from whichmodel.accuracy import check_accuracies

MAX_BUDGET = 10  # Renggli et al. 2022: budgets B = 1 .. min(10, pool size)
CHOICENET_VERSIONS = ("v1", "v2")
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


def _check_predictions(predictions: Mapping[str, pd.DataFrame] | None, accuracies: bool = True
                       ) -> dict[str, pd.DataFrame]:
    """Predicted-accuracy tables: index model, columns task, values in [0, 1] or NaN (with
    ``accuracies=False``: ranking scores, any real number or NaN)."""
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
        if accuracies:
            check_accuracies(values.to_numpy(), f"predictions[{name!r}]",
                             lambda ij, v=values: f": model {v.index[ij[0]]!r}, task {v.columns[ij[1]]!r}")
        elif np.isinf(values.to_numpy()).any():
            raise ValueError(f"rankings[{name!r}]: infinite scores; use finite numbers or NaN")
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
    tie_tolerance: float = TIE_TOLERANCE,
    proxy_notes: Mapping[str, str] | None = None,
    test_results: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    noise_draws: int = DRAWS,
    noise_seed: int = SEED,
    timings: bool = False,
    rankings: Mapping[str, pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """Regret of each strategy on each task of ``pool`` for budgets B = 1 .. min(max_budget, pool size).

    ``records`` are validated and repeated rows aggregated by median. The pool's models are
    ``pool_models`` if given, else ``pools[pool]`` (named lists), else every model of the
    records for ``pool="all"``, else the models whose metadata ``pools`` field names ``pool``
    (:func:`selection.pools.resolve_pool`). Per task, the pool is the pool's models with a
    ``finetune_test_acc`` for that task; tasks with none are listed under ``skipped_tasks``.
    Pool size for the budget range is the largest per-task pool; ``max_budget`` is at most 10.

    ``strategies`` defaults to :func:`selection.strategies.list_strategies` of the proxies present
    and the ``predictions`` given. ``predictions`` maps a strategy name (``choicenet_v1``,
    ``nearest_task`` ...) to predicted accuracies (index model, columns task, NaN where none).
    ``task_groups`` maps task -> group (e.g. natural/specialized/structured); tasks it does not
    name get group None and no group mean. ``tie_tolerance``: the task-agnostic rule's
    approximate ties. ``proxy_notes``: why a proxy may have no score (shown where it has none).
    Appendix G's table is computed for ``pool`` and for every named pool of ``pools``.
    ``test_results[task][model]``: per-example test results (repetitions, examples; 1 where
    right) for the noise keys (:mod:`selection.noise`, ``noise_draws`` draws from
    ``noise_seed``); repeated ``finetune_test_acc`` rows count as repetitions. ``timings``: add
    the seconds each strategy took to build (the learners fit then), which vary run to run.

    Returns the JSON-serialisable dict documented in the module docstring.
    """
    max_budget = _check_max_budget(max_budget)
    predicted = _check_predictions(predictions)
    ranked = _check_predictions(rankings, accuracies=False)
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
    view = _PoolView(truth, members)
    tasks, task_pool, task_accs = view.tasks, view.task_pool, view.task_accs
    if not tasks:
        raise RecordsError(
            f"pool {pool!r}: none of its {len(members)} model(s) {members[:_LISTED]} has a "
            f"'{GROUND_TRUTH}' on any task; check the pool's model names against the records"
        )
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
    scores.update(ranked)
    names = (list(strategies) if strategies is not None
             else list_strategies(proxies, [*predicted, *ranked]))
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"strategies: {duplicates} listed more than once; list each strategy once")
    built, seconds = {}, {}
    for name in names:  # timed: the learned strategies fit here (choicenet_records)
        start = time.perf_counter()
        built[name] = create_strategy(name, scores, meta, tie_tolerance=tie_tolerance)
        seconds[name] = time.perf_counter() - start
    scored = score_strategies(built, tasks, task_pool, task_accs, budgets)
    b_keys = [str(b) for b in budgets]

    def summary(per_task_by_b: list[dict[str, float]]) -> dict[str, Any]:
        return {b: {"mean": _mean(list(per_task_by_b[k].values())), "per_task": per_task_by_b[k],
                    "per_group": {g: _mean([per_task_by_b[k][t] for t in tasks if groups[t] == g])
                                  for g in group_names}}
                for k, b in enumerate(b_keys)}

    def shape(measure: str) -> dict[str, Any]:
        return {name: summary([{t: float(getattr(scored[name][t], measure)[k]) for t in tasks}
                               for k in range(len(budgets))]) for name in names}

    zero = {name: {t: scored[name][t].zero() for t in tasks} for name in names}
    zero_budget = {name: {t: next((budgets[k] for k, z in enumerate(zero[name][t]) if z), None)
                          for t in tasks} for name in names}
    zero_fraction = {name: {b: float(np.mean([zero[name][t][k] for t in tasks]))
                            for k, b in enumerate(b_keys)} for name in names}
    accs = {t: dict(zip(task_pool[t], task_accs[t].tolist())) for t in tasks}
    zero_full = {name: {t: full_zero_regret_budget(scored[name][t], accs[t]) for t in tasks}
                 for name in names}
    rel_deltas, lo_deltas = strategy_deltas(scored, delta_pairs(names, proxies), tasks,
                                            len(budgets), log_odds_eps)

    truth_rows = clean[clean["metric"] == GROUND_TRUTH]
    reps = {key: g.to_numpy(dtype=float)
            for key, g in truth_rows.groupby(["model", "task"])["value"]}
    strategies_out = shape("relative")
    noise = noise_section(tasks, task_pool, task_accs,
                          {n: {t: scored[n][t].groups for t in tasks} for n in names}, budgets,
                          strategies_out, reps, test_results, noise_draws, noise_seed)
    agreement, proxy_scores = _agreement(scores, proxies, view)
    choicenet = {v: _empty_choicenet(tasks) for v in CHOICENET_VERSIONS}
    for name, table in [*predicted.items(), *ranked.items()]:
        if name.startswith("choicenet"):
            block = _prediction_summary(view.values(table), task_accs, tasks)
            if name in ranked:  # ranking scores, not accuracies: no squared error
                block.update(mse=None, per_task_mse={t: None for t in tasks})
            choicenet[_choicenet_key(name)] = block
    for name in names:  # the records learners rank by scores: rank agreement, no squared error
        if is_records_learner(name) and isinstance(built[name], ScoreStrategy):
            block = _prediction_summary(view.values(built[name].table), task_accs, tasks)
            choicenet[name] = {**block, "mse": None, "per_task_mse": {t: None for t in tasks}}
    v1_mse, v2_mse = choicenet["v1"]["mse"], choicenet["v2"]["mse"]
    both = v1_mse is not None and v2_mse is not None and v1_mse > 0
    claim = {"claim": "the ChoiceNet study: v2 cuts v1's MSE by 80%", "v1_mse": v1_mse,
             "v2_mse": v2_mse, "reduction": 1 - v2_mse / v1_mse if both else None,
             "reproduced": bool(v2_mse <= 0.2 * v1_mse) if both else None,
             "same_direction": bool(v2_mse < v1_mse) if both else None}
    return {
        "pool": pool,
        "models": members,
        "models_without_results": [m for m in members if m not in with_results],
        "tasks": tasks,
        "task_groups": groups,
        "skipped_tasks": view.skipped,
        "budgets": budgets,
        "strategy_order": names,
        "tie_tolerance": tie_tolerance,
        "strategies": strategies_out,
        "absolute": shape("absolute"),
        "log_odds": shape("log_odds"),
        "deltas": {k: summary(v) for k, v in rel_deltas.items()},
        "log_odds_deltas": {k: summary(v) for k, v in lo_deltas.items()},
        "zero_regret_budget": zero_budget,
        "zero_regret_budget_full": zero_full,
        "zero_regret_fraction": zero_fraction,
        "appendix_g": _appendix_g(built, truth, pool, members, pools, proxies),
        **agreement,
        "proxy_coverage": _coverage(proxy_scores, proxies, task_pool, proxy_notes or {}),
        "proxy_scores": proxy_scores,
        "choicenet": choicenet,
        "choicenet_study_claim": claim,
        "picks": {name: {t: picks(scored[name][t], max_budget) for t in tasks} for name in names},
        "finetune_test_acc": accs,
        "best_model": {t: task_pool[t][int(np.argmax(task_accs[t]))] for t in tasks},
        **({"strategy_seconds": seconds} if timings else {}),
        **noise,
    }


class _PoolView:
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


def _agreement(scores: Mapping[str, pd.DataFrame], proxies: list[str], view: _PoolView):
    """Rank agreement of each proxy with the fine-tune accuracy per task, and the scores."""
    out: dict[str, dict[str, dict[str, float | None]]] = {
        "weighted_tau": {}, "weighted_tau_scipy_default": {}, "pearson": {}}
    proxy_scores: dict[str, dict[str, dict[str, float]]] = {}
    for p in proxies:
        values = view.values(scores[p])
        for key in out:
            out[key][p] = {}
        proxy_scores[p] = {}
        for t in view.tasks:
            a, s = view.task_accs[t], values[t]
            out["weighted_tau"][p][t] = weighted_tau(a, s)
            out["weighted_tau_scipy_default"][p][t] = weighted_tau_scipy_default(a, s)
            out["pearson"][p][t] = pearson(a, s)
            proxy_scores[p][t] = {m: float(v) for m, v in zip(view.task_pool[t], s.tolist())
                                  if math.isfinite(v)}
    return out, proxy_scores


def _coverage(proxy_scores, proxies, task_pool, notes: Mapping[str, str]) -> dict[str, Any]:
    """Pairs with a score of each proxy, and why there may be none (a NaN is no score)."""
    out = {}
    for p in proxies:
        have = sum(len(proxy_scores[p][t]) for t in task_pool)
        total = sum(len(v) for v in task_pool.values())
        out[p] = {"pairs": have, "of": total,
                  "note": notes.get(p.removeprefix("proxy/")) if have < total else None}
    return out


def _appendix_g(built, truth: pd.DataFrame, pool: str, members: list[str], pools: Pools | None,
                proxies: list[str]) -> dict[str, dict[str, dict[str, int]]]:
    """Appendix G's table: per pool and task, the smallest zero-regret budget over the whole pool
    of the task-agnostic oracle, each proxy and task-agnostic (``per_task_best`` is always 1)."""
    wanted = [n for n in ("task_agnostic_oracle", *proxies, "task_agnostic") if n in built]
    named = {pool: members, **{k: sorted(v) for k, v in (pools or {}).items()}}
    out = {}
    for name, models in named.items():
        view = _PoolView(truth, [m for m in models if m in truth.index])
        if not view.tasks:
            continue
        scored = score_strategies({n: built[n] for n in wanted}, view.tasks, view.task_pool,
                                  view.task_accs, [1])
        out[name] = {t: {n: full_zero_regret_budget(
                            scored[n][t], dict(zip(view.task_pool[t], view.task_accs[t].tolist())))
                         for n in wanted} for t in view.tasks}
    return out


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
