"""The MLflow recorder: finished trials become runs, one per (model, task, protocol) pair.

The driver is the single MLflow writer. :class:`PairRecorder` is the sink of the Tune callback
(:mod:`sweeps.tune_runner`): a probe is logged as soon as its trial finishes; a fine-tune pair once
every learning rate's trial is in, as per repetition the learning rate with the best validation
accuracy, that run's test accuracy, and the median over repetitions
(:func:`aggregate_finetune`). A pair still waiting for a trial when the sweep ends is a named
failure, never a silent gap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sweeps.config import WhichModelError
from sweeps.plan import PROTOCOLS, Job, Plan, pair_key
from sweeps.registry import model_pools, task_group
from sweeps.tracking import Tracker
from whichmodel.uri import redact_uri


def aggregate_finetune(by_lr: dict[float, dict[str, Any]], repeats: int) -> dict[str, float]:
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


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def artifact_root(uri: str, home_artifacts: Path) -> Path | None:
    """Local stores keep artifacts under the home folder; a server decides for itself."""
    return home_artifacts if uri.startswith(("sqlite:", "file:", "/")) else None


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
        self.hashes = {p: plan.cfg.protocol_hash(p) for p in PROTOCOLS}
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
                                    spool_dir=self.spool_dir)
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
        from sweeps.progress import Progress

        if self._progress is None:
            self._progress = Progress(self.n_jobs)
        return self._progress

    # -- the sink protocol -----------------------------------------------------------------
    def on_result(self, job: Job, metrics: dict) -> None:
        if self._tracker is not None and self._tracker.offline and self._tracker.reachable():
            self._tracker.drain_spool()  # the server is back: log what waited, oldest first
        self._accept(job, metrics)
        self.progress.update(job.kind)

    def on_error(self, job: Job, error: str) -> None:
        self.failures.append(job.describe())
        self.progress.update(job.kind, failed=True)

    def reconcile(self, finished_trials: list[tuple[Job, dict]]) -> None:
        """Log what the callback missed (trials finished before a driver was killed), then name
        every pair still waiting for a trial as a failure.

        With a spool, first replay it, giving a server that is down a minute to come back;
        results still waiting after that end the sweep with an error that says where they are.
        """
        from sweeps.spool import Spool
        from sweeps.tracking import FINAL_DRAIN_DELAYS_S, TrackingUnavailable, with_retries

        if self.spool_dir is None:
            self._refresh()
        else:
            def settle():
                self.tracker.drain_spool()
                if self.tracker.offline:
                    raise TrackingUnavailable("the server does not take the spooled results")
                self._refresh()

            if with_retries(settle, FINAL_DRAIN_DELAYS_S)[1] is not None:
                self._finished, self._unfinished = set(), {}  # unknown: spool what finished
        self.pending.clear()  # every finished trial is in finished_trials: accept them afresh
        for job, metrics in finished_trials:
            if job.pair_key not in self._finished:
                self._accept(job, metrics)
        for (model, task), by_lr in self.pending.items():
            if pair_key(model, task, "finetune") in self._finished:
                continue
            missing = [lr for lr in self.plan.cfg.finetune.lrs if float(lr) not in by_lr]
            self.failures.append(f"finetune {model}@{task}: no result for lr "
                                 + ", ".join(f"{lr:g}" for lr in missing)
                                 + " (the pair was not logged)")
        self.pending.clear()
        left = len(Spool(self.spool_dir, self.plan.cfg.experiment)) if self.spool_dir else 0
        if left:
            raise WhichModelError(
                f"MLflow at {redact_uri(self.uri)} did not take {left} pair result(s) by the end "
                f"of the sweep; nothing is lost: they wait in "
                f"{Spool(self.spool_dir, self.plan.cfg.experiment).dir} and the next 'whichmodel "
                f"run {self.plan.path}' or 'whichmodel resume {self.plan.cfg.name}' logs them "
                f"first (check the server: python -m mlflow_server.health "
                f"{redact_uri(self.uri)})")

    def _accept(self, job: Job, metrics: dict) -> None:
        """Log a probe at once; a fine-tune pair once all its learning rates are in."""
        missing = _missing_metrics(job, metrics, self.plan.cfg.finetune.repeats)
        if missing:
            self.failures.append(f"{job.describe()}: its result lacks {', '.join(missing)}")
            return
        if job.kind == "probe":
            # The features file is on the trial's node: an artifact when the driver can read it
            # (one machine), else found through its copy in shared storage (features_uri tag).
            path = metrics.get("features_path")
            readable = bool(path) and Path(path).is_file()
            self._log(job.model, job.task, "probe",
                      {k: v for k, v in metrics.items() if k.startswith(("proxy/", "time/"))},
                      artifacts=[path] if readable else None,
                      features_uri=metrics.get("features_uri"))
            return
        by_lr = self.pending.setdefault((job.model, job.task), {})
        by_lr[float(job.lr)] = metrics
        if {float(lr) for lr in self.plan.cfg.finetune.lrs} <= set(by_lr):
            del self.pending[(job.model, job.task)]
            self._log(job.model, job.task, "finetune",
                      aggregate_finetune(by_lr, self.plan.cfg.finetune.repeats), by_lr)

    # -- writing ---------------------------------------------------------------------------
    def _log(self, model: str, task: str, protocol: str, metrics: dict[str, float],
             by_lr: dict[float, dict] | None = None, artifacts: list[str] | None = None,
             features_uri: str | None = None) -> None:
        from sweeps.spool import Spool
        from sweeps.tracking import is_server_problem, pair_record, spool_record

        key = pair_key(model, task, protocol)
        if self._finished is not None and key in self._finished:
            return
        cfg, meta = self.plan.cfg, self.metas[model]
        params = {f"{protocol}/{k}": v for k, v in flatten(cfg.protocol_settings(protocol)).items()}
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
        try:
            if self.is_finished(key):
                return
            tracker = self.tracker
        except Exception as exc:  # no server to ask: the record waits (replay skips what's done)
            if self.spool_dir is None or not is_server_problem(exc):
                raise
            spool_record(Spool(self.spool_dir, cfg.experiment), self.uri, record, str(exc)[:160])
            return
        run_id = tracker.record_pair(record, resume_run_id=self._unfinished.get(key))
        self._finished.add(key)
        self.logged += run_id is not None


def _missing_metrics(job: Job, metrics: dict, repeats: int) -> list[str]:
    """What a finished trial's result should hold and does not (a result lost on the way)."""
    if job.kind == "finetune":
        want = [f"rep{r}/{s}_acc" for r in range(repeats) for s in ("val", "test")]
    else:
        want = ["time/features"]
    return [k for k in want if k not in metrics]


def _child_runs(model: str, task: str, by_lr: dict[float, dict]) -> list[dict]:
    """One child run per (learning rate, repetition): its accuracies and loss curve."""
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
