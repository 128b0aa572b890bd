"""``whichmodel recommend``: which model to fine-tune for my task, at my budget of B fine-tunes.

    whichmodel recommend --task faces --budget 2 --config sweeps/configs/quickstart.yaml
    recommend("path/to/imagefolder", 2, config="sweeps/configs/quickstart.yaml")   # -> dict

1. The probe trials of every model of the pool on the task, on Ray Tune, logged to MLflow under a
   sweep's keys (``model|task|probe`` and the probe protocol's hash): a probe already there --
   from a sweep or an earlier recommend -- is reused, not run again.
2. The pool ranked by the strategy (default the paper's recommendation, ``hybrid:proxy/linear``;
   or the lowest mean regret at B of an experiment's latest report) from the task's probe
   results, the experiment's other tasks (``choicenet_records``, the leave-one-task-out oracle,
   ChoiceNet v1-v3 and the nearest task learn from them; :mod:`sweeps.learned`) and the
   models' metadata. The task's own fine-tune results are never read.
3. The top B fine-tuned with the sweep's fine-tune protocol (same keys: reused when there), and
   the winner: the pick with the best validation accuracy (the fine-tune protocol's own model
   selection; test accuracy is reported, not chosen by).
4. The decision, JSON and text, as a ``recommend:<task>`` run of the experiment.

A strategy that reads the task's fine-tune results (``per_task_best``, ``task_agnostic_oracle``)
is refused.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from selection.records import GROUND_TRUTH
from selection.report.tables import number
from sweeps.learned import LEARNED, check_learnable, learned_table
from whichmodel.errors import WhichModelError

DEFAULT_STRATEGY = "hybrid:proxy/linear"
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "quickstart.yaml"
WIDTH = 100
_SHOWN_PROXIES = 3  # proxy columns in the text ranking (the JSON has them all)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def format_decision(d: dict[str, Any]) -> str:
    """The decision as a person reads it: ranking, picks, fine-tunes, winner, cost."""
    proxies = list(dict.fromkeys(p for row in d["ranking"] for p in row["proxies"]))
    strategy_proxy = d["strategy"].split(":", 1)[-1]
    shown = ([strategy_proxy] if strategy_proxy in proxies else [])
    shown += [p for p in proxies if p not in shown][:_SHOWN_PROXIES - len(shown)]
    src = d.get("strategy_source")
    how = (f" (lowest mean regret at B = {src['budget']} in the latest report: "
           f"{src['mean_regret']:.3f})") if src else ""
    lines = [f"whichmodel recommend: task {d['task']}, pool {d['pool_name']} "
             f"({len(d['pool'])} models), budget {d['budget']}",
             f"strategy {d['strategy']}{how}", ""]
    width = max(len("model"), *(len(r["model"]) for r in d["ranking"]))
    head = f"{'rank':>4}  {'model':<{width}}  {'score':>8}" + "".join(f"  {p:>14}" for p in shown)
    lines.append(head[:WIDTH])
    previous = None
    for i, row in enumerate(d["ranking"], 1):
        tie = "=" if row["tie_group"] == previous else " "
        previous = row["tie_group"]
        pick = "*" if row["model"] in d["picks"] else " "
        cells = "".join(f"  {number(row['proxies'].get(p)):>14}" for p in shown)
        lines.append(f"{i:>3}{tie}{pick} {row['model']:<{width}}  {number(row['score']):>8}{cells}"[:WIDTH])
    lines.append("(* picked; = tied with the row above: ties in the order of their names)")
    if d["strategy"].startswith("hybrid:"):
        lines.append("(the hybrid: 1 is task-agnostic's pick, then the proxy's order)")
    if d.get("note"):
        lines.append(d["note"])
    lines.append("")
    if d["finetuned"]:
        lines.append("fine-tuned:")
        for m, r in d["finetuned"].items():
            lines.append(f"  {m:<{width}}  val {number(r['val_acc'])}  test {number(r['test_acc'])}  "
                         f"({_seconds(r.get('seconds'))})")
        w = d["winner"]
        lines.append(f"winner: {w['model']} (best validation accuracy {number(w['val_acc'])}; test "
                     f"accuracy {number(w['test_acc'])})")
    else:
        lines.append(f"picks (not fine-tuned: --no-finetune): {', '.join(d['picks'])}")
    c = d["cost"]
    lines.append(f"cost: probing {_seconds(c['probe_s'])} for {len(d['pool'])} models; "
                 f"fine-tuning {_seconds(c['finetune_s'])} for {len(d['finetuned'])}")
    if c.get("exhaustive_finetune_s_estimate") is not None:
        est = c["exhaustive_finetune_s_estimate"]
        lines.append(f"fine-tuning the whole pool: ~{_seconds(est)} (the picks' time scaled by "
                     f"model size); the budget saved ~{_seconds(est - c['finetune_s'])}")
    reused = d["reused"]
    lines.append(f"reused from MLflow: {reused['probe']} probe(s), {reused['finetune']} "
                 f"fine-tune(s); experiment {d['experiment']!r}")
    lines.append(f"decision logged as MLflow run {d.get('run_id', '-')} (recommend:{d['task']})")
    return "\n".join(line[:WIDTH] for line in lines)
#: strategies that learn from the experiment's other tasks' fine-tune results (and LEARNED, which
#: also embed those tasks)
NEEDS_OTHER_TASKS = ("choicenet_records", "task_agnostic_oracle_loto")


class RecommendFailed(WhichModelError):
    """A probe or fine-tune the decision needs did not arrive (named; exit code 1)."""


def check_budget(budget: object) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise WhichModelError(f"--budget {budget!r}: the number of fine-tunes you can afford, an "
                              "integer of 1 or more")
    return budget


def resolve_task(task: str, group: str) -> tuple[str, dict[str, Any]]:
    """(name, ref) of an offline task, ``vtab:<name>`` or an ImageFolder path."""
    from lightning_modules.tasks import list_tasks
    from sweeps.refs import VTAB_PREFIX

    if task in list_tasks(kind="offline"):
        return task, {"source": "offline"}
    if task.startswith(VTAB_PREFIX):
        if task not in list_tasks(kind="vtab"):
            raise WhichModelError(f"--task {task!r}: unknown VTAB-1k task; known: "
                                  f"{', '.join(list_tasks(kind='vtab'))}")
        return task[len(VTAB_PREFIX):], {"source": "vtab"}
    path = Path(task)
    if not path.is_dir():
        raise WhichModelError(
            f"--task {task!r}: no offline task of that name and no folder at {path.resolve()}; "
            f"give an offline task ({', '.join(list_tasks(kind='offline'))}), vtab:<name>, or an "
            "ImageFolder path with train/<class>/ and test/<class>/ image folders")
    import re

    from sweeps.config import NAME_PATTERN

    name = path.resolve().name
    if not re.fullmatch(NAME_PATTERN, name) or name in list_tasks():
        raise WhichModelError(f"--task {task!r}: the folder's name {name!r} is not a usable task "
                              "name (letters, digits, '_', '.', '-'; not an offline task's name); "
                              "rename the folder")
    return name, {"source": "imagefolder", "group": group, "path": str(path.resolve())}


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


def run_keys(plan, paths, uri: str, stream, models: list[str], protocol: str):
    """The (model, task, protocol) keys of ``models`` on the plan's one task, through the sweep
    driver (finished keys are skipped); (outcome, wall seconds). A key that fails is named."""
    from sweeps.driver import run_sweep

    task = plan.tasks[0]
    start = time.perf_counter()
    outcome = run_sweep(plan, paths, uri, stream, keys=[(m, task, protocol) for m in models],
                        label=f"recommend-{task}-{protocol}")
    if outcome.failures:
        raise RecommendFailed(f"{len(outcome.failures)} {protocol} trial(s) of {task} failed: "
                              + "; ".join(outcome.failures[:5]))
    return outcome, time.perf_counter() - start


def existing_tracker(uri: str, experiment: str):
    """The experiment's tracker, creating nothing: a local store that is not there yet is no
    experiment (opening it would create the file)."""
    from sweeps.tracking.client import Tracker

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise WhichModelError(f"no MLflow experiment {experiment!r}: the local store "
                              f"{uri[len('sqlite:///'):]} does not exist yet; run a sweep first")
    return Tracker(uri, experiment, create=False)


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


def pair_runs(tracker, hashes, task: str, protocol: str, models: list[str]) -> dict[str, Any]:
    """The finished MLflow runs of the models' (model, task, protocol) keys."""
    from sweeps.plan import pair_key

    finished, _ = tracker.runs_by_key(hashes)
    return {m: finished[pair_key(m, task, protocol)] for m in models
            if pair_key(m, task, protocol) in finished}


def logged_params(run) -> float | None:
    """The model's backbone parameter count as its run logged it (None if unknown)."""
    value = run.data.params.get("model/params")
    try:
        return float(value) if value not in (None, "None", "") else None
    except ValueError:
        return None


def probe_seconds(metrics: dict[str, float]) -> float:
    """A probe's compute: its forward pass and every proxy (the early-stop proxy included)."""
    return float(metrics.get("time/features", 0.0) + sum(
        v for k, v in metrics.items() if k.startswith("time/proxy/")))


def exhaustive_estimate(seconds: dict[str, float], params: dict[str, float | None],
                        pool: list[str]) -> float:
    """Seconds to fine-tune the whole pool: the picks' seconds per backbone parameter times each
    model's parameters (the picks' mean seconds for a model without a parameter count)."""
    mean = sum(seconds.values()) / len(seconds)
    sized = {m: p for m, p in params.items() if m in seconds and p}
    rate = sum(seconds[m] for m in sized) / sum(sized.values()) if sized else None
    total = 0.0
    for m in pool:
        if m in seconds:
            total += seconds[m]
        elif rate is not None and params.get(m):
            total += rate * float(params[m])
        else:
            total += mean
    return total


def recommend(task: str, budget: int, *, config: str | Path | None = None,
              catalog: str | Path | None = None, pool: str = "all", strategy: str | None = None,
              from_report: str | None = None, finetune: bool = True,
              tracking_uri: str | None = None, home: str | Path | None = None,
              group: str = "natural", stream=None) -> dict[str, Any]:
    """The decision for ``task`` at ``budget`` fine-tunes (module docstring); the documented
    JSON as a dict. Bad input is a :class:`WhichModelError` before anything is written."""
    from sweeps.paths import default_paths
    from sweeps.plan import plan_sweep
    from sweeps.refs import check_task_ref
    from sweeps.tracking.client import Tracker
    from sweeps.tracking.recorder import artifact_root

    stream = stream or sys.stderr
    budget = check_budget(budget)
    if strategy and from_report:
        raise WhichModelError("--strategy and --from-report: give one (or neither, for "
                              f"{DEFAULT_STRATEGY})")
    paths = default_paths(home)
    plan = plan_sweep(config or DEFAULT_CONFIG, catalog=catalog)
    cfg = plan.cfg
    if pool not in plan.pools:
        raise WhichModelError(f"--pool {pool!r}: no such pool in {catalog or plan.path}; known: "
                              f"{', '.join(plan.pools)}")
    members = list(plan.pools[pool])
    if not cfg.probe.enabled or (finetune and not cfg.finetune.enabled):
        raise WhichModelError(f"{plan.path}: key 'probe.enabled'/'finetune.enabled': recommend "
                              "needs the probe protocol (and the fine-tune one unless --no-finetune)")
    name, ref = resolve_task(task, group)
    sub = replace(plan, models=members, tasks=[name], task_refs={**plan.task_refs, name: ref})
    check_task_ref(name, ref, sub.data_root(paths), download=cfg.data.download)
    proxies = [f"proxy/{p}" for p in cfg.probe.proxies]
    uri = paths.tracking_uri(tracking_uri)
    hashes = {p: cfg.protocol_hash(p) for p in ("probe", "finetune")}
    chosen, source = strategy or DEFAULT_STRATEGY, None
    if from_report:
        chosen, source = strategy_from_report(existing_tracker(uri, from_report), budget, proxies)
    check_strategy(chosen, proxies, members, name)
    learned = None
    if chosen in NEEDS_OTHER_TASKS or chosen in LEARNED:
        try:
            records, _, _ = existing_tracker(uri, cfg.experiment).records(hashes)
        except WhichModelError:  # no store or no experiment yet: no other task either
            records = pd.DataFrame(columns=["model", "task", "metric", "value"])
        if chosen in LEARNED:
            check_learnable(chosen, records, name, plan)
            learned = partial(learned_table, chosen, plan, paths, name, ref, stream=stream)
        elif not (records["metric"].eq(GROUND_TRUTH) & records["task"].ne(name)).any():
            raise WhichModelError(f"--strategy {chosen!r} learns from the fine-tune results of other "
                                  f"tasks in experiment {cfg.experiment!r}, which has none; run a "
                                  "sweep first or choose another strategy")
    capped = min(budget, len(members))
    note = (f"budget {budget} is more than the pool's {len(members)} models: the whole pool is "
            "fine-tuned" if budget > len(members) else None)
    if note:
        print(f"[whichmodel] {note}", file=stream, flush=True)

    outcome, probe_wall = run_keys(sub, paths, uri, stream, members, "probe")
    tracker = Tracker(uri, cfg.experiment, artifact_root=artifact_root(uri, paths.artifacts_root))
    ranking, _, _ = rank_pool(tracker, hashes, chosen, name, members,
                              cfg.report.task_agnostic.tie_tolerance, proxies, learned)
    picks = [row["model"] for row in ranking[:capped]]
    probe_runs = pair_runs(tracker, hashes, name, "probe", members)
    probes = {m: run.data.metrics for m, run in probe_runs.items()}
    missing = [m for m in members if m not in probes]
    if missing:
        raise RecommendFailed(f"probe of {', '.join(missing)} on {name}: no finished run in MLflow")
    decision: dict[str, Any] = {
        "task": name, "pool": members, "pool_name": pool, "budget": budget, "strategy": chosen,
        "strategy_source": source, "ranking": ranking, "picks": picks, "finetuned": {},
        "winner": None, "note": note, "experiment": cfg.experiment,
        "reused": {"probe": outcome.pairs_skipped, "finetune": 0}}
    cost = {"probe_s": sum(probe_seconds(probes[m]) for m in members), "finetune_s": 0.0,
            "exhaustive_finetune_s_estimate": None, "wall_s": {"probe": probe_wall}}
    if finetune:
        outcome, cost["wall_s"]["finetune"] = run_keys(sub, paths, uri, stream, picks, "finetune")
        decision["reused"]["finetune"] = outcome.pairs_skipped
        tuned = {m: run.data.metrics
                 for m, run in pair_runs(tracker, hashes, name, "finetune", picks).items()}
        lost = [m for m in picks if m not in tuned or "test/acc" not in tuned[m]]
        if lost:
            raise RecommendFailed(f"fine-tune of {', '.join(lost)} on {name}: no finished run")
        decision["finetuned"] = {m: {"val_acc": tuned[m]["val/acc"], "test_acc": tuned[m]["test/acc"],
                                     "seconds": tuned[m].get("time/finetune")} for m in picks}
        # best validation accuracy; a tie goes to the strategy's earlier pick
        best = max(picks, key=lambda m: (tuned[m]["val/acc"], -picks.index(m)))
        decision["winner"] = {"model": best, "val_acc": tuned[best]["val/acc"],
                              "test_acc": tuned[best]["test/acc"]}
        seconds = {m: float(tuned[m].get("time/finetune") or 0.0) for m in picks}
        cost["finetune_s"] = sum(seconds.values())
        params = {m: logged_params(run) for m, run in probe_runs.items()}
        cost["exhaustive_finetune_s_estimate"] = exhaustive_estimate(seconds, params, members)
    decision["cost"] = cost
    log_decision(tracker, decision)
    return decision


def log_decision(tracker, decision: dict[str, Any]) -> str:
    """A ``recommend:<task>`` run holding the decision as JSON and text."""
    client = tracker.client
    run = client.create_run(tracker.experiment_id, run_name=f"recommend:{decision['task']}",
                            tags={"protocol": "recommend", "task": decision["task"],
                                  "strategy": decision["strategy"],
                                  "recommend_key": f"recommend|{decision['task']}"})
    run_id = decision["run_id"] = run.info.run_id
    client.log_param(run_id, "budget", decision["budget"])
    client.log_param(run_id, "strategy", decision["strategy"])
    client.log_param(run_id, "pool", decision["pool_name"])
    if decision["winner"]:
        client.set_tag(run_id, "winner", decision["winner"]["model"])
        client.log_metric(run_id, "winner/test_acc", decision["winner"]["test_acc"])
    client.log_text(run_id, json.dumps(decision, indent=2, sort_keys=True), "recommend/decision.json")
    client.log_text(run_id, format_decision(decision), "recommend/decision.txt")
    client.set_terminated(run_id, "FINISHED")
    return run_id
