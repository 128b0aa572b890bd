"""Budgeted model search: successive halving (Ray Tune's ASHA) over fine-tune steps.

Instead of fine-tuning every model of the pool to the end, each task gets one Tune experiment of
(model, learning rate) trials that report validation accuracy every ``rung_steps`` fine-tune
steps; ASHA (Li et al. 2020) stops the weaker half (1 / reduction_factor) at every rung. The
search ranks models by the rung they reached, then by their last validation accuracy; its pick is
scored against the exhaustive fine-tune results of the same sweep (regret), and the fine-tune
steps it spent are compared with the exhaustive sweep's.

Enabled by ``search.enabled: true`` in a sweep file; it runs after the exhaustive sweep, and its
per-task result is one MLflow run ``search@<task>:asha`` (tag ``search_key``). The exhaustive
sweep's fine-tunes then log their validation accuracy at every rung (repetition 0), and the
search *replays* those curves through ASHA's rule (:func:`replay_asha`): the same decisions as
real trials run one after another, with no new training (tag ``search/replayed``). Tasks without
such curves get real ASHA trials. The steps are compared like with like: the exhaustive sweep's
steps at the search's learning rates.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import numpy as np

from sweeps.config import SweepConfig
from sweeps.plan import Job

SEARCH_RUNS = "tags.protocol = 'search'"  # the search runs, filtered on the server


def search_signature(cfg: SweepConfig) -> str:
    """What determines a search's result: the fine-tune protocol and the search settings."""
    s = cfg.search
    return (f"{cfg.protocol_hash('finetune')}|{s.rung_steps}|{s.reduction_factor}|"
            f"{s.grace_rungs}|{','.join(f'{lr:g}' for lr in (s.lrs or cfg.finetune.lrs))}")


def rank_search(trials: list[dict[str, Any]]) -> list[str]:
    """Models by the furthest rung any of their trials reached, then best last validation
    accuracy, then name (ties)."""
    best: dict[str, tuple[int, float]] = {}
    for t in trials:
        key = (int(t["iterations"]), float(t["val_acc"]))
        if t["model"] not in best or key > best[t["model"]]:
            best[t["model"]] = key
    return sorted(best, key=lambda m: (-best[m][0], -best[m][1], m))


def asha_milestones(grace: int, reduction_factor: int, max_t: int) -> list[int]:
    """The rungs of Tune's ``ASHAScheduler`` (one bracket), in iterations."""
    n = int(math.log(max_t / grace) / math.log(reduction_factor) + 1)
    return [grace * reduction_factor ** k for k in range(n)]


def replay_asha(curves: dict[str, list[tuple[int, float]]], order: list[str], *, grace: int,
                reduction_factor: int, max_t: int) -> dict[str, tuple[int, float]]:
    """The decisions of Tune's ASHAScheduler (Ray 2.60's ``_Bracket``) on recorded validation
    curves, trials run one after another in ``order``: each trial's last iteration and value.

    At a rung a trial stops when its value is below the ``1 - 1/reduction_factor`` percentile of
    the values recorded there before it (the first to reach a rung always goes on); a trial that
    reaches ``max_t`` completes. ``curves[trial]`` lists (iteration, value) from iteration 1.
    """
    rungs = [(m, {}) for m in reversed(asha_milestones(grace, reduction_factor, max_t))]
    out = {}
    for trial in order:
        last = (0, float("nan"))
        for it, value in curves[trial]:
            last = (it, value)
            stop = it >= max_t
            for milestone, recorded in rungs:
                if it < milestone or trial in recorded:
                    continue
                cutoff = (np.nanpercentile(list(recorded.values()), (1 - 1 / reduction_factor)
                                           * 100) if recorded else None)
                if not stop and cutoff is not None and value < cutoff:
                    stop = True
                recorded[trial] = value
                break
            if stop:
                break
        out[trial] = last
    return out


def exhaustive_curves(tracker, plan, task: str, lrs: list[float]
                      ) -> dict[tuple[str, float], list[tuple[int, float]]] | None:
    """The validation curves the exhaustive sweep logged for ``task`` at the search's learning
    rates (repetition 0, the seed a search trial uses), by (model, lr); None unless every one is
    there (and as long as the search's). They are stepped metrics of the fine-tune pair runs
    (``lr_0.01/rep0/curve/val_acc``), or, in an experiment logged before those, of child runs."""
    from sweeps.plan import pair_key
    from sweeps.tracking.pairs import curve_key

    hashes = {"finetune": plan.cfg.protocol_hash("finetune")}
    finished, _ = tracker.runs_by_key(hashes)
    out = {}
    n_rungs = max(1, plan.cfg.finetune.steps // plan.cfg.search.rung_steps)
    for model in plan.models:
        pair = finished.get(pair_key(model, task, "finetune"))
        for lr in lrs:
            key = curve_key(lr, 0, "val_acc")
            if pair is not None and key in pair.data.metrics:
                history = tracker.client.get_metric_history(pair.info.run_id, key)
            else:
                name = f"{model}@{task}:finetune/lr={lr:g}/rep0"
                runs = [r for r in tracker.search(f"tags.`mlflow.runName` = '{name}'")
                        if r.info.status == "FINISHED"]
                if not runs:
                    return None
                history = tracker.client.get_metric_history(runs[0].info.run_id, "curve/val_acc")
            points = sorted((int(m.step), float(m.value)) for m in history)
            if len(points) < n_rungs:
                return None
            out[(model, lr)] = points[:n_rungs]
    return out


def run_search(plan, paths, tracking_uri: str, stream=None, tracker=None
               ) -> dict[str, dict[str, Any]]:
    """Successive halving per task over the plan's models x learning rates; one run per task.

    Where the exhaustive sweep logged every trial's validation curve (it does when
    ``search.enabled``), the search replays them (:func:`replay_asha`: the same decisions, no
    new training) and says so; otherwise ASHA trials run on Tune."""
    from sweeps.tracking.client import Tracker

    stream = stream or sys.stderr
    cfg, s, f = plan.cfg, plan.cfg.search, plan.cfg.finetune
    tracker = tracker or Tracker(tracking_uri, cfg.experiment)
    done = {r.data.tags.get("search_key") for r in tracker.search(SEARCH_RUNS)
            if r.info.status == "FINISHED" and r.data.tags.get("search_key")}
    n_rungs = max(1, f.steps // s.rung_steps)
    lrs = [float(lr) for lr in (s.lrs or f.lrs)]
    # like for like: the exhaustive sweep's steps at the search's learning rates
    exhaustive = len(plan.models) * len(lrs) * (f.head_steps + f.steps)
    out: dict[str, dict[str, Any]] = {}
    for task in plan.tasks:
        key = f"asha|{task}|{search_signature(cfg)}"
        if key in done:
            continue
        start = time.perf_counter()
        curves = exhaustive_curves(tracker, plan, task, lrs)
        if curves is not None:
            order = [(m, lr) for m in plan.models for lr in lrs]  # the grid's order
            last = replay_asha({k: [(i + 1, v) for i, (_, v) in enumerate(c)]
                                for k, c in curves.items()}, order, grace=s.grace_rungs,
                               reduction_factor=s.reduction_factor, max_t=n_rungs)
            trials = [{"model": m, "lr": lr, "iterations": it, "val_acc": v,
                       "steps": f.head_steps + it * s.rung_steps}
                      for (m, lr), (it, v) in last.items()]
        else:
            trials = _asha_trials(plan, paths, task, lrs, n_rungs)
        ranking = rank_search(trials)
        spent = sum(t["steps"] for t in trials)
        result = {"ranking": ranking, "steps": spent, "exhaustive_steps": exhaustive,
                  "step_fraction": spent / exhaustive if exhaustive else None,
                  "seconds": time.perf_counter() - start, "replayed": curves is not None}
        out[task] = result
        _log_search(tracker, task, key, result, cfg)
        how = "replayed from the sweep's curves" if curves is not None else "ASHA trials"
        print(f"[whichmodel] search {task} ({how}): pick {ranking[0] if ranking else '-'}, "
              f"{spent} of {exhaustive} fine-tune steps ({result['step_fraction']:.0%})",
              file=stream, flush=True)
    return out


def _asha_trials(plan, paths, task: str, lrs: list[float], n_rungs: int) -> list[dict[str, Any]]:
    """Real ASHA trials on Tune for one task (no exhaustive curves to replay)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from sweeps.driver import trial_settings
    from sweeps.trials import search_trial
    from sweeps.tune_runner import TrialResources, experiment_path, init_ray, wrap_trainable

    cfg, s = plan.cfg, plan.cfg.search
    init_ray(cfg.resources.num_cpus)
    resources = TrialResources({"search": (cfg.resources.finetune.cpus,
                                           cfg.resources.finetune.gpus)})
    jobs = [Job("search", m, task, lr) for m in plan.models for lr in lrs]
    trainable = wrap_trainable(search_trial, trial_settings(plan, paths), resources)
    name = f"{cfg.name}-search-{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = experiment_path(paths.tune_root, name)
    tuner = tune.Tuner(
        trainable, param_space={"job": tune.grid_search([j.to_dict() for j in jobs])},
        tune_config=tune.TuneConfig(
            scheduler=ASHAScheduler(time_attr="training_iteration", metric="val_acc",
                                    mode="max", max_t=n_rungs, grace_period=s.grace_rungs,
                                    reduction_factor=s.reduction_factor),
            max_concurrent_trials=cfg.resources.max_concurrent_trials, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=path.rsplit("/", 1)[0], verbose=0))
    trials = []
    for r in tuner.fit():
        if r.error is None and r.metrics:
            trials.append({"model": r.config["job"]["model"], "lr": r.config["job"]["lr"],
                           "iterations": r.metrics.get("training_iteration", 0),
                           "val_acc": r.metrics.get("val_acc", 0.0),
                           "steps": r.metrics.get("steps", 0)})
    return trials


def _log_search(tracker, task: str, key: str, result: dict[str, Any], cfg: SweepConfig) -> None:
    run_id = tracker.client.create_run(
        tracker.experiment_id, run_name=f"search@{task}:asha",
        tags={"search_key": key, "protocol": "search", "task": task, "sweep": cfg.name,
              "search/ranking": ",".join(result["ranking"]),
              "search/replayed": str(bool(result.get("replayed")))}).info.run_id
    for k in ("steps", "exhaustive_steps", "step_fraction", "seconds"):
        if result[k] is not None:
            tracker.client.log_metric(run_id, f"search/{k}", float(result[k]))
    tracker.client.log_param(run_id, "search/rung_steps", cfg.search.rung_steps)
    tracker.client.log_param(run_id, "search/reduction_factor", cfg.search.reduction_factor)
    tracker.client.set_terminated(run_id, "FINISHED")


def search_results(tracker, cfg: SweepConfig) -> dict[str, dict[str, Any]]:
    """The latest finished search run per task of this sweep's settings."""
    out = {}
    suffix = f"|{search_signature(cfg)}"
    for run in tracker.search(SEARCH_RUNS):
        key = run.data.tags.get("search_key", "")
        if run.info.status != "FINISHED" or not key.endswith(suffix):
            continue
        m = run.data.metrics
        out.setdefault(run.data.tags["task"], {
            "ranking": run.data.tags.get("search/ranking", "").split(","),
            "steps": m.get("search/steps"), "exhaustive_steps": m.get("search/exhaustive_steps"),
            "step_fraction": m.get("search/step_fraction"),
            "replayed": run.data.tags.get("search/replayed") == "True"})
    return out


def summarize_search(report: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Regret of each task's search pick (B = 1, against the exhaustive fine-tunes) and its steps."""
    from selection.regret import relative_regret

    per_task = {}
    for task, r in results.items():
        accs = report.get("finetune_test_acc", {}).get(task)
        pick = next((m for m in r["ranking"] if accs and m in accs), None)
        regret = (float(relative_regret(max(accs.values()), accs[pick]))
                  if pick is not None else None)
        per_task[task] = {"pick": pick, "relative_regret": regret, "steps": r["steps"],
                          "exhaustive_steps": r["exhaustive_steps"],
                          "replayed": bool(r.get("replayed"))}
    regrets = [v["relative_regret"] for v in per_task.values() if v["relative_regret"] is not None]
    spent = sum(v["steps"] or 0 for v in per_task.values())
    full = sum(v["exhaustive_steps"] or 0 for v in per_task.values())
    return {"scheduler": "asha", "per_task": per_task,
            "replayed": sum(v["replayed"] for v in per_task.values()),
            "mean_relative_regret": sum(regrets) / len(regrets) if regrets else None,
            "steps": spent, "exhaustive_steps": full,
            "step_fraction": spent / full if full else None}


def add_search_summary(report: dict[str, Any], results: dict[str, dict[str, Any]],
                       cfg: SweepConfig) -> None:
    """The report's ``budgeted_search`` (:func:`summarize_search`) and its compute: its steps at
    the seconds per step of the fine-tunes of its learning rates at repetition 0 (the share of
    a pair's fine-tune seconds those runs are), then its pick's fine-tune
    (:func:`selection.report.costs.add_search_compute`)."""
    from selection.report.costs import add_search_compute

    report["budgeted_search"] = summarize_search(report, results)
    f = cfg.finetune
    share = len(cfg.search.lrs or f.lrs) / (len(f.lrs) * f.repeats)
    add_search_compute(report, report["budgeted_search"]["per_task"], share)


def format_search(summary: dict[str, Any]) -> str:
    replayed = summary.get("replayed") or 0
    # lines of at most 100 characters (the report's terminal width)
    lines = ["Budgeted search (ASHA over fine-tune steps) against exhaustive fine-tuning at the "
             "same lrs" + (":" if not replayed else ";"),
             *([f"{replayed} of {len(summary['per_task'])} tasks replayed from the exhaustive "
                "sweep's validation curves:", "ASHA's decisions with the trials run one after "
                "another, no new training:"] if replayed else []),
             f"{'task':<20} {'pick':<26} {'regret@1':>9} {'steps':>8} {'exhaustive':>11}"]
    for task, v in sorted(summary["per_task"].items()):
        regret = "-" if v["relative_regret"] is None else f"{v['relative_regret']:.4f}"
        lines.append(f"{task:<20} {str(v['pick']):<26} {regret:>9} {int(v['steps'] or 0):>8} "
                     f"{int(v['exhaustive_steps'] or 0):>11}")
    mean = summary["mean_relative_regret"]
    frac = summary["step_fraction"]
    lines.append(f"{'mean':<20} {'':<26} {'-' if mean is None else f'{mean:.4f}':>9} "
                 f"{int(summary['steps']):>8} {int(summary['exhaustive_steps']):>11}"
                 + (f"  ({frac:.0%} of the steps)" if frac is not None else ""))
    return "\n".join(lines)
