"""The sweep driver: validate, expand pairs, skip finished ones, run trials on Ray Tune.

    whichmodel run sweeps/configs/quickstart.yaml

``run_trial(job, settings)`` is the plain trial body (tests call it directly): a ``probe`` job
computes the task-aware proxies of one (model, task) pair from one frozen forward pass; a
``finetune`` job fine-tunes one pair at one learning rate, every repetition. The driver logs each
pair to MLflow once all its jobs are in: for fine-tuning, per repetition the learning rate with
the best validation accuracy, that run's test accuracy, and the median over repetitions.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.config import SweepConfig, WhichModelError, load_sweep_config, load_zoo_config
from sweeps.paths import Paths
from sweeps.registry import (check_models, load_model, model_pools, resolve_models, resolve_pools,
                             resolve_tasks)
from sweeps.tracking import Tracker


@dataclass(frozen=True)
class TrialSettings:
    cfg: SweepConfig
    data_root: str
    zoo_root: str


# --------------------------------------------------------------------------- trial bodies
def run_trial(job: dict[str, Any], settings: TrialSettings) -> dict[str, float]:
    from lightning_modules.backbones import load_checkpoint
    from lightning_modules.tasks import load_task

    cfg = settings.cfg
    backbone, _ = load_checkpoint(Path(settings.zoo_root) / job["model"])
    data = load_task(job["task"], settings.data_root, image_size=cfg.image_size, seed=cfg.seed)
    if job["kind"] == "probe":
        return _probe(backbone, data, cfg)
    if job["kind"] == "finetune":
        return _finetune(backbone, data, cfg, float(job["lr"]))
    raise ValueError(f"unknown job kind {job['kind']!r}")


def _probe(backbone, data, cfg: SweepConfig) -> dict[str, float]:
    from lightning_modules.backbones import extract_features
    from selection.proxies import knn_accuracy, linear_probe

    t0 = time.perf_counter()
    (xtr, ytr), (xva, yva) = data.splits["train800"], data.splits["val200"]
    ftr, _ = extract_features(backbone, xtr)
    fva, _ = extract_features(backbone, xva)
    metrics = {"time/features": time.perf_counter() - t0}
    p = cfg.probe
    for proxy in p.proxies:
        t = time.perf_counter()
        if proxy == "linear":
            value = linear_probe(ftr, ytr, fva, yva, lrs=tuple(p.linear.lrs), steps=p.linear.steps,
                                 repeats=p.linear.repeats, batch_size=p.linear.batch_size,
                                 seed=cfg.seed)
        else:
            value = knn_accuracy(ftr, ytr, fva, yva, k=p.knn.k)
        metrics[f"proxy/{proxy}"] = float(value)
        metrics[f"time/proxy/{proxy}"] = time.perf_counter() - t
    return metrics


def _finetune(backbone, data, cfg: SweepConfig, lr: float) -> dict[str, float]:
    import copy

    from lightning_modules.training import run_finetune

    f = cfg.finetune
    metrics: dict[str, float] = {}
    t0 = time.perf_counter()
    for rep in range(f.repeats):
        run = run_finetune(copy.deepcopy(backbone), data.splits, data.num_classes, lr=lr,
                           steps=f.steps, head_steps=f.head_steps, batch_size=f.batch_size,
                           seed=cfg.seed + rep)
        metrics[f"rep{rep}/val_acc"] = run["val_acc"]
        metrics[f"rep{rep}/test_acc"] = run["test_acc"]
    metrics["time/finetune"] = time.perf_counter() - t0
    return metrics


def aggregate_finetune(by_lr: dict[float, dict[str, float]], repeats: int) -> dict[str, float]:
    """Per repetition the best learning rate by validation, its test accuracy; median over reps."""
    from lightning_modules.training import best_by_validation, median_over_repeats

    vals, tests, lrs = [], [], []
    ordered = sorted(by_lr)  # ties in validation go to the smaller learning rate
    for rep in range(repeats):
        runs = [{"lr": lr, "val_acc": by_lr[lr][f"rep{rep}/val_acc"],
                 "test_acc": by_lr[lr][f"rep{rep}/test_acc"]} for lr in ordered]
        best = best_by_validation(runs)
        vals.append(best["val_acc"])
        tests.append(best["test_acc"])
        lrs.append(best["lr"])
    out = {"val/acc": median_over_repeats(vals), "test/acc": median_over_repeats(tests),
           "time/finetune": sum(m.get("time/finetune", 0.0) for m in by_lr.values())}
    for lr in ordered:
        for rep in range(repeats):
            out[f"lr_{lr:g}/rep{rep}/val_acc"] = by_lr[lr][f"rep{rep}/val_acc"]
            out[f"lr_{lr:g}/rep{rep}/test_acc"] = by_lr[lr][f"rep{rep}/test_acc"]
    for rep, lr in enumerate(lrs):
        out[f"rep{rep}/best_lr"] = lr
    return out


# --------------------------------------------------------------------------- the sweep
@dataclass
class Plan:
    cfg: SweepConfig
    path: Path
    zoo_path: Path
    models: list[str]
    tasks: list[str]
    pools: dict[str, list[str]]


@dataclass
class Outcome:
    experiment: str
    pairs_total: int
    pairs_skipped: int
    pairs_logged: int = 0
    failures: list[str] = field(default_factory=list)


def plan_sweep(config_path: str | Path) -> Plan:
    """Parse and validate a sweep file and its zoo file; nothing is run or written."""
    cfg, zoo_path = load_sweep_config(config_path)
    zoo = load_zoo_config(zoo_path)
    path = Path(config_path)
    models = resolve_models(cfg, zoo, path)
    tasks = resolve_tasks(cfg, path)
    pools = resolve_pools(cfg, models, path)
    if not (cfg.probe.enabled or cfg.finetune.enabled):
        raise WhichModelError(f"{path}: key 'probe.enabled' and 'finetune.enabled': both off, "
                              "nothing to run")
    return Plan(cfg, path, zoo_path, models, tasks, pools)


def run_sweep(plan: Plan, paths: Paths, tracking_uri: str | None = None,
              stream=None) -> Outcome:
    from lightning_modules.tasks import get_task_info, load_task

    stream = stream or sys.stderr
    cfg = plan.cfg
    metas = check_models(plan.models, paths, plan.zoo_path)  # unreadable checkpoint: stop here
    uri = paths.tracking_uri(tracking_uri)
    protocols = [p for p in ("probe", "finetune") if getattr(cfg, p).enabled]
    hashes = {p: cfg.protocol_hash(p) for p in protocols}
    tracker = Tracker(uri, cfg.experiment, artifact_root=_artifact_root(uri, paths))
    finished, unfinished = tracker.runs_by_key(hashes)

    todo = [(m, t, p) for p in protocols for m in plan.models for t in plan.tasks
            if f"{m}|{t}|{p}" not in finished]
    outcome = Outcome(cfg.experiment, len(plan.models) * len(plan.tasks) * len(protocols),
                      len(plan.models) * len(plan.tasks) * len(protocols) - len(todo))
    print(f"[whichmodel] sweep {cfg.name}: {outcome.pairs_total} (model, task, protocol) keys, "
          f"{outcome.pairs_skipped} already finished in MLflow ({_redact(uri)}), "
          f"{len(todo)} to run", file=stream, flush=True)
    if not todo:
        return outcome
    for t in sorted({t for _, t, _ in todo}):  # build task caches once, not in every trial
        load_task(t, paths.data_root, image_size=cfg.image_size, seed=cfg.seed)

    # Probes first, so task-aware rankings exist before the fine-tunes finish.
    jobs = [{"kind": "probe", "model": m, "task": t} for m, t, p in todo if p == "probe"]
    jobs += [{"kind": "finetune", "model": m, "task": t, "lr": lr}
             for m, t, p in todo if p == "finetune" for lr in cfg.finetune.lrs]
    pending: dict[tuple[str, str], dict[float, dict]] = {}

    def log(model: str, task: str, protocol: str, metrics: dict[str, float]) -> None:
        meta = metas[model]
        info = get_task_info(task)
        params = {f"{protocol}/{k}": v for k, v in _flatten(cfg.protocol_settings(protocol)).items()}
        params.update({f"model/{k}": meta.get(k) for k in
                       ("arch", "imagenet_acc", "upstream_size", "params", "feature_dim",
                        "upstream_acc", "objective")})
        params["model/upstream"] = ",".join(meta.get("upstream", []))
        tags = {"group": info.group, "pools": ",".join(model_pools(plan.pools, model)),
                "sweep": cfg.name, "profile": cfg.finetune.profile if protocol == "finetune" else ""}
        key = f"{model}|{task}|{protocol}"
        resume = unfinished[key].info.run_id if key in unfinished else None
        tracker.log_pair(model, task, protocol, hashes[protocol], tags, params, metrics,
                         resume_run_id=resume)
        outcome.pairs_logged += 1

    from sweeps.tune_runner import Progress, init_ray, run_jobs

    n_probe = sum(j["kind"] == "probe" for j in jobs)
    progress = Progress({"probe": n_probe, "finetune": len(jobs) - n_probe}, stream=stream)

    def on_result(job: dict, metrics: dict) -> None:
        if job["kind"] == "probe":
            log(job["model"], job["task"], "probe",
                {k: v for k, v in metrics.items() if k.startswith(("proxy/", "time/"))})
        else:
            by_lr = pending.setdefault((job["model"], job["task"]), {})
            by_lr[float(job["lr"])] = metrics
            if len(by_lr) == len(cfg.finetune.lrs):
                log(job["model"], job["task"], "finetune",
                    aggregate_finetune(pending.pop((job["model"], job["task"])),
                                       cfg.finetune.repeats))
        progress.update(job["kind"])

    def on_error(job: dict, err: str) -> None:
        outcome.failures.append(f"{job['kind']} {job['model']}@{job['task']}"
                                + (f" lr={job['lr']}" if "lr" in job else ""))
        progress.update(job["kind"], failed=True)

    r = cfg.resources
    init_ray(r.num_cpus)
    run_jobs(run_trial, jobs, TrialSettings(cfg, str(paths.data_root), str(paths.zoo_root)),
             name=f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=paths.tune_root,
             on_result=on_result, on_error=on_error, cpus_per_trial=r.cpus_per_trial,
             gpus_per_trial=r.gpus_per_trial, max_concurrent_trials=r.max_concurrent_trials)
    return outcome


def _artifact_root(uri: str, paths: Paths) -> Path | None:
    """Local stores keep artifacts under the home folder; a server decides for itself."""
    return paths.artifacts_root if uri.startswith(("sqlite:", "file:", "/")) else None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _redact(uri: str) -> str:
    from sweeps.tracking import _redact as redact

    return redact(uri)
