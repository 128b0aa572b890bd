"""The MLflow recorder: finished trials become runs, one per (model, task, protocol) pair.

The driver is the single MLflow writer. :class:`PairRecorder` is the sink of the Tune callback
(:mod:`sweeps.tune_runner`): a probe is logged once its trial (and its early-stop proxy, fine-tune
work) is in; a fine-tune pair once every (learning rate, repetition) run is in, as per repetition
the learning rate with the best validation accuracy, that run's test accuracy, and the median
over repetitions (:func:`aggregate_finetune`), each run's curves as stepped metrics of the pair
run (:mod:`sweeps.tracking.pairs`). The callback journals the pair's record and queues it; a
thread of its own logs it (:mod:`sweeps.tracking.writer`, which defines when a result is
*acknowledged*). A pair still waiting for a trial when the sweep ends is a named failure, never a
silent gap.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from sweeps.plan import PROTOCOLS, Job, Plan, pair_key
from sweeps.refs import model_pools, task_group
from sweeps.tracking.client import Tracker
from sweeps.tracking.pairs import CURVE_POINTS, curve_key, thin
from whichmodel.errors import WhichModelError
from whichmodel.files import atomic_write_json
from whichmodel.names import within
from whichmodel.uri import redact_uri


def aggregate_finetune(runs: dict[tuple[float, int], dict[str, Any]]) -> dict[str, float]:
    """Per repetition the learning rate with the best validation accuracy and that run's test
    accuracy; the median over repetitions (Renggli et al. 2022, Sec. 4.3). ``runs`` maps
    (lr, repetition) to the run's ``val_acc`` and ``test_acc``."""
    from lightning_modules.training import best_by_validation, median_over_repeats

    lrs = sorted({lr for lr, _ in runs})  # ties in validation go to the smaller learning rate
    reps = sorted({rep for _, rep in runs})
    vals, tests, best_lrs = [], [], []
    for rep in reps:
        best = best_by_validation([{"lr": lr, **runs[(lr, rep)]} for lr in lrs])
        vals.append(best["val_acc"])
        tests.append(best["test_acc"])
        best_lrs.append(best["lr"])
    out = {"val/acc": median_over_repeats(vals), "test/acc": median_over_repeats(tests),
           "finetune_val_acc": median_over_repeats(vals),
           "finetune_test_acc": median_over_repeats(tests)}
    for (lr, rep), run in sorted(runs.items()):
        out[f"lr_{lr:g}/rep{rep}/val_acc"] = run["val_acc"]
        out[f"lr_{lr:g}/rep{rep}/test_acc"] = run["test_acc"]
        if run.get("micro_batch"):
            out[f"lr_{lr:g}/rep{rep}/micro_batch"] = run["micro_batch"]
    for rep, lr in zip(reps, best_lrs):
        out[f"rep{rep}/best_lr"] = lr
        out[f"rep{rep}/test_acc"] = tests[reps.index(rep)]
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
                 n_jobs: dict[str, int], spool_dir: Path | None = None,
                 estimates: dict[str, float] | None = None):
        self.plan, self.metas, self.uri, self.artifact_root = plan, metas, uri, artifact_root
        self.spool_dir = spool_dir  # results wait here while MLflow is down (sweeps/tracking/spool.py)
        self.hashes = {p: plan.cfg.protocol_hash(p) for p in PROTOCOLS}
        self.n_jobs = n_jobs
        self.estimates = estimates  # each trial's estimated compute (sweeps/cost.py), by describe()
        # results of a pair waiting for the rest: fine-tune runs, or a probe and its early stop
        self.pending: dict[tuple[str, str], dict[tuple[float, int], dict]] = {}
        self.probes: dict[tuple[str, str], dict[str, Any]] = {}
        self.logged = 0
        self.failures: list[str] = []
        self._tracker = None
        self._writer = None
        self._finished: set[str] | None = None
        self._unfinished: dict[str, str] = {}
        self._progress = None
        _ = self.progress  # elapsed and estimates count from the start of the sweep

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_tracker=None, _writer=None, _finished=None, _unfinished={}, _progress=None)
        return state

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri, self.plan.cfg.experiment, self.artifact_root,
                                    spool_dir=self.spool_dir)
        return self._tracker

    def use(self, tracker: Tracker) -> None:
        """Write through the driver's tracker (its read of the pair runs serves the skip check
        and this recorder: one read)."""
        self._tracker = tracker

    @property
    def writer(self):
        from sweeps.tracking.outage import is_http
        from sweeps.tracking.writer import Writer

        if self._writer is None:
            remote = self.spool_dir is not None and is_http(self.uri)  # a local store is read in place
            cache = self.spool_dir.parent / "cache" / "artifacts" if remote else None
            self._writer = Writer(self.tracker, self.tracker.spool, cache_dir=cache)
        return self._writer

    def flush(self) -> None:
        """Wait until every queued record is logged (or in the spool); collect the writer's
        failures."""
        if self._writer is not None:
            self._writer.close()
            self.logged += self._writer.logged
            self.failures += self._writer.failures
            self._writer.logged, self._writer.failures = 0, []

    def _refresh(self) -> None:
        finished, unfinished = self.tracker.keys_by_status(self.hashes)
        self._finished = set(finished)
        self._unfinished = {k: r.run_id for k, r in unfinished.items()}

    def is_finished(self, key: str) -> bool:
        if self._finished is None:
            self._refresh()
        return key in self._finished

    @property
    def progress(self):
        from sweeps.progress import Progress

        if self._progress is None:
            self._progress = Progress(self.n_jobs, estimates=self.estimates)
        return self._progress

    # -- the sink protocol -----------------------------------------------------------------
    def on_result(self, job: Job, metrics: dict) -> None:
        self._accept(job, metrics)
        from sweeps.progress import compute_seconds

        self.progress.update(job.kind, job=job.describe(), seconds=compute_seconds(metrics))

    def on_error(self, job: Job, error: str) -> None:
        self.failures.append(job.describe())
        self.progress.update(job.kind, failed=True, job=job.describe())

    def reconcile(self, finished_trials: list[tuple[Job, dict]]) -> None:
        """Log what the callback missed (trials finished before a driver was killed), then name
        every pair still waiting for a trial as a failure.

        With a spool, first replay it, giving a server that is down a minute to come back;
        results still waiting after that end the sweep with an error that says where they are.
        """
        from sweeps.tracking.outage import FINAL_DRAIN_DELAYS_S, TrackingUnavailable, with_retries
        from sweeps.tracking.spool import Spool

        self.flush()
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
        self.probes.clear()
        for job, metrics in finished_trials:
            if job.pair_key not in self._finished:
                self._accept(job, metrics)
        for (model, task), runs in self.pending.items():
            if pair_key(model, task, "finetune") in self._finished:
                continue
            missing = [k for k in self._expected_runs() if k not in runs]
            self.failures.append(f"finetune {model}@{task}: no result for "
                                 + ", ".join(f"lr {lr:g} rep {rep}" for lr, rep in missing)
                                 + " (the pair was not logged)")
        for (model, task), parts in self.probes.items():
            if pair_key(model, task, "probe") not in self._finished:
                what = "its early-stop proxy" if "probe" in parts else "its probe trial"
                self.failures.append(f"probe {model}@{task}: no result for {what} (the pair was "
                                     "not logged)")
        self.pending.clear()
        self.probes.clear()
        self.flush()
        left = len(Spool(self.spool_dir, self.plan.cfg.experiment)) if self.spool_dir else 0
        if left:
            raise WhichModelError(
                f"MLflow at {redact_uri(self.uri)} did not take {left} pair result(s) by the end "
                f"of the sweep; nothing is lost: they wait in "
                f"{Spool(self.spool_dir, self.plan.cfg.experiment).dir} and the next 'whichmodel "
                f"run {self.plan.path}' or 'whichmodel resume {self.plan.cfg.name}' logs them "
                f"first (check the server: python -m mlflow_server.health "
                f"{redact_uri(self.uri)})")

    def _expected_runs(self) -> list[tuple[float, int]]:
        f = self.plan.cfg.finetune
        return [(float(lr), rep) for lr in f.lrs for rep in range(f.repeats)]

    def _accept(self, job: Job, metrics: dict) -> None:
        """Log a pair once all its results are in: a probe with its early-stop proxy (when the
        sweep asks for it), a fine-tune with every (learning rate, repetition) run."""
        missing = _missing_metrics(job, metrics)
        if missing:
            self.failures.append(f"{job.describe()}: its result lacks {', '.join(missing)}")
            return
        pair = (job.model, job.task)
        if job.kind == "probe" or job.early_stop:
            parts = self.probes.setdefault(pair, {})
            parts["probe" if job.kind == "probe" else "early_stop"] = metrics
            if job.kind == "finetune":  # the proxy ran inside a fine-tune trial
                parts["early_stop_in_finetune"] = True
            self._log_probe_when_complete(pair)
        if job.kind != "finetune":
            return
        runs = self.pending.setdefault(pair, {})
        curves = json.loads(metrics.get("curves", "{}"))
        val_curves = json.loads(metrics.get("val_curves", "{}"))
        preds = json.loads(metrics.get("test_predictions", "{}"))
        labels = json.loads(metrics.get("test_labels", "null"))
        for lr, rep in job.runs:
            key = f"lr_{lr:g}/rep{rep}"
            runs[(lr, rep)] = {"val_acc": metrics[f"{key}/val_acc"],
                               "test_acc": metrics[f"{key}/test_acc"],
                               "curve": curves.get(key, []), "val_curve": val_curves.get(key),
                               "seconds": metrics.get("time/finetune", 0.0) / len(job.runs),
                               "test_pred": preds.get(key), "test_labels": labels,
                               "micro_batch": metrics.get(f"{key}/micro_batch"),
                               "started_at": metrics.get("started_at"),
                               "ended_at": metrics.get("ended_at"),
                               "digest": metrics.get("task_digest")}
        if set(self._expected_runs()) <= set(runs):
            del self.pending[pair]
            aggregated = aggregate_finetune(runs)
            aggregated["time/finetune"] = sum(r["seconds"] for r in runs.values())
            path = self._save_predictions(job.model, job.task, runs, aggregated)
            curves = self._results_file("curves", f"{job.model}@{job.task}.json")
            atomic_write_json(curves, run_curves(runs, points=None), indent=None)
            artifacts = [(str(path), "predictions")] if path else []
            self._log(job.model, job.task, "finetune", aggregated, runs,
                      artifacts=[*artifacts, (str(curves), "curves")],
                      span=trial_span(runs.values()),
                      digest=next((r["digest"] for r in runs.values() if r.get("digest")), None))

    def _results_file(self, kind: str, name: str) -> Path:
        """Where a pair's file waits to be an artifact: ``$WHICHMODEL_HOME/<kind>/<experiment>/``
        (the experiment and the file's name checked to stay inside it)."""
        home = self.spool_dir.parent if self.spool_dir else Path(tempfile.gettempdir())
        path = within(home, kind, self.plan.cfg.experiment, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _save_predictions(self, model: str, task: str, runs: dict[tuple[float, int], dict],
                          aggregated: dict[str, float]) -> Path | None:
        """The test predictions of each repetition's selected run (``rep<r>/best_lr``) and the
        test labels as one compressed .npz (``predictions`` (repetitions, examples) int16,
        ``labels``, ``best_lrs``): the report resamples the test examples from it. None when a
        run has none (a result from before predictions were kept)."""
        import numpy as np

        from whichmodel.files import atomic_path

        reps = sorted({rep for _, rep in runs})
        best = [float(aggregated[f"rep{rep}/best_lr"]) for rep in reps]
        chosen = [runs[(lr, rep)] for lr, rep in zip(best, reps)]
        if any(r.get("test_pred") is None or r.get("test_labels") is None for r in chosen):
            return None
        path = self._results_file("predictions", f"{model}@{task}.npz")
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, predictions=np.asarray([r["test_pred"] for r in chosen],
                                                          dtype=np.int16),
                                labels=np.asarray(chosen[0]["test_labels"], dtype=np.int16),
                                best_lrs=np.asarray(best), repetitions=np.asarray(reps))
        return path

    def _log_probe_when_complete(self, pair: tuple[str, str]) -> None:
        parts = self.probes[pair]
        early = "early_stop" in self.plan.cfg.probe.proxies
        if "probe" not in parts or (early and "early_stop" not in parts):
            return
        del self.probes[pair]
        metrics = {**parts["probe"], **{k: v for k, v in parts.get("early_stop", {}).items()
                                        if k in ("proxy/early_stop", "time/proxy/early_stop")}}
        own_trials = [parts["probe"]]  # the run's time: its probe and its own early-stop trial
        if "early_stop" in parts and not parts.get("early_stop_in_finetune"):
            own_trials.append(parts["early_stop"])
        span = trial_span(own_trials)
        # The features file is on the trial's node: an artifact when the driver can read it
        # (one machine), else found through its copy in shared storage (features_uri tag).
        path = metrics.get("features_path")
        readable = bool(path) and Path(path).is_file()
        self._log(*pair, "probe",
                  {k: v for k, v in metrics.items() if k.startswith(("proxy/", "time/"))},
                  artifacts=[(path, "features")] if readable else None,
                  features_uri=metrics.get("features_uri"), span=span,
                  digest=metrics.get("task_digest"),
                  micro=micro_batch_params("probe", parts.get("early_stop", {}),
                                           self.plan.cfg.probe.early_stop.batch_size))

    # -- writing ---------------------------------------------------------------------------
    def _log(self, model: str, task: str, protocol: str, metrics: dict[str, float],
             runs: dict[tuple[float, int], dict] | None = None,
             artifacts: list[tuple[str, str]] | None = None,
             features_uri: str | None = None, span: tuple[float, float] | None = None,
             digest: str | None = None, micro: dict[str, Any] | None = None) -> None:
        """Log (or spool) the pair's run: ``span`` is its trials' (first start, last end) in
        epoch seconds, ``digest`` its task's :func:`~lightning_modules.task_data.splits_digest`
        (the run's dataset input)."""
        from sweeps.tracking.outage import is_server_problem, spool_record
        from sweeps.tracking.pairs import pair_record
        from sweeps.tracking.spool import Spool

        key = pair_key(model, task, protocol)
        if self._finished is not None and key in self._finished:
            return
        cfg, meta = self.plan.cfg, self.metas[model]
        # the protocol's settings (what protocol_hash digests) as one param: a row each would be
        # a tenth of what every read of the pair runs makes the server build
        params = {f"{protocol}/settings": json.dumps(cfg.protocol_settings(protocol),
                                                     sort_keys=True, default=str)}
        params.update({f"model/{k}": meta.get(k) for k in
                       ("arch", "imagenet_acc", "upstream_size", "params", "feature_dim",
                        "upstream_acc", "objective")})
        params["model/upstream"] = ",".join(meta.get("upstream", []))
        params.update(micro or (micro_batch_params(protocol, runs, cfg.finetune.batch_size)
                                if runs else {}))
        tags = {"group": task_group(task, self.plan.task_refs.get(task, {})), "sweep": cfg.name,
                "pools": ",".join(model_pools(self.plan.pools, model))}
        if protocol == "finetune":
            tags.update(profile=cfg.finetune.profile, trainable=cfg.finetune.trainable)
        if features_uri:
            tags["features_uri"] = features_uri
        record = pair_record(model, task, protocol, self.hashes[protocol], tags, params, metrics,
                             history=run_curves(runs) if runs else None,
                             artifacts=artifacts, span=span,
                             dataset=task_dataset(task, self.plan.task_refs.get(task, {}), digest,
                                                 cfg, protocol) if digest else None)
        try:
            if self.is_finished(key):
                return
            self.writer  # noqa: B018 - the tracker opens here (preflight), on the driver's thread
        except Exception as exc:  # no server to ask: the record waits (replay skips what's done)
            if self.spool_dir is None or not is_server_problem(exc):
                raise
            spool_record(Spool(self.spool_dir, cfg.experiment), self.uri, record, str(exc)[:160])
            return
        self.writer.put(record, resume_run_id=self._unfinished.get(key))  # acknowledged
        self._finished.add(key)


def trial_span(results) -> tuple[float, float] | None:
    """(first start, last end) in epoch seconds of trial results that carry ``started_at`` and
    ``ended_at`` (:func:`sweeps.trials.run_trial`); None when none does."""
    starts = [r["started_at"] for r in results if r.get("started_at") is not None]
    ends = [r["ended_at"] for r in results if r.get("ended_at") is not None]
    return (min(starts), max(ends)) if starts and ends else None


def task_dataset(task: str, ref: dict[str, Any], digest: str, cfg, protocol: str
                 ) -> dict[str, str]:
    """The task as an MLflow dataset input: its name, the digest of its splits, where it comes
    from (``source``: the kind of task and, for an ImageFolder, its folder; the image size and
    seed its splits are rendered at) and the protocol as the input's context."""
    kind = ref.get("source", "offline")
    source = {"uri": str(ref["path"]) if kind == "imagefolder" else f"{kind}:{task}",
              "kind": kind, "image_size": cfg.image_size, "seed": cfg.seed}
    return {"name": task, "digest": digest, "source_type": "local" if kind == "imagefolder"
            else "whichmodel", "source": json.dumps(source, sort_keys=True), "context": protocol}


def _missing_metrics(job: Job, metrics: dict) -> list[str]:
    """What a finished trial's result should hold and does not (a result lost on the way)."""
    want = [f"lr_{lr:g}/rep{rep}/{s}_acc" for lr, rep in job.runs for s in ("val", "test")]
    if job.early_stop:
        want.append("proxy/early_stop")
    if job.kind == "probe":
        want.append("time/features")
    return [k for k in want if k not in metrics]


def run_curves(runs: dict[tuple[float, int], dict], points: int | None = CURVE_POINTS
               ) -> dict[str, list]:
    """Each (learning rate, repetition) run's training-loss curve (at most ``points`` of it;
    None: all) and, where the budgeted search is on, its validation accuracy at every rung, as
    stepped metrics of the pair run."""
    history = {}
    for (lr, rep), run in sorted(runs.items()):
        history[curve_key(lr, rep, "train_loss")] = (thin(run["curve"], points) if points
                                                     else list(run["curve"]))
        if run.get("val_curve"):
            history[curve_key(lr, rep, "val_acc")] = run["val_curve"]
    return history


def micro_batch_params(protocol: str, results: dict, effective: int) -> dict[str, Any]:
    """``<protocol>/micro_batch``: the smallest micro-batch the pair's fine-tune steps used (a
    fine-tune pair's runs, or a probe's early-stop proxy), and where it is smaller than the
    effective batch, that BatchNorm normalised per micro-batch (README, "Running the paper's
    study"). Empty when the trials did not say (results from before micro-batches). Each
    fine-tune run's own is the metric ``lr_<lr>/rep<r>/micro_batch``
    (:func:`aggregate_finetune`)."""
    if protocol == "finetune":
        sizes = [r["micro_batch"] for r in results.values() if r.get("micro_batch")]
        key = "finetune"
    else:
        sizes = [results["early_stop_micro_batch"]] if results.get("early_stop_micro_batch") else []
        key = "probe/early_stop"
    if not sizes:
        return {}
    size = int(min(sizes))
    stats = (f"per micro-batch of {size} (effective batch {effective})" if size < effective
             else f"per batch of {effective}")
    return {f"{key}/micro_batch": size, f"{key}/batchnorm_statistics": stats}
