"""What each strategy spent in compute, from the seconds the runs logged, and the strategies
that buy the least regret for their compute (the Pareto frontier).

Records carry seconds as rows of their own (``time/features``, ``time/proxy/<p>`` of a probe,
``time/finetune`` of a fine-tune: compute in the protocol's work, not a trial's loading). Per task
and budget B a strategy spends (summed over the report's tasks):

- ``decision_s``, to choose its picks: a proxy (and its hybrid) the pool's probes -- the frozen
  forward pass and that proxy (the early-stop proxy: its short fine-tunes only); an ensemble and
  the records learner the probes of the proxies they read, ChoiceNet v3 all of them; the learned
  strategies also their fit (``timings``: the report's ``strategy_seconds``, and ChoiceNet's and
  Task2Vec's embeddings and fits, :func:`add_fit_seconds`); task-agnostic, the static rankings,
  random and the leave-one-task-out oracle nothing; the bounds that read the task's results
  (``per_task_best``, the exhaustive search, and ``task_agnostic_oracle``) every fine-tune of
  the pool; the budgeted search its measured or replayed steps (:func:`add_search_compute`);
- ``finetune_s``, its B picks' fine-tunes: the expectation over its tie orders and random
  subsets, as s(S) is (0 for the bounds: their decision fine-tuned everything).

A value that is not known (a pair without logged seconds) is null, never 0. The frontier
(:func:`frontier`) is every (strategy, B) with a known total and mean relative regret that no
other beats on both (less or equal compute and lower regret); the exhaustive search sits on it
at zero regret.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from selection.learners import CHOICENET_RECORDS, ENSEMBLE_PREFIX, ensemble_proxies
from selection.nearest_task import NEAREST_TASK
from selection.records import PROXY_PREFIX

TIME_PREFIX = "time/"
FEATURES_S, FINETUNE_S, PROXY_S = "time/features", "time/finetune", "time/proxy/"
EARLY_STOP = "proxy/early_stop"
EXHAUSTIVE = ("per_task_best", "task_agnostic_oracle")  # read every fine-tune of the task
FREE = ("task_agnostic", "random", "task_agnostic_oracle_loto")  # and static:<column>
SEARCH = "search/asha"  # the budgeted search's entry (sweeps.search)
LEARNED_FITS = {"choicenet_v1": ("v1",), "choicenet_v2": ("v2",), "choicenet_v3": ("v3",)}


def seconds_of(clean) -> dict[tuple[str, str, str], float]:
    """(model, task, metric) -> seconds (median of repeated rows) of the records' ``time/``
    rows."""
    rows = clean[clean["metric"].str.startswith(TIME_PREFIX)]
    if rows.empty:
        return {}
    grouped = rows.groupby(["model", "task", "metric"])["value"].median()
    return {key: float(v) for key, v in grouped.items()}


def probes_used(name: str, proxies: Sequence[str]) -> list[str] | None:
    """The proxy metrics whose probes a strategy reads (None: a strategy this module does not
    know the cost of; the bounds are handled apart)."""
    if name.startswith(PROXY_PREFIX):
        return [name]
    if name.startswith("hybrid:"):
        inner = name.split(":", 1)[1]
        return [inner] if inner.startswith(PROXY_PREFIX) else []
    if name.startswith(ENSEMBLE_PREFIX):
        return ensemble_proxies(name, proxies)
    if name in (CHOICENET_RECORDS, "choicenet_v3"):
        return list(proxies)
    if name in FREE or name.startswith("static:") or name in ("choicenet_v1", "choicenet_v2",
                                                              NEAREST_TASK):
        return []
    return None


def probe_seconds(times, task: str, models: Sequence[str], proxies: Sequence[str]
                  ) -> float | None:
    """The probes of ``proxies`` on the task's pool: the frozen pass once per model (when a
    feature proxy is read) and each proxy; a model whose probe logged no time makes it null.
    A proxy with no time on a probed model did not run there (LEEP without a source head): 0."""
    feature = [p for p in proxies if p != EARLY_STOP]
    total = 0.0
    for m in models:
        if EARLY_STOP in proxies:
            value = times.get((m, task, PROXY_S + "early_stop"))
            if value is None:
                return None
            total += value
        if feature:
            base = times.get((m, task, FEATURES_S))
            if base is None:
                return None
            total += base + sum(times.get((m, task, PROXY_S + p[len(PROXY_PREFIX):]), 0.0)
                                for p in feature)
    return total


def expected_finetune(mixture, budget: int, tuned: Mapping[str, float | None]) -> float | None:
    """The expected fine-tune seconds of the first ``budget`` picks of a mixture of rankings
    (each a list of tie groups): a group B cuts is a uniformly random subset, so each of its
    models is picked with probability (places left) / (group size)."""
    total = 0.0
    for weight, groups in mixture:
        left, part = budget, 0.0
        for group in groups:
            if left <= 0:
                break
            values = [tuned.get(m) for m in group]
            if any(v is None for v in values):
                return None
            part += sum(values) * min(1.0, left / len(group))
            left -= len(group)
        total += weight * part
    return total


def compute_section(inputs, scored, names: Sequence[str], strategies: Mapping[str, Any],
                    fit_seconds: Mapping[str, float] | None = None) -> dict[str, Any]:
    """``compute``, ``compute_finetune_s`` and ``compute_frontier`` of a report (module
    docstring); ``strategies``: the report's relative regret (for the frontier);
    ``fit_seconds``: the learners' build time to add (None: timings off)."""
    times = seconds_of(inputs.clean)
    if not times:
        return {"compute": {}, "compute_finetune_s": {}, "compute_frontier": []}
    view, budgets = inputs.view, inputs.budgets
    tuned = {t: {m: times.get((m, t, FINETUNE_S)) for m in view.task_pool[t]} for t in inputs.tasks}
    compute = {}
    for n in names:
        decision = _decision(n, inputs, times, tuned)
        if decision is not None and fit_seconds and n in fit_seconds and _learned(n):
            decision += fit_seconds[n]
        compute[n] = {}
        for b in budgets:
            if n in EXHAUSTIVE:
                spent = 0.0
            else:
                parts = [expected_finetune(scored[n][t].mixture, b, tuned[t]) for t in inputs.tasks]
                spent = None if any(p is None for p in parts) else sum(parts)
            compute[n][str(b)] = _block(decision, spent)
    report = {"compute": compute, "compute_finetune_s": tuned, "strategies": strategies}
    return {"compute": compute, "compute_finetune_s": tuned, "compute_frontier": frontier(report)}


def _learned(name: str) -> bool:
    return name == CHOICENET_RECORDS or name.startswith(ENSEMBLE_PREFIX) or name in LEARNED_FITS \
        or name == NEAREST_TASK


def _decision(name: str, inputs, times, tuned) -> float | None:
    """A strategy's decision seconds summed over the report's tasks (module docstring)."""
    if name in EXHAUSTIVE:
        values = [v for t in inputs.tasks for v in tuned[t].values()]
        return None if any(v is None for v in values) else sum(values)
    used = probes_used(name, inputs.proxies)
    if used is None:
        return None
    if not used:
        return 0.0
    parts = [probe_seconds(times, t, inputs.view.task_pool[t], used) for t in inputs.tasks]
    return None if any(p is None for p in parts) else sum(parts)


def _block(decision: float | None, finetune: float | None) -> dict[str, float | None]:
    total = None if decision is None or finetune is None else decision + finetune
    return {"decision_s": decision, "finetune_s": finetune, "total_s": total}


def add_fit_seconds(report: dict[str, Any], fits: Mapping[str, float]) -> None:
    """Add each learned strategy's fit (its embeddings included) to its decision seconds at
    every budget (ChoiceNet's and Task2Vec's, known once the report's learners ran), and
    recompute the frontier."""
    compute = report.get("compute") or {}
    for name, seconds in fits.items():
        for block in (compute.get(name) or {}).values():
            if block["decision_s"] is not None:
                block["decision_s"] += float(seconds)
                block.update(_block(block["decision_s"], block["finetune_s"]))
    if compute:
        report["compute_frontier"] = frontier(report)


def learned_fits(extra: Mapping[str, Any]) -> dict[str, float]:
    """The fit seconds of ChoiceNet v1-v3 (their embeddings included) and of the nearest task
    (Task2Vec), from the learners' report keys (``choicenet_seconds``, ``nearest_task``); the
    hybrid of the nearest task pays its Task2Vec too."""
    out = {}
    chosen = extra.get("choicenet_seconds") or {}
    for name, versions in LEARNED_FITS.items():
        if all(v in chosen for v in versions):
            out[name] = sum(chosen[v] for v in versions) + float(chosen.get("embeddings", 0.0))
    near = (extra.get("nearest_task") or {}).get("seconds")
    if near is not None:
        out[NEAREST_TASK] = out["hybrid:" + NEAREST_TASK] = float(near)
    return out


def add_search_compute(report: dict[str, Any], per_task: Mapping[str, Mapping[str, Any]],
                       run_share: float) -> None:
    """The budgeted search's compute at B = 1: its steps (a fraction of the exhaustive steps at
    its learning rates, measured or replayed) at the seconds per step of the task's fine-tunes
    (``run_share``: the share of a pair's fine-tune seconds its searched runs are, e.g. one
    learning rate of two at repetition 0 of two: 1/4), then its pick's fine-tune."""
    tuned = report.get("compute_finetune_s") or {}
    decision, finetune = 0.0, 0.0
    for task, result in per_task.items():
        seconds = tuned.get(task) or {}
        fraction = (result["steps"] / result["exhaustive_steps"]
                    if result.get("exhaustive_steps") else None)
        values = list(seconds.values())
        pick = seconds.get(result.get("pick"))
        if fraction is None or not values or any(v is None for v in values) or pick is None:
            decision = finetune = None
            break
        decision += fraction * run_share * sum(values)
        finetune += pick
    if "compute" in report and report["compute"]:
        report["compute"][SEARCH] = {"1": _block(decision, finetune)}
        report["compute_frontier"] = frontier(report)


def points(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every (strategy, B) with a known total compute and mean relative regret: the strategies
    that one can use, the exhaustive search (``per_task_best``) and the budgeted search."""
    out = []
    for name, by_b in (report.get("compute") or {}).items():
        if name == "task_agnostic_oracle":
            continue  # a bound that reads the task's results: not a way to choose
        for b, block in by_b.items():
            if name == SEARCH:
                mean = (report.get("budgeted_search") or {}).get("mean_relative_regret")
            else:
                mean = ((report.get("strategies") or {}).get(name, {}).get(b) or {}).get("mean")
            if block["total_s"] is not None and mean is not None and math.isfinite(mean):
                out.append({"strategy": name, "budget": int(b), "total_s": block["total_s"],
                            "mean_regret": float(mean)})
    return out


def frontier(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Pareto frontier of :func:`points`, cheapest first: each point has lower mean regret
    than every point that costs no more (ties in compute: the lower regret; in both: the first
    in report order)."""
    best = math.inf
    out = []
    for p in sorted(points(report), key=lambda p: (p["total_s"], p["mean_regret"])):
        if p["mean_regret"] < best:
            out.append(p)
            best = p["mean_regret"]
    return out
