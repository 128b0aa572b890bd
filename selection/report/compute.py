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
                                     # added by the ChoiceNet reporting code (sweeps.learned,
                                     # selection.report.learned.study_claim), not here
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

Settings are one typed object, :class:`ReportSettings` (``compute_report(records,
settings=ReportSettings(max_budget=5))``, or its fields as keywords). The stages, each a named
function: :func:`prepare_inputs` (validate, aggregate, the pool and each task's pool),
:func:`build_strategies`, then the sections -- :func:`regret_section`, :func:`zero_regret_section`,
:func:`selection.report.learned.learned_section`, agreement, noise -- merged into one dict.

Predicted tables: ``predictions={"choicenet_v1": table, "nearest_task": table}`` (index model,
columns task, predicted accuracy in [0, 1], NaN where none; made without the task's own results)
add one ranking strategy each; ChoiceNet's fill ``choicenet`` (``choicenet_v1`` reports as
``v1``), with MSE over the reported tasks' pool pairs that have a prediction. Ranking tables
(``rankings={"choicenet_v3": scores}``: any real score, higher first, e.g. ChoiceNet v3's
within-task z-scores) are strategies the same way, with rank agreement and no MSE.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from selection.noise import DRAWS, SEED, noise_section
from selection.pools import Pools, resolve_pool
from selection.rank_agreement import pearson, weighted_tau, weighted_tau_scipy_default
from selection.rankings import TIE_TOLERANCE, Strategy
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
from selection.report.learned import learned_section
from selection.scoring import (
    Scored,
    delta_pairs,
    full_zero_regret_budget,
    picks,
    score_strategies,
    strategy_deltas,
)
from selection.strategies import (
    STATIC_PREFIX,
    check_predicted_name,
    create_strategy,
    list_strategies,
    metadata_columns,
)
from whichmodel.accuracy import check_accuracies
from whichmodel.errors import InputError

MAX_BUDGET = 10  # Renggli et al. 2022: budgets B = 1 .. min(10, pool size)
_LISTED = 10  # model names quoted in an error message


@dataclass(frozen=True)
class ReportSettings:
    """What a report is of and how it is computed (every field has the default of a sweep file's
    ``report`` section or the library's): the pool (``pool``, its members ``pool_models`` or the
    named ``pools``), ``task_groups`` (task -> group; others get no group mean), the budgets
    1 .. ``max_budget`` (at most 10), ``strategies`` (default: every registered one the scores
    support), the log-odds clipping ``log_odds_eps``, the task-agnostic rule's ``tie_tolerance``,
    ``proxy_notes`` (why a proxy may have no score), the noise draws and seed, and ``timings``
    (add the seconds each strategy took to build, which vary run to run)."""

    pool: str = POOL_ALL
    pool_models: tuple[str, ...] | list[str] | None = None
    pools: Pools | None = None
    task_groups: Mapping[str, str | None] | None = None
    max_budget: int = 3
    strategies: tuple[str, ...] | list[str] | None = None
    deltas: tuple[str, ...] | list[str] | None = None  # "a vs b"; None: the paper's figures
    log_odds_eps: float = 1e-4
    tie_tolerance: float = TIE_TOLERANCE
    proxy_notes: Mapping[str, str] | None = None
    noise_draws: int = DRAWS
    noise_seed: int = SEED
    timings: bool = False

    def __post_init__(self) -> None:
        m = self.max_budget
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            raise InputError(f"max_budget={m!r} must be an integer >= 1")
        if m > MAX_BUDGET:
            raise InputError(f"max_budget={m!r}: budgets go up to {MAX_BUDGET} (this project's "
                             f"cap, as the paper's figures: B = 1 .. min(10, pool size)); pass at "
                             f"most {MAX_BUDGET}")
        if self.task_groups is not None and not isinstance(self.task_groups, Mapping):
            raise InputError(f"task_groups must map task -> group, got "
                             f"{type(self.task_groups).__name__}")
        names = list(self.strategies or [])
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InputError(f"strategies: {duplicates} listed more than once; list each "
                             "strategy once")

    @classmethod
    def of(cls, settings: ReportSettings | None = None, **overrides: Any) -> ReportSettings:
        """``settings`` (default: the defaults) with ``overrides`` of its fields."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(f"compute_report: unknown setting(s) {unknown}; settings: "
                            f"{', '.join(sorted(fields))}")
        return dataclasses.replace(settings or cls(), **overrides)


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


def prepare_inputs(records: pd.DataFrame, metadata: pd.DataFrame | None, s: ReportSettings,
                   predictions: Mapping[str, pd.DataFrame] | None = None,
                   rankings: Mapping[str, pd.DataFrame] | None = None) -> ReportInputs:
    """Validate the records and tables, aggregate repetitions (median), resolve the pool and each
    task's pool (the pool's models with a result), and the budgets."""
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


def build_strategies(inputs: ReportInputs, s: ReportSettings
                     ) -> tuple[list[str], dict[str, Strategy], dict[str, float]]:
    """(names, strategies, seconds to build each): the learned ones fit here."""
    names = (list(s.strategies) if s.strategies is not None
             else list_strategies(inputs.proxies, [*inputs.predicted, *inputs.ranked],
                                  metadata_columns(inputs.meta)))
    built, seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        built[name] = create_strategy(name, inputs.scores, inputs.meta,
                                      tie_tolerance=s.tie_tolerance)
        seconds[name] = time.perf_counter() - start
    return names, built, seconds


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(inputs: ReportInputs, per_task_by_b: list[dict[str, float]]) -> dict[str, Any]:
    """``{"B": {mean, per_task, per_group}}`` of per-task values at each budget."""
    group_names = sorted({g for g in inputs.groups.values() if g is not None})
    return {str(b): {"mean": _mean(list(per_task_by_b[k].values())), "per_task": per_task_by_b[k],
                     "per_group": {g: _mean([per_task_by_b[k][t] for t in inputs.tasks
                                             if inputs.groups[t] == g]) for g in group_names}}
            for k, b in enumerate(inputs.budgets)}


def regret_section(inputs: ReportInputs, scored: Mapping[str, Mapping[str, Scored]],
                   names: list[str], s: ReportSettings) -> dict[str, Any]:
    """Relative, absolute and log-odds regret of every strategy, and the deltas."""
    def shape(measure: str) -> dict[str, Any]:
        return {n: summarise(inputs, [{t: float(getattr(scored[n][t], measure)[k])
                                       for t in inputs.tasks}
                                      for k in range(len(inputs.budgets))]) for n in names}

    rel, lo = strategy_deltas(scored, delta_pairs(names, inputs.proxies, s.deltas), inputs.tasks,
                              len(inputs.budgets), s.log_odds_eps)
    return {"strategies": shape("relative"), "absolute": shape("absolute"),
            "log_odds": shape("log_odds"),
            "deltas": {k: summarise(inputs, v) for k, v in rel.items()},
            "log_odds_deltas": {k: summarise(inputs, v) for k, v in lo.items()}}


def zero_regret_section(inputs: ReportInputs, scored: Mapping[str, Mapping[str, Scored]],
                        names: list[str]) -> dict[str, Any]:
    """The smallest zero-regret budget (reported budgets; the whole pool: every order of the
    ties reaches zero regret) and Figure 7's curve (how often the picks hold a best model)."""
    tasks, budgets = inputs.tasks, inputs.budgets
    zero = {n: {t: scored[n][t].zero() for t in tasks} for n in names}
    accs = task_accuracies(inputs)
    return {
        "zero_regret_budget": {n: {t: next((budgets[k] for k, z in enumerate(zero[n][t]) if z),
                                           None) for t in tasks} for n in names},
        "zero_regret_budget_full": {n: {t: full_zero_regret_budget(scored[n][t], accs[t])
                                        for t in tasks} for n in names},
        # Figure 7: the mean over tasks of the probability that the picks hold a best model
        "zero_regret_fraction": {n: {str(b): float(np.mean([scored[n][t].p_best[k]
                                                            for t in tasks]))
                                     for k, b in enumerate(budgets)} for n in names},
    }


def task_accuracies(inputs: ReportInputs) -> dict[str, dict[str, float]]:
    view = inputs.view
    return {t: dict(zip(view.task_pool[t], view.task_accs[t].tolist())) for t in view.tasks}


def compute_report(records: pd.DataFrame, metadata: pd.DataFrame | None = None, *,
                   settings: ReportSettings | None = None,
                   predictions: Mapping[str, pd.DataFrame] | None = None,
                   rankings: Mapping[str, pd.DataFrame] | None = None,
                   test_results: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                   **overrides: Any) -> dict[str, Any]:
    """Regret of each strategy on each task of the pool for budgets B = 1 .. min(max_budget,
    pool size): the JSON-serialisable dict of the module docstring.

    ``records`` are validated and repeated rows aggregated by median. ``settings`` (or its fields
    as keywords, :class:`ReportSettings`) say which pool and how. The pool's models are
    ``pool_models`` if given, else ``pools[pool]`` (named lists), else every model of the records
    for ``pool="all"``, else the models whose metadata ``pools`` field names ``pool``
    (:func:`selection.pools.resolve_pool`). Per task, the pool is the pool's models with a
    ``finetune_test_acc`` for that task; tasks with none are listed under ``skipped_tasks``.
    ``predictions`` maps a strategy name (``choicenet_v1``, ``nearest_task`` ...) to predicted
    accuracies (index model, columns task, NaN where none); ``rankings`` to ranking scores.
    Appendix G's table is computed for the pool and every named pool of ``pools``.
    ``test_results[task][model]``: per-example test results (repetitions, examples; 1 where
    right) for the noise keys (:mod:`selection.noise`); repeated ``finetune_test_acc`` rows count
    as repetitions.
    """
    s = ReportSettings.of(settings, **overrides)
    inputs = prepare_inputs(records, metadata, s, predictions, rankings)
    names, built, seconds = build_strategies(inputs, s)
    view, tasks = inputs.view, inputs.tasks
    scored = score_strategies(built, tasks, view.task_pool, view.task_accs, inputs.budgets)
    regret = regret_section(inputs, scored, names, s)
    truth_rows = inputs.clean[inputs.clean["metric"] == GROUND_TRUTH]
    reps = {key: g.to_numpy(dtype=float)
            for key, g in truth_rows.groupby(["model", "task"])["value"]}
    noise = noise_section(tasks, view.task_pool, view.task_accs,
                          {n: {t: scored[n][t].mixture for t in tasks} for n in names},
                          inputs.budgets, regret["strategies"], reps, test_results,
                          s.noise_draws, s.noise_seed)
    agreement, proxy_scores = agreement_section(inputs)
    static = static_section(names, regret["strategies"], noise, inputs.budgets)
    with_results = {m for t in tasks for m in view.task_pool[t]}
    return {
        "pool": s.pool,
        "models": inputs.members,
        "models_without_results": [m for m in inputs.members if m not in with_results],
        "tasks": tasks,
        "task_groups": inputs.groups,
        "skipped_tasks": view.skipped,
        "budgets": inputs.budgets,
        "strategy_order": names,
        "tie_tolerance": s.tie_tolerance,
        **regret,
        **zero_regret_section(inputs, scored, names),
        "appendix_g": appendix_g(built, inputs, s),
        **agreement,
        "proxy_coverage": coverage(proxy_scores, inputs, s.proxy_notes or {}),
        "proxy_scores": proxy_scores,
        "choicenet": learned_section(inputs, names, built),
        "picks": {n: {t: picks(scored[n][t], s.max_budget) for t in tasks} for n in names},
        **static,
        "finetune_test_acc": task_accuracies(inputs),
        "best_model": {t: view.task_pool[t][int(np.argmax(view.task_accs[t]))] for t in tasks},
        **({"strategy_seconds": seconds} if s.timings else {}),
        **noise,
    }


#: the strategies measured against the best static ranking: proxies, hybrids, ensembles and the
#: learned ones (not the bounds, task-agnostic, random or the static rankings themselves)
def _against_static(name: str) -> bool:
    return not name.startswith(STATIC_PREFIX) and name not in (
        "task_agnostic", "random", "per_task_best", "task_agnostic_oracle")


def static_section(names: list[str], strategies: Mapping[str, Any], noise: Mapping[str, Any],
                   budgets: list[int]) -> dict[str, Any]:
    """The static baseline to beat at each budget (``static_baseline``: the ``static:*`` ranking
    with the lowest mean regret) and the probability that each proxy and learned strategy beats
    it (``beats_static``, from the same draws as ``better_than``; null without a noise estimate
    of any task)."""
    static = [n for n in names if n.startswith(STATIC_PREFIX)]
    if not static:
        return {"static_baseline": {}, "beats_static": {}}
    best, beats = {}, {}
    better = noise.get("better_than") or {}
    for b in map(str, budgets):
        best[b] = min(static, key=lambda n: (strategies[n][b]["mean"], static.index(n)))
        beats[b] = {n: (better[b][n][best[b]] if b in better else None)
                    for n in names if _against_static(n)}
    return {"static_baseline": best, "beats_static": beats}


def agreement_section(inputs: ReportInputs):
    """Rank agreement of each proxy with the fine-tune accuracy per task, and the scores."""
    view = inputs.view
    out: dict[str, dict[str, dict[str, float | None]]] = {
        "weighted_tau": {}, "weighted_tau_scipy_default": {}, "pearson": {}}
    proxy_scores: dict[str, dict[str, dict[str, float]]] = {}
    for p in inputs.proxies:
        values = view.values(inputs.scores[p])
        for key in out:
            out[key][p] = {}
        proxy_scores[p] = {}
        for t in view.tasks:
            a, sc = view.task_accs[t], values[t]
            out["weighted_tau"][p][t] = weighted_tau(a, sc)
            out["weighted_tau_scipy_default"][p][t] = weighted_tau_scipy_default(a, sc)
            out["pearson"][p][t] = pearson(a, sc)
            proxy_scores[p][t] = {m: float(v) for m, v in zip(view.task_pool[t], sc.tolist())
                                  if math.isfinite(v)}
    return out, proxy_scores


def coverage(proxy_scores, inputs: ReportInputs, notes: Mapping[str, str]) -> dict[str, Any]:
    """Pairs with a score of each proxy, and why there may be none (a NaN is no score)."""
    out = {}
    task_pool = inputs.view.task_pool
    total = sum(len(v) for v in task_pool.values())
    for p in inputs.proxies:
        have = sum(len(proxy_scores[p][t]) for t in task_pool)
        out[p] = {"pairs": have, "of": total,
                  "note": notes.get(p.removeprefix("proxy/")) if have < total else None}
    return out


def appendix_g(built: Mapping[str, Strategy], inputs: ReportInputs, s: ReportSettings
               ) -> dict[str, dict[str, dict[str, int]]]:
    """Appendix G's table: per pool and task, the smallest zero-regret budget over the whole pool
    of the task-agnostic oracle, each proxy and task-agnostic (``per_task_best`` is always 1)."""
    wanted = [n for n in ("task_agnostic_oracle", *inputs.proxies, "task_agnostic") if n in built]
    named = {s.pool: inputs.members, **{k: sorted(v) for k, v in (s.pools or {}).items()}}
    out = {}
    for name, models in named.items():
        view = PoolView(inputs.truth, [m for m in models if m in inputs.truth.index])
        if not view.tasks:
            continue
        scored = score_strategies({n: built[n] for n in wanted}, view.tasks, view.task_pool,
                                  view.task_accs, [1])
        out[name] = {t: {n: full_zero_regret_budget(
                            scored[n][t], dict(zip(view.task_pool[t], view.task_accs[t].tolist())))
                         for n in wanted} for t in view.tasks}
    return out
