"""The report's sections beyond regret: the static baseline to beat, rank agreement of each
proxy with the fine-tune accuracy, the proxies' coverage and Appendix G's zero-regret budgets
per named pool."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from selection.rank_agreement import pearson, weighted_tau, weighted_tau_scipy_default
from selection.rankings import Strategy
from selection.report.inputs import PoolView, ReportInputs
from selection.scoring import full_zero_regret_budget, score_strategies
from selection.strategies import STATIC_PREFIX


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


def appendix_g(built: Mapping[str, Strategy], inputs: ReportInputs, s
               ) -> dict[str, dict[str, dict[str, int]]]:
    """Appendix G's table: per pool and task, the smallest zero-regret budget over the whole pool
    of the task-agnostic oracle, each proxy and task-agnostic (``per_task_best`` is always 1);
    ``s``: the report's settings (its pool and named pools)."""
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
