"""``whichmodel recommend``'s stages (the package docstring says what each does): check the call
(:func:`check_request`), probe the pool and rank it (:func:`probe_and_rank`), fine-tune the picks
(:func:`finetune_picks`), log the decision (:func:`log_decision`); :func:`recommend` runs them.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from selection.records import GROUND_TRUTH
from sweeps.learned import LEARNED, check_learnable, learned_table
from sweeps.recommend.rank import check_strategy, rank_pool, strategy_from_report
from sweeps.recommend.text import format_decision
from whichmodel.errors import WhichModelError

DEFAULT_STRATEGY = "hybrid:proxy/linear"
DEFAULT_CONFIG = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
#: strategies that learn from the experiment's other tasks' fine-tune results (and LEARNED, which
#: also embed those tasks)
NEEDS_OTHER_TASKS = ("choicenet_records", "task_agnostic_oracle_loto")


class RecommendFailed(WhichModelError):
    """A probe or fine-tune the decision needs did not arrive (named; exit code 1)."""


def check_budget(budget: object, compute_budget: object = None) -> int:
    """B, or 1 until ``--compute-budget`` chooses it; exactly one of the two is given."""
    if (budget is None) == (compute_budget is None):
        raise WhichModelError("give --budget B (fine-tunes) or --compute-budget DURATION (e.g. "
                              "2h): one of them")
    if budget is None:
        return 1
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
    from whichmodel.names import name_message

    name = path.resolve().name
    why = name_message(name) or (f"{name!r} is an offline task's name" if name in list_tasks()
                                 else None)
    if why is not None:
        raise WhichModelError(f"--task {task!r}: the folder's name is not a usable task name: "
                              f"{why}; rename the folder")
    return name, {"source": "imagefolder", "group": group, "path": str(path.resolve())}


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


def probe_seconds(metrics: dict[str, float]) -> float | None:
    """A probe's compute: its forward pass and every proxy (the early-stop proxy included); None
    for a run that logged no time (unknown, not free)."""
    if "time/features" not in metrics:
        return None
    return float(metrics["time/features"] + sum(
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


@dataclass
class Request:
    """A checked recommend call: what :func:`recommend`'s stages read."""

    plan: Any  # the sweep's plan (models: the whole sweep; ``sub``: the pool on the one task)
    sub: Any
    paths: Any
    uri: str
    hashes: dict[str, str]
    task: str  # the task's name
    members: list[str]  # the pool
    pool: str
    budget: int
    proxies: list[str]
    strategy: str
    source: dict[str, Any] | None  # where --from-report found the strategy
    learned: Any  # the learned strategy's table maker, or None
    note: str | None
    probes: bool = True  # run the pool's probes (--compute-budget: only if the strategy reads them)
    compute: Any = None  # --compute-budget's plan (sweeps.recommend.budget.ComputePlan)


def check_request(task: str, budget: int | None, *, config, catalog, pool: str,
                  strategy: str | None, from_report: str | None, finetune: bool,
                  tracking_uri: str | None, home, group: str, stream,
                  compute_budget: float | None = None) -> Request:
    """Every check of a call before anything runs or is written (bad input: WhichModelError)."""
    from sweeps.paths import default_paths
    from sweeps.plan import plan_sweep
    from sweeps.refs import check_task_ref, load_task_ref

    budget = check_budget(budget, compute_budget)
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
    # decoded (and cached) now: an image that cannot be decoded is named by its path before
    # anything is written to MLflow
    try:
        load_task_ref(name, ref, sub.data_root(paths), cfg.image_size, cfg.seed,
                      cfg.data.download)
    except OSError as exc:  # the data's own problems are DatasetErrors that name the file
        raise WhichModelError(f"task {name!r}: {exc}") from None
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
    note = (f"budget {budget} is more than the pool's {len(members)} models: the whole pool is "
            "fine-tuned" if budget > len(members) else None)
    req = Request(plan, sub, paths, uri, hashes, name, members, pool, budget, proxies, chosen,
                  source, learned, note)
    return req if compute_budget is None else with_compute_budget(req, compute_budget, stream)


def with_compute_budget(req: Request, budget_s: float, stream) -> Request:
    """The request at the largest B whose estimated compute fits ``budget_s`` seconds, the probes
    only when the strategy reads them (:mod:`sweeps.recommend.budget`); MLflow is only read."""
    from sweeps.recommend.budget import plan_compute

    try:
        tracker = existing_tracker(req.uri, req.plan.cfg.experiment)
        records, _, _ = tracker.records(req.hashes)
        finished = set(tracker.runs_by_key(req.hashes)[0])
    except WhichModelError:  # no store or no experiment yet: nothing finished, nothing learned
        records, finished = None, set()
    cp = plan_compute(req, budget_s, records, finished, stream)
    note = ("the learned strategy's own fit is not in the estimate" if req.strategy in LEARNED
            else None)
    return replace(req, budget=cp.budget, probes=cp.needs_probes, compute=cp, note=note)


def probe_and_rank(req: Request, tracker, stream) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pool's probes (run or reused), its ranking and the picks: (decision so far, probe
    runs by model)."""
    outcome, wall = (run_keys(req.sub, req.paths, req.uri, stream, req.members, "probe")
                     if req.probes else (None, 0.0))
    tracker.forget()  # the sweep's own tracker logged the probes: read the runs again
    start = time.perf_counter()
    ranking, _, _ = rank_pool(tracker, req.hashes, req.strategy, req.task, req.members,
                              req.plan.cfg.report.task_agnostic.tie_tolerance, req.proxies,
                              req.learned)
    rank_s = time.perf_counter() - start  # a learned strategy's embeddings and fit included
    picks = [row["model"] for row in ranking[:min(req.budget, len(req.members))]]
    probe_runs = pair_runs(tracker, req.hashes, req.task, "probe", req.members)
    missing = [m for m in req.members if m not in probe_runs]
    if missing and req.probes:
        raise RecommendFailed(f"probe of {', '.join(missing)} on {req.task}: no finished run in "
                              "MLflow")
    probe_s = [probe_seconds(probe_runs[m].data.metrics) for m in req.members if m in probe_runs]
    decision: dict[str, Any] = {
        "task": req.task, "pool": req.members, "pool_name": req.pool, "budget": req.budget,
        "strategy": req.strategy, "strategy_source": req.source, "ranking": ranking,
        "picks": picks, "finetuned": {}, "winner": None, "note": req.note,
        "experiment": req.plan.cfg.experiment,
        "reused": {"probe": outcome.pairs_skipped if outcome else 0, "finetune": 0},
        "cost": {"probe_s": None if None in probe_s else sum(probe_s), "finetune_s": 0.0,
                 "exhaustive_finetune_s_estimate": None, "wall_s": {"probe": wall},
                 "rank_s": rank_s},
        "compute_budget_s": None, "estimated_s": None, "spent_s": None}
    return decision, (probe_runs if req.probes else {})


def finetune_picks(req: Request, tracker, decision: dict[str, Any], probe_runs: dict[str, Any],
                   stream) -> None:
    """Fine-tune the picks (run or reused) and choose the winner by validation accuracy; fills
    the decision's ``finetuned``, ``winner``, ``reused`` and ``cost``."""
    picks, cost = decision["picks"], decision["cost"]
    outcome, cost["wall_s"]["finetune"] = run_keys(req.sub, req.paths, req.uri, stream, picks,
                                                   "finetune")
    tracker.forget()  # the fine-tunes were logged through the sweep's tracker: read again
    decision["reused"]["finetune"] = outcome.pairs_skipped
    tuned = {m: run.data.metrics
             for m, run in pair_runs(tracker, req.hashes, req.task, "finetune", picks).items()}
    lost = [m for m in picks if m not in tuned or "test/acc" not in tuned[m]]
    if lost:
        raise RecommendFailed(f"fine-tune of {', '.join(lost)} on {req.task}: no finished run")
    decision["finetuned"] = {m: {"val_acc": tuned[m]["val/acc"], "test_acc": tuned[m]["test/acc"],
                                 "seconds": tuned[m].get("time/finetune")} for m in picks}
    # best validation accuracy; a tie goes to the strategy's earlier pick
    best = max(picks, key=lambda m: (tuned[m]["val/acc"], -picks.index(m)))
    decision["winner"] = {"model": best, "val_acc": tuned[best]["val/acc"],
                          "test_acc": tuned[best]["test/acc"]}
    seconds = {m: tuned[m]["time/finetune"] for m in picks if "time/finetune" in tuned[m]}
    untimed = [m for m in picks if m not in seconds]
    if untimed:  # a run logged before fine-tunes were timed: the cost is unknown, not 0
        cost["finetune_s"] = None
        decision["note"] = "; ".join(filter(None, [decision["note"], (
            f"no fine-tune time logged for {', '.join(untimed)}: cost unknown")]))
        return
    cost["finetune_s"] = sum(seconds.values())
    params = {m: logged_params(run) for m, run in probe_runs.items()}
    cost["exhaustive_finetune_s_estimate"] = exhaustive_estimate(seconds, params, req.members)


def recommend(task: str, budget: int | None = None, *, compute_budget: str | float | None = None,
              config: str | Path | None = None,
              catalog: str | Path | None = None, pool: str = "all", strategy: str | None = None,
              from_report: str | None = None, finetune: bool = True,
              tracking_uri: str | None = None, home: str | Path | None = None,
              group: str = "natural", stream=None) -> dict[str, Any]:
    """The decision for ``task`` at ``budget`` fine-tunes, or at the largest B whose estimated
    compute fits ``compute_budget`` (``"2h"``, ``"90m"``, seconds; :mod:`sweeps.recommend.budget`)
    (module docstring); the documented JSON as a dict. Bad input is a :class:`WhichModelError`
    before anything is written."""
    from sweeps.tracking.client import Tracker
    from sweeps.tracking.recorder import artifact_root
    from whichmodel.durations import parse_duration

    stream = stream or sys.stderr
    seconds = None if compute_budget is None else (
        float(compute_budget) if isinstance(compute_budget, (int, float))
        and not isinstance(compute_budget, bool) else parse_duration(compute_budget))
    req = check_request(task, budget, config=config, catalog=catalog, pool=pool,
                        strategy=strategy, from_report=from_report, finetune=finetune,
                        tracking_uri=tracking_uri, home=home, group=group, stream=stream,
                        compute_budget=seconds)
    if req.note:
        print(f"[whichmodel] {req.note}", file=stream, flush=True)
    tracker = Tracker(req.uri, req.plan.cfg.experiment,
                      artifact_root=artifact_root(req.uri, req.paths.artifacts_root))
    decision, probe_runs = probe_and_rank(req, tracker, stream)
    if finetune:
        finetune_picks(req, tracker, decision, probe_runs, stream)
    if req.compute is not None:
        from sweeps.recommend.budget import spent_seconds

        decision.update(compute_budget_s=req.compute.budget_s, estimated_s=req.compute.estimated_s,
                        compute=req.compute.doc())
        decision["spent_s"] = spent_seconds(decision, probe_runs, req.compute.finished, req.task,
                                            probe_seconds, learned=req.strategy in LEARNED)
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
