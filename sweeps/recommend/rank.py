"""Which strategies a new task can use, and the pool's ranking by one of them from the
experiment's records (the task's own fine-tune results blanked out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from selection.records import GROUND_TRUTH
from sweeps.learned import LEARNED
from whichmodel.errors import WhichModelError


def usable_strategies(proxies: list[str]) -> list[str]:
    """The strategies recommend can use with these proxy metrics: none reads the task's results."""
    from selection.learners import CHOICENET_RECORDS, ENSEMBLE_PREFIX
    from selection.strategies import get_strategy_spec, list_strategies

    names = [n for n in list_strategies(proxies, list(LEARNED))
             if not get_strategy_spec(n, proxies, list(LEARNED)).uses_task_results]
    extra = [CHOICENET_RECORDS] if CHOICENET_RECORDS not in names else []
    return names + extra + ([f"{ENSEMBLE_PREFIX}<p1>+<p2>"] if len(proxies) > 1 else [])


def check_strategy(name: str, proxies: list[str], models: list[str], task: str) -> None:
    """An unknown strategy, or one that needs this task's fine-tune results, is a named error."""
    import numpy as np

    from selection.strategies import UnknownStrategyError, create_strategy, get_strategy_spec

    usable = usable_strategies(proxies)
    try:
        spec = get_strategy_spec(name, proxies, list(LEARNED))
    except UnknownStrategyError:
        raise WhichModelError(f"--strategy {name!r}: unknown here; usable with this sweep's proxies: "
                              f"{', '.join(usable)}") from None
    if spec.uses_task_results:
        raise WhichModelError(f"--strategy {name!r} reads this task's fine-tune results (a bound "
                              f"for reports, not a way to choose); usable: {', '.join(usable)}")
    blank = pd.DataFrame(np.nan, index=models, columns=[task])
    # an ensemble of a proxy the sweep lacks: UnknownStrategyError, naming the strategy
    create_strategy(name, {**{p: blank for p in [*proxies, *LEARNED]}, GROUND_TRUTH: blank})


def strategy_from_report(tracker, budget: int, proxies: list[str]) -> tuple[str, dict[str, Any]]:
    """The usable strategy with the lowest mean relative regret at ``budget`` (or the report's
    largest budget below it) in the experiment's latest report run."""
    import tempfile

    runs = [r for r in tracker.search("tags.protocol = 'report'")]
    if not runs:
        raise WhichModelError(f"--from-report {tracker.experiment!r}: the experiment has no report "
                              "run; run 'whichmodel report --experiment NAME' first")
    latest = max(runs, key=lambda r: r.info.end_time or r.info.start_time or 0)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracker.client.download_artifacts(latest.info.run_id, "report/regret.json", tmp)
        except Exception:  # noqa: BLE001 -- MLflow raises several kinds for a missing artifact
            raise WhichModelError(f"--from-report {tracker.experiment!r}: its latest report run "
                                  f"{latest.info.run_id} has no report/regret.json; report again"
                                  ) from None
        report = json.loads(Path(path).read_text())
    b = str(min(budget, max(report["budgets"])))
    usable = set(usable_strategies(proxies))
    means = {n: block[b]["mean"] for n, block in report["strategies"].items()
             if n in usable and block.get(b, {}).get("mean") is not None}
    if not means:
        raise WhichModelError(f"--from-report {tracker.experiment!r}: no strategy of its report is "
                              f"usable here ({', '.join(sorted(usable))})")
    best = min(means, key=lambda n: (means[n], n))
    return best, {"run_id": latest.info.run_id, "budget": int(b), "mean_regret": means[best]}


def score_of(strategy, task: str, model: str) -> float | None:
    """The strategy's own score of the model on the task, where it has one (a proxy, the
    hybrid's proxy, the ensemble, a learner); None for order-only rules (task-agnostic)."""
    table = getattr(strategy, "table", None)
    if table is None and hasattr(strategy, "proxy"):
        table = strategy.proxy.table
    if table is None or task not in table.columns or model not in table.index:
        return None
    value = float(table.at[model, task])
    return value if value == value else None


def rank_pool(tracker, hashes, name: str, task: str, members: list[str], tie_tolerance: float,
              order: list[str], learned=None):
    """The strategy's ranking of the pool on the task from the experiment's records, with the
    task's own fine-tune results blanked out; (ranking rows, tie groups). Each row's proxies in
    ``order`` (the sweep's), then any other. ``learned(records, metadata)``: the table of a
    strategy learned from the other tasks (:func:`sweeps.learned.learned_table`)."""
    from selection.records import (
        aggregate_records,
        list_proxy_metrics,
        pivot_metric,
        validate_records,
    )
    from selection.strategies import create_strategy

    records, metadata, _ = tracker.records(hashes)
    records = validate_records(records, source="MLflow records")
    agg = aggregate_records(records)
    index = sorted(set(agg["model"]) | set(members))
    scores = {m: pivot_metric(agg, m).reindex(index=index) for m in list_proxy_metrics(agg)}
    truth = (pivot_metric(agg, GROUND_TRUTH) if (agg["metric"] == GROUND_TRUTH).any()
             else pd.DataFrame(index=index)).reindex(index=index)
    truth[task] = float("nan")  # never the task's own results
    scores[GROUND_TRUTH] = truth
    if learned is not None:
        scores[name] = learned(records, metadata).reindex(index=index)
    for metric, table in scores.items():
        if task not in table.columns:
            scores[metric] = table.assign(**{task: float("nan")})
    strategy = create_strategy(name, scores, metadata, tie_tolerance=tie_tolerance)
    groups = strategy.rank_groups(task, list(members))
    proxies = sorted((m for m in scores if m.startswith("proxy/")),
                     key=lambda p: (order.index(p) if p in order else len(order), p))
    rows = []
    for k, group in enumerate(groups):
        for model in sorted(group):
            values = {p: scores[p].at[model, task] for p in proxies}
            rows.append({"model": model, "score": score_of(strategy, task, model), "tie_group": k,
                         "proxies": {p: float(v) for p, v in values.items() if v == v}})
    return rows, groups, truth.drop(columns=[task])
