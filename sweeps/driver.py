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
from sweeps.registry import (check_models, load_model_ref, load_task_ref, model_pools,
                             resolve_model_refs, resolve_pools, resolve_task_refs, task_group)
from sweeps.tracking import Tracker, _redact


@dataclass(frozen=True)
class TrialSettings:
    cfg: SweepConfig
    data_root: str
    zoo_root: str
    features_dir: str | None = None  # keep each probe's features as a compressed .npz here
    features_remote: str | None = None  # and copy them to <storage>/features/<sweep> (S3)
    model_refs: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> registry ref
    task_refs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def load_model(self, name: str):
        return load_model_ref(name, self.model_refs.get(name, {"source": "zoo"}), self.zoo_root)

    def load_task(self, name: str):
        return load_task_ref(name, self.task_refs.get(name, {"source": "offline"}),
                             self.data_root, self.cfg.image_size, self.cfg.seed,
                             download=self.cfg.data.download)


# --------------------------------------------------------------------------- trial bodies
def run_trial(job: dict[str, Any], settings: TrialSettings) -> dict[str, float]:
    cfg = settings.cfg
    backbone, _ = settings.load_model(job["model"])
    data = settings.load_task(job["task"])
    if job["kind"] == "probe":
        features_dir = (Path(settings.features_dir) / job["model"]
                        if settings.features_dir and cfg.probe.save_features else None)
        metrics = _probe(backbone, data, cfg, features_dir)
        if settings.features_remote and "features_path" in metrics:
            from sweeps import storage

            metrics["features_uri"] = storage.upload_file(
                metrics["features_path"],
                storage.join(settings.features_remote, job["model"], f"{data.name}.npz"))
        return metrics
    if job["kind"] == "finetune":
        return _finetune(backbone, data, cfg, float(job["lr"]))
    raise ValueError(f"unknown job kind {job['kind']!r}")


def _probe(backbone, data, cfg: SweepConfig, features_dir: Path | None) -> dict[str, Any]:
    """One frozen forward pass over train, validation and test; then every proxy on it."""
    import numpy as np

    from lightning_modules.backbones import extract_features
    from lightning_modules.training import early_stop_proxy
    from selection import proxies as P

    p = cfg.probe
    t0 = time.perf_counter()
    feats, probs = {}, {}
    for split in ("train800", "val200", "test"):
        feats[split], probs[split] = extract_features(backbone, data.splits[split][0],
                                                      with_source_probs=True)
    metrics: dict[str, Any] = {"time/features": time.perf_counter() - t0}
    ytr, yva = data.splits["train800"][1], data.splits["val200"][1]
    feature_proxies = [n for n in p.proxies if n != "early_stop"]
    if feature_proxies:
        results = P.compute_proxies(
            feature_proxies, feats["train800"], ytr, feats["val200"], yva,
            source_probs_train=probs["train800"],
            linear_kwargs={"lrs": tuple(p.linear.lrs), "steps": p.linear.steps,
                           "repeats": p.linear.repeats, "batch_size": p.linear.batch_size,
                           "seed": cfg.seed},
            knn_kwargs={"k": p.knn.k})
        for name, (value, seconds) in results.items():
            metrics[f"proxy/{name}"] = float(value)
            metrics[f"time/proxy/{name}"] = seconds
    if "early_stop" in p.proxies:
        t = time.perf_counter()
        e = p.early_stop
        metrics["proxy/early_stop"] = early_stop_proxy(
            backbone, data.splits, data.num_classes, e.lrs, e.steps, e.repeats, e.batch_size,
            seed=cfg.seed)
        metrics["time/proxy/early_stop"] = time.perf_counter() - t
    if features_dir:
        arrays = {f"{s}_x": f.numpy().astype(np.float16) for s, f in feats.items()}
        arrays.update({f"{s}_y": data.splits[s][1] for s in feats})
        arrays.update({f"{s}_source_probs": v.numpy().astype(np.float16)
                       for s, v in probs.items() if v is not None})
        path = Path(features_dir) / f"{data.name}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)
        metrics["features_path"] = str(path)
    return metrics


def _finetune(backbone, data, cfg: SweepConfig, lr: float) -> dict[str, Any]:
    import copy
    import json

    from lightning_modules.training import run_finetune

    f = cfg.finetune
    metrics: dict[str, Any] = {}
    curves = {}
    t0 = time.perf_counter()
    for rep in range(f.repeats):
        run = run_finetune(copy.deepcopy(backbone), data.splits, data.num_classes, lr=lr,
                           steps=f.steps, head_steps=f.head_steps, batch_size=f.batch_size,
                           seed=cfg.seed + rep, trainable=f.trainable, curve_every=f.curve_every,
                           precision=f.precision)
        metrics[f"rep{rep}/val_acc"] = run["val_acc"]
        metrics[f"rep{rep}/test_acc"] = run["test_acc"]
        curves[f"rep{rep}"] = run["curve"]
    metrics["time/finetune"] = time.perf_counter() - t0
    metrics["curves"] = json.dumps(curves)  # a string: Tune results stay flat
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
           "finetune_val_acc": median_over_repeats(vals),
           "finetune_test_acc": median_over_repeats(tests),
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
    model_refs: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_refs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def data_root(self, paths: Paths) -> Path:
        """Where tasks are read and cached: the sweep's ``data.root`` or the home folder's."""
        root = self.cfg.data.root
        return (self.path.parent / root).resolve() if root else paths.data_root


@dataclass
class Outcome:
    experiment: str
    pairs_total: int
    pairs_skipped: int
    pairs_logged: int = 0
    failures: list[str] = field(default_factory=list)
    experiment_path: str = ""
    tracking_uri: str = ""


def plan_sweep(config_path: str | Path) -> Plan:
    """Parse and validate a sweep file and its zoo file; nothing is run or written."""
    cfg, zoo_path = load_sweep_config(config_path)
    path = Path(config_path)
    zoo = load_zoo_config(zoo_path) if _needs_zoo(cfg, zoo_path) else None
    models, model_refs, catalog_pools = resolve_model_refs(cfg, zoo, path)
    tasks, task_refs = resolve_task_refs(cfg, path)
    pools = resolve_pools(cfg, models, path, catalog_pools)
    if not (cfg.probe.enabled or cfg.finetune.enabled):
        raise WhichModelError(f"{path}: key 'probe.enabled' and 'finetune.enabled': both off, "
                              "nothing to run")
    return Plan(cfg, path, zoo_path, models, tasks, pools, model_refs, task_refs)


def _needs_zoo(cfg: SweepConfig, zoo_path: Path) -> bool:
    """A sweep of hub models only may have no zoo file; one naming zoo models needs it."""
    from sweeps.config import HUB_PREFIXES, ModelEntry

    if zoo_path.is_file():
        return True
    if cfg.models == "all":
        return cfg.catalog is None
    return not cfg.catalog and any(
        not isinstance(m, ModelEntry) and not m.startswith(HUB_PREFIXES) for m in cfg.models)


class PairRecorder:
    """Turns finished trials into MLflow runs, one per (model, task, protocol) key.

    Lives in the driver as a Tune callback's sink, and is pickled with Tune's run config, so it
    holds only plain state: the MLflow client is opened lazily, and after ``Tuner.restore`` the
    keys finished before the interruption are read again before anything is written.
    """

    def __init__(self, plan: Plan, metas: dict[str, dict], uri: str, artifact_root: Path | None,
                 n_jobs: dict[str, int], spool_dir: Path | None = None):
        self.plan, self.metas, self.uri, self.artifact_root = plan, metas, uri, artifact_root
        self.spool_dir = spool_dir  # results wait here while MLflow is down (sweeps/spool.py)
        self.hashes = {p: plan.cfg.protocol_hash(p) for p in ("probe", "finetune")}
        self.n_jobs = n_jobs
        self.pending: dict[tuple[str, str], dict[float, dict]] = {}
        self.logged = 0
        self.failures: list[str] = []
        self._tracker = None
        self._finished: set[str] | None = None
        self._unfinished: dict[str, str] = {}
        self._progress = None
        _ = self.progress  # elapsed and estimates count from the start of the sweep

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_tracker=None, _finished=None, _unfinished={}, _progress=None)
        return state

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri, self.plan.cfg.experiment, self.artifact_root,
                                    spool_dir=getattr(self, "spool_dir", None))
        return self._tracker

    def _refresh(self) -> None:
        finished, unfinished = self.tracker.runs_by_key(self.hashes)
        self._finished = set(finished)
        self._unfinished = {k: r.info.run_id for k, r in unfinished.items()}

    def is_finished(self, key: str) -> bool:
        if self._finished is None:
            self._refresh()
        return key in self._finished

    @property
    def progress(self):
        from sweeps.tune_runner import Progress

        if self._progress is None:
            self._progress = Progress(self.n_jobs)
        return self._progress

    # -- the sink protocol -----------------------------------------------------------------
    def on_result(self, job: dict, metrics: dict) -> None:
        if self._tracker is not None and self._tracker.offline and self._tracker.reachable():
            self._tracker.drain_spool()  # the server is back: log what waited, oldest first
        self._accept(job, metrics)
        self.progress.update(job["kind"])

    def on_error(self, job: dict, error: str) -> None:
        self.failures.append(f"{job['kind']} {job['model']}@{job['task']}"
                             + (f" lr={job['lr']}" if "lr" in job else ""))
        self.progress.update(job["kind"], failed=True)

    def reconcile(self, finished_trials: list[tuple[dict, dict]]) -> None:
        """Log what the callback missed (trials finished before a driver was killed).

        With a spool, first replay it, giving a server that is down a minute to come back;
        results still waiting after that end the sweep with an error that says where they are.
        """
        from sweeps.spool import Spool
        from sweeps.tracking import FINAL_DRAIN_DELAYS_S, TrackingUnavailable, with_retries

        spool_dir = getattr(self, "spool_dir", None)
        if spool_dir is None:
            self._refresh()
        else:
            def settle():
                self.tracker.drain_spool()
                if self.tracker.offline:
                    raise TrackingUnavailable("the server does not take the spooled results")
                self._refresh()

            if with_retries(settle, FINAL_DRAIN_DELAYS_S)[1] is not None:
                self._finished, self._unfinished = set(), {}  # unknown: spool what finished
        self.pending.clear()
        for job, metrics in finished_trials:
            if f"{job['model']}|{job['task']}|{job['kind']}" not in self._finished:
                self._accept(job, metrics)
        self.pending.clear()
        left = len(Spool(spool_dir, self.plan.cfg.experiment)) if spool_dir else 0
        if left:
            raise WhichModelError(
                f"MLflow at {_redact(self.uri)} did not take {left} pair result(s) by the end of "
                f"the sweep; nothing is lost: they wait in "
                f"{Spool(spool_dir, self.plan.cfg.experiment).dir} and the next 'whichmodel run "
                f"{self.plan.path}' or 'whichmodel resume {self.plan.cfg.name}' logs them first "
                f"(check the server: python -m mlflow_server.health {_redact(self.uri)})")

    def _accept(self, job: dict, metrics: dict) -> None:
        """Log a probe at once; a fine-tune pair once all its learning rates are in."""
        model, task = job["model"], job["task"]
        if job["kind"] == "probe":
            # The features file is on the trial's node: an artifact when the driver can read it
            # (one machine), else found through its copy in shared storage (features_uri tag).
            path = metrics.get("features_path")
            readable = bool(path) and Path(path).is_file()
            self._log(model, task, "probe",
                      {k: v for k, v in metrics.items() if k.startswith(("proxy/", "time/"))},
                      artifacts=[path] if readable else None,
                      features_uri=metrics.get("features_uri"))
            return
        by_lr = self.pending.setdefault((model, task), {})
        by_lr[float(job["lr"])] = metrics
        if len(by_lr) == len(self.plan.cfg.finetune.lrs):
            del self.pending[(model, task)]
            self._log(model, task, "finetune",
                      aggregate_finetune(by_lr, self.plan.cfg.finetune.repeats), by_lr)

    # -- writing ---------------------------------------------------------------------------
    def _log(self, model: str, task: str, protocol: str, metrics: dict[str, float],
             by_lr: dict[float, dict] | None = None, artifacts: list[str] | None = None,
             features_uri: str | None = None) -> None:

        from sweeps.spool import Spool
        from sweeps.tracking import is_server_problem, pair_record, spool_record

        key = f"{model}|{task}|{protocol}"
        if self._finished is not None and key in self._finished:
            return
        cfg, meta = self.plan.cfg, self.metas[model]
        params = {f"{protocol}/{k}": v for k, v in _flatten(cfg.protocol_settings(protocol)).items()}
        params.update({f"model/{k}": meta.get(k) for k in
                       ("arch", "imagenet_acc", "upstream_size", "params", "feature_dim",
                        "upstream_acc", "objective")})
        params["model/upstream"] = ",".join(meta.get("upstream", []))
        tags = {"group": task_group(task, self.plan.task_refs.get(task, {})), "sweep": cfg.name,
                "pools": ",".join(model_pools(self.plan.pools, model))}
        if protocol == "finetune":
            tags.update(profile=cfg.finetune.profile, trainable=cfg.finetune.trainable)
        if features_uri:
            tags["features_uri"] = features_uri
        record = pair_record(model, task, protocol, self.hashes[protocol], tags, params, metrics,
                             children=_child_runs(model, task, by_lr) if by_lr else None,
                             artifacts=artifacts)
        spool_dir = getattr(self, "spool_dir", None)
        try:
            if self.is_finished(key):
                return
            tracker = self.tracker
        except Exception as exc:  # no server to ask: the record waits (replay skips what's done)
            if spool_dir is None or not is_server_problem(exc):
                raise
            spool_record(Spool(spool_dir, cfg.experiment), self.uri, record, str(exc)[:160])
            return
        run_id = tracker.record_pair(record, resume_run_id=self._unfinished.get(key))
        self._finished.add(key)
        self.logged += run_id is not None


def _child_runs(model: str, task: str, by_lr: dict[float, dict]) -> list[dict]:
    """One child run per (learning rate, repetition): its accuracies and loss curve."""
    import json

    children = []
    for lr, metrics in sorted(by_lr.items()):
        curves = json.loads(metrics.get("curves", "{}"))
        for rep_key, curve in sorted(curves.items()):
            children.append({
                "name": f"{model}@{task}:finetune/lr={lr:g}/{rep_key}",
                "params": {"lr": lr, "repetition": rep_key},
                "metrics": {"val/acc": metrics.get(f"{rep_key}/val_acc"),
                            "test/acc": metrics.get(f"{rep_key}/test_acc")},
                "history": {"train/loss": curve},
            })
    return children


def run_sweep(plan: Plan, paths: Paths, tracking_uri: str | None = None,
              stream=None) -> Outcome:
    from sweeps.tune_runner import init_ray, run_jobs

    stream = stream or sys.stderr
    cfg = plan.cfg
    # An unreadable checkpoint, hub weights that don't fit: stop here, before anything runs.
    metas = check_models(plan.models, paths, plan.zoo_path, plan.model_refs)
    # Build (or read) every task's cache once here, not in every trial; a missing data root or an
    # empty class folder stops the sweep before anything is written.
    settings = trial_settings(plan, paths)
    for t in plan.tasks:
        try:
            settings.load_task(t)
        except (ValueError, OSError) as exc:
            raise WhichModelError(f"task {t!r}: {exc}") from None
    uri = paths.tracking_uri(tracking_uri)
    protocols = [p for p in ("probe", "finetune") if getattr(cfg, p).enabled]
    hashes = {p: cfg.protocol_hash(p) for p in protocols}
    tracker = Tracker(uri, cfg.experiment, artifact_root=_artifact_root(uri, paths),
                      spool_dir=paths.home / "spool")  # preflight; replays an earlier spool
    finished, _ = tracker.runs_by_key(hashes)

    todo = [(m, t, p) for p in protocols for m in plan.models for t in plan.tasks
            if f"{m}|{t}|{p}" not in finished]
    total = len(plan.models) * len(plan.tasks) * len(protocols)
    outcome = Outcome(cfg.experiment, total, total - len(todo), tracking_uri=uri)
    print(f"[whichmodel] sweep {cfg.name}: {total} (model, task, protocol) keys, "
          f"{outcome.pairs_skipped} already finished in MLflow ({_redact(uri)}), "
          f"{len(todo)} to run", file=stream, flush=True)
    if not todo:
        return outcome

    jobs = expand_jobs(cfg, todo)
    n_probe = sum(j["kind"] == "probe" for j in jobs)
    recorder = PairRecorder(plan, metas, uri, _artifact_root(uri, paths),
                            {"probe": n_probe, "finetune": len(jobs) - n_probe},
                            spool_dir=paths.home / "spool")
    name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    state = _write_state(paths, plan, name, uri)
    init_ray(cfg.resources.num_cpus)
    done = run_jobs(run_trial, jobs, settings, name=name,
                    storage_path=paths.tune_root, sink=recorder,
                    resources=trial_resources(cfg), max_failures=cfg.resources.max_failures,
                    max_concurrent_trials=cfg.resources.max_concurrent_trials)
    recorder.reconcile(done)
    outcome.pairs_logged, outcome.failures = recorder.logged, recorder.failures
    outcome.experiment_path = state["experiment_path"]
    return outcome


def resume_sweep(name: str, paths: Paths, stream=None) -> tuple[Plan, Outcome]:
    """Continue the latest interrupted run of sweep ``name`` with Tune's restore."""
    from sweeps.tune_runner import init_ray, restore_jobs

    stream = stream or sys.stderr
    state = _read_state(paths, name)
    plan = plan_sweep(state["config"])
    metas = check_models(plan.models, paths, plan.zoo_path, plan.model_refs)
    cfg, uri = plan.cfg, state["tracking_uri"]
    recorder = PairRecorder(plan, metas, uri, _artifact_root(uri, paths),
                            {"probe": 0, "finetune": 0}, spool_dir=paths.home / "spool")
    Tracker(uri, cfg.experiment, artifact_root=_artifact_root(uri, paths),
            spool_dir=paths.home / "spool")  # preflight; replays what a killed driver spooled
    print(f"[whichmodel] resuming {state['experiment_path']}", file=stream, flush=True)
    init_ray(cfg.resources.num_cpus)
    try:
        done = restore_jobs(run_trial, trial_settings(plan, paths), path=state["experiment_path"],
                            resources=trial_resources(cfg))
    except FileNotFoundError:
        # Killed before Tune saved any state: a fresh run skips what MLflow has finished.
        print(f"[whichmodel] no Tune state at {state['experiment_path']}; running the sweep's "
              "unfinished pairs afresh", file=stream, flush=True)
        return plan, run_sweep(plan, paths, tracking_uri=uri, stream=stream)
    recorder.reconcile(done)
    total = len(plan.models) * len(plan.tasks) * 2
    outcome = Outcome(cfg.experiment, total, 0, recorder.logged, recorder.failures,
                      state["experiment_path"], uri)
    return plan, outcome


def expand_jobs(cfg: SweepConfig, todo: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Probes first, so task-aware rankings exist before the fine-tunes finish."""
    jobs = [{"kind": "probe", "model": m, "task": t} for m, t, p in todo if p == "probe"]
    jobs += [{"kind": "finetune", "model": m, "task": t, "lr": lr}
             for m, t, p in todo if p == "finetune" for lr in cfg.finetune.lrs]
    return jobs


def trial_settings(plan: Plan, paths: Paths) -> TrialSettings:
    remote = f"{paths.storage}/features/{plan.cfg.name}" if paths.storage else None
    return TrialSettings(plan.cfg, str(plan.data_root(paths)), str(paths.zoo_root),
                         str(paths.home / "features" / plan.cfg.name), remote,
                         model_refs=plan.model_refs, task_refs=plan.task_refs)


def trial_resources(cfg: SweepConfig):
    from sweeps.tune_runner import TrialResources

    r = cfg.resources
    return TrialResources({"probe": (r.probe.cpus, r.probe.gpus),
                           "finetune": (r.finetune.cpus, r.finetune.gpus)})


def remembered_config(paths: Paths, experiment: str) -> Path | None:
    """The sweep file of the latest run whose experiment is ``experiment``, if still there."""
    import json

    for state_file in sorted((paths.home / "sweeps").glob("*.json")):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if state.get("experiment") == experiment and Path(state["config"]).is_file():
            return Path(state["config"])
    return None


def _write_state(paths: Paths, plan: Plan, name: str, uri: str) -> dict[str, str]:
    """Remember the latest Tune experiment of a sweep, for ``whichmodel resume NAME``: under the
    home folder, and in shared storage (``WHICHMODEL_STORAGE``) for a new head node."""
    import json

    from sweeps import storage
    from sweeps.tune_runner import experiment_path

    state = {"config": str(plan.path.resolve()), "tracking_uri": uri,
             "experiment": plan.cfg.experiment,
             "experiment_path": experiment_path(paths.tune_root, name)}
    text = json.dumps(state, indent=2)
    storage.write_text(paths.state_root / f"{plan.cfg.name}.json", text)
    if paths.storage:
        storage.write_text(storage.join(paths.storage, "sweeps", f"{plan.cfg.name}.json"), text)
    return state


def _read_state(paths: Paths, name: str) -> dict[str, str]:
    """The sweep's state file: this home folder's, else the shared storage's (a new head node)."""
    import json

    from sweeps import storage

    places: list[Any] = [paths.state_root / f"{name}.json"]
    if paths.storage:
        places.append(storage.join(paths.storage, "sweeps", f"{name}.json"))
    for place in places:
        try:
            return json.loads(storage.read_text(place))
        except FileNotFoundError:
            continue
    raise WhichModelError(f"{' or '.join(map(str, places))}: no run of sweep {name!r} to resume; "
                          "start one with 'whichmodel run CONFIG'")


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
