"""Regret report: score every model-search strategy on a pool.

:func:`compute_report` turns records (long ``model, task, metric, value``), optional model
metadata and optional ChoiceNet predictions into the JSON-serialisable dict documented below.
Rendering it is elsewhere: :mod:`selection.report.text` (terminal, Markdown, CSV),
:mod:`selection.report.plots` (PNG figures) and :func:`selection.report.files.write_report`
(every file, atomically).

Definitions (Renggli et al. 2022, Sec. 3): for task t the pool is the pool's models that have a
``finetune_test_acc`` for t (a missing pair is simply not in that task's pool); s* is the best
accuracy in it; with budget B a strategy's picks S are its first B models, a uniformly random
subset of the tie group B cuts, and s(S) is the *expected* best accuracy among them -- the
expectation over the strategy's randomness, tie orders and random subsets included
(:mod:`selection.outcomes`). Every measure is taken of s(S): relative regret
(s* - s(S)) / (1 - min(s*, s(S))), absolute regret s* - s(S), log-odds regret (Appendix C), and
deltas between two strategies (Eq. 2; positive: the first is better). ``random`` is the whole
pool as one tie group. A budget larger than a task's pool picks the whole pool. Budgets are
B = 1 .. min(max_budget, largest task pool); max_budget <= 10 is this project's cap (the
paper's figures go to 10), not a rule of the paper.

JSON (stable; budget keys are strings "1".."10"; ``null`` wherever a value does not exist)::

    pool: str                        # the pool's name
    models: [model]                  # the pool's models (sorted)
    models_without_results: [model]  # pool models with no finetune_test_acc on any reported task
    warnings: [str]                  # inputs the report says little about (one line each; its top)
    tasks: [task]                    # reported tasks (sorted): those with >= 1 pool model result
    task_groups: {task: group|null}
    skipped_tasks: [task]            # tasks in the records with no result in the pool
    budgets: [1, 2, ...]
    strategy_order: [strategy]       # task_agnostic, static:<column>, proxies, hybrids, oracles,
                                     # predicted tables (choicenet_*, nearest_task), per_task_best,
                                     # random
    tie_tolerance: float             # the task-agnostic rule's approximate ties
    strategies: {strategy: {"B": {mean, per_task: {task}, per_group: {group}}}}  # relative regret
    absolute: {same shape}                                                       # s* - s(S)
    log_odds: {same shape}                                                       # log-odds regret
    deltas: {"<a> vs <b>": {"B": {mean, per_task, per_group}}}  # report.deltas, else the
                                     # paper's: hybrid:<p> vs <p>, task_agnostic vs <p>,
                                     # proxy/knn vs proxy/linear, hybrid:proxy/knn vs
                                     # hybrid:proxy/linear, hybrid:nearest_task vs nearest_task
    log_odds_deltas: {same shape}
    zero_regret_budget: {strategy: {task: B|null}}    # smallest *reported* B with regret 0
    zero_regret_budget_full: {strategy: {task: B}}    # smallest B over 1 .. task pool size
    zero_regret_fraction: {strategy: {"B": mean over tasks of P(the picks hold a best model)}}
                                                      # Figure 7 (random: B/n, one best of n)
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
    static_baseline: {"B": static:<column>}           # the static ranking of lowest mean regret
    beats_static: {"B": {strategy: p | null}}         # P(a proxy or learned strategy beats it)
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
    # Compute (selection/report/costs.py), from the records' time/... rows (seconds); {} and []
    # when the records have none; null where a pair's seconds are missing:
    compute: {strategy: {"B": {decision_s, finetune_s, total_s}}}  # summed over the tasks: the
                                     # decision (probes, a learner's fit, every fine-tune for the
                                     # bounds) and the expected fine-tunes of the B picks; also
                                     # "search/asha" {"1": ...} with a budgeted search
    compute_finetune_s: {task: {model: s|null}}       # each pair's logged fine-tune seconds
    compute_frontier: [{strategy, budget, total_s, mean_regret}]  # the Pareto frontier of mean
                                     # relative regret against total compute, cheapest first

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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from selection.noise import DRAWS, SEED, noise_section
from selection.pools import Pools
from selection.rankings import TIE_TOLERANCE, Strategy
from selection.records import (
    GROUND_TRUTH,
    POOL_ALL,
)
from selection.report.costs import compute_section
from selection.report.inputs import ReportInputs, input_warnings, prepare_inputs, task_accuracies
from selection.report.learned import learned_section
from selection.report.measures import agreement_section, appendix_g, coverage, static_section
from selection.scoring import (
    Scored,
    delta_pairs,
    full_zero_regret_budget,
    picks,
    score_strategies,
    strategy_deltas,
)
from selection.strategies import (
    create_strategy,
    list_strategies,
    metadata_columns,
)
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
        "warnings": input_warnings(inputs),  # one line each, repeated at the report's top
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
        **compute_section(inputs, scored, names, regret["strategies"],
                          seconds if s.timings else None),
        **noise,
    }





