"""MLflow tracking: one run per (model, task, protocol), written by the driver alone.

Runs are named ``model@task:protocol`` and tagged ``pair_key=model|task|protocol`` and
``protocol_hash`` (a hash of the protocol settings). Before a sweep the driver reads the finished
keys and skips them; a run left unfinished by a crash is resumed by id rather than duplicated, so
however often a sweep is re-run there is one finished run per key and settings. Ray's own MLflow
callbacks (``MLflowLoggerCallback``, ``setup_mlflow``) duplicate runs on trial retries and
``Tuner.restore`` and leave orphans RUNNING (seen with Ray 2.60), hence this module.

**Reads.** The skip check, the recorder and the report read the experiment's pair runs once per
command (:meth:`Tracker.pair_runs`: one search filtered on the server by the ``pair_key`` tag, so
report runs, search runs and the child runs of earlier versions never travel), kept until this
``Tracker`` logs a pair. **Writes.** A pair run is created with all its tags, then its params,
metrics and curves (stepped metrics, :mod:`sweeps.tracking.pairs`) go in as few ``log_batch``
calls as MLflow's limits allow (1,000 entries, 100 params, 100 tags a call), its task as one
dataset input, one upload per artifact, and ``set_terminated``: 4 requests for a probe, 7 for a
fine-tune of the paper's size (2,500 curve points).

Against a tracking server (``http(s)://``), credentials come from ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` (MLflow reads them). ``Tracker(...)`` first runs a preflight
(:func:`sweeps.tracking.outage.preflight`): an unreachable server or rejected credentials end
the command with a ``WhichModelError`` before anything runs or is written. Mid-sweep,
``record_pair`` outlives an outage (:mod:`sweeps.tracking.outage`): a failed log is retried with
exponential backoff (``RETRY_DELAYS_S``, ~15 s), then the pair's complete record stays in the
spool (``sweeps/tracking/spool.py``, ``$WHICHMODEL_HOME/spool/<experiment>/``) and the sweep
carries on; while the server is away later pairs go straight to the spool. The spool is replayed
through the same idempotent path (keyed by ``pair_key``: nothing duplicated) as soon as the
server answers again, at the end of the sweep (waiting up to ``FINAL_DRAIN_DELAYS_S``, ~60 s) and
when the next ``Tracker`` with a spool starts (``whichmodel run`` / ``resume``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from sweeps.plan import pair_key
from sweeps.tracking.keys import PairKey, lean_pair_runs, partitioned
from sweeps.tracking.outage import (  # noqa: F401 (the names callers import from here)
    FINAL_DRAIN_DELAYS_S,
    RETRY_DELAYS_S,
    TrackingUnavailable,
    fast_http,
    is_http,
    is_server_problem,
    preflight,
    short_error,
    spool_record,
    with_retries,
)
from sweeps.tracking.pairs import (  # noqa: F401 (pair_record: callers import it from here)
    pair_record,
    record_artifacts,
    record_history,
    records_from_runs,
    run_name,
)
from sweeps.tracking.spool import Spool
from sweeps.tracking.ui import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    log_task_dataset,
    sqlite_write_ahead,
)
from whichmodel.errors import WhichModelError
from whichmodel.names import within
from whichmodel.uri import redact_uri

ARTIFACTS_TAG = "artifacts"  # the run's artifact paths, comma-separated: read without a listing
PAIR_RUNS = "tags.pair_key IS NOT NULL"  # the server-side filter of every read of pair runs
REPORT_FINGERPRINT_TAG = "report_fingerprint"


class Tracker:
    """An MLflow experiment seen through ``MlflowClient`` (no global active-run state).

    ``spool_dir`` (the driver passes ``$WHICHMODEL_HOME/spool``) turns on the outage spool of
    ``record_pair`` and the writer's journal; records left there by an earlier run are replayed
    here, first, unless ``replay`` is false (a driver that must hold the sweep's lease first
    replays them with :meth:`drain_spool` once it does).
    """

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None = None,
                 create: bool = True, spool_dir: Path | None = None, replay: bool = True):
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        self.experiment = experiment
        self.spool = Spool(spool_dir, experiment) if spool_dir else None
        self.offline = False  # a log failed for want of the server; the spool is not empty
        self.replayed = 0
        self.reads = 0  # searches of the pair runs (one per command)
        self._pairs: list[Any] | None = None
        self._keys: list[PairKey] | None = None
        preflight(tracking_uri)
        # MLflow prints two "View run ... at URL" lines per run against a server: thousands in a
        # sweep; the driver prints the server's address once. Its artifact downloads draw a
        # progress bar each (874 in a study's report): whichmodel prints one progress line.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        if tracking_uri.startswith("sqlite:"):
            sqlite_write_ahead()
        self.client = MlflowClient(tracking_uri)
        try:
            exp, error = with_retries(lambda: self.client.get_experiment_by_name(experiment),
                                      (1.0, 2.0))
        except Exception as exc:  # an unreadable store
            raise WhichModelError(f"MLflow tracking at {redact_uri(tracking_uri)}: {exc}") from None
        if error is not None:  # the server went since the preflight, or a local store is locked
            raise TrackingUnavailable(f"MLflow tracking at {redact_uri(tracking_uri)}: "
                                      f"{short_error(error)}")
        if exp is None:
            if not create:
                raise WhichModelError(
                    f"no MLflow experiment {experiment!r} at {redact_uri(tracking_uri)}; "
                    f"known: {', '.join(self.list_experiments()) or 'none'}")
            location = within(artifact_root, experiment).as_uri() if artifact_root else None
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        else:
            self.experiment_id = exp.experiment_id
            if EXPERIMENT_KIND_TAG not in exp.tags:  # an experiment from before the tag
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG,
                                               EXPERIMENT_KIND)
        if replay and self.spool is not None and len(self.spool):
            self.drain_spool()

    def list_experiments(self) -> list[str]:
        return sorted(e.name for e in self.client.search_experiments())

    def search(self, filter_string: str = "") -> list[Any]:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                           max_results=5000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def pair_runs(self) -> list[Any]:
        """Every pair run of the experiment, all statuses, newest first: one search, filtered on
        the server by the ``pair_key`` tag (on a server, in 16 run-id partitions at once:
        :func:`sweeps.tracking.keys.partitioned`), kept until this tracker logs a pair."""
        if self._pairs is None:
            self._pairs = (partitioned(self.search, PAIR_RUNS,
                                       lambda r: (r.info.start_time or 0, r.info.run_id))
                           if is_http(self.uri) else self.search(PAIR_RUNS))
            self.reads += 1
        return self._pairs

    def pair_keys(self) -> list[PairKey]:
        """Every pair run without its metrics and params (:mod:`sweeps.tracking.keys`): from
        the full read when there was one, else one lean search, kept like :meth:`pair_runs`."""
        if self._pairs is not None:
            return [PairKey.of(run) for run in self._pairs]
        if self._keys is None:
            lean = lean_pair_runs(self.uri, self.experiment_id, PAIR_RUNS)
            if lean is None:
                return [PairKey.of(run) for run in self.pair_runs()]
            self._keys = lean
            self.reads += 1
        return self._keys

    def forget(self) -> None:
        """Drop what was read of the pair runs: the next read asks the server again (another
        driver's runs since)."""
        self._pairs = self._keys = None

    def keys_by_status(self, protocol_hashes: dict[str, str] | None = None
                       ) -> tuple[dict[str, PairKey], dict[str, PairKey]]:
        """(finished, unfinished) pair runs by ``pair_key``, lean, for the given protocol
        hashes: what the skip check, the recorder and the report's fingerprint need."""
        return by_key(self.pair_keys(), protocol_hashes, lambda r: r.tags, lambda r: r.status)

    def runs_by_key(self, protocol_hashes: dict[str, str] | None = None
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(finished, unfinished) pair runs by ``pair_key``, for the given protocol hashes."""
        return by_key(self.pair_runs(), protocol_hashes, lambda r: r.data.tags,
                      lambda r: r.info.status)

    def log_pair(self, model: str, task: str, protocol: str, protocol_hash: str,
                 tags: dict[str, str], params: dict[str, Any], metrics: dict[str, float],
                 resume_run_id: str | None = None, history: dict[str, list] | None = None,
                 artifacts: list[tuple[str, str]] | None = None, timestamp_ms: int | None = None,
                 start_time_ms: int | None = None, end_time_ms: int | None = None,
                 dataset: dict[str, str] | None = None) -> str:
        """Create (or resume) the pair's run, log everything in batches, mark it FINISHED.

        ``history`` (metric -> [(step, value)]): curves as stepped metrics of the run, e.g. each
        fine-tune run's training loss. The run is marked FINISHED last, so a crash in between
        leaves it to be resumed. With the same ``timestamp_ms`` a repeated log writes identical
        metric points, which MLflow keeps once. ``start_time_ms`` / ``end_time_ms``: the pair's
        compute (its trials' first start, last end), so the UI's Duration is what it took, not
        when it was logged; ``dataset``: the task as the run's dataset input.
        """
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        all_tags = {"model": model, "task": task, "protocol": protocol,
                    "protocol_hash": protocol_hash, "pair_key": pair_key(model, task, protocol),
                    "mlflow.runName": run_name(model, task, protocol), **tags}
        # a probe's features; a fine-tune's test predictions and curves; none: ""
        all_tags[ARTIFACTS_TAG] = ",".join(f"{folder}/{Path(p).name}"
                                           for p, folder in artifacts or [])
        if resume_run_id:
            run = self.client.get_run(resume_run_id)
        else:
            run = self.client.create_run(self.experiment_id, run_name=run_name(model, task, protocol),
                                         tags=all_tags, start_time=start_time_ms)
        run_id = run.info.run_id
        self._pairs = self._keys = None  # the next read sees this run
        now = timestamp_ms or int(time.time() * 1000)
        mlist = [Metric(k, float(v), now, 0) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        for key, points in (history or {}).items():
            mlist += [Metric(key, float(v), now, int(step)) for step, v in points]
        plist = [Param(k, str(v)[:6000]) for k, v in params.items()]
        tlist = [RunTag(k, str(v)) for k, v in all_tags.items()]
        # create_run already set the tags of a new run; a resumed one gets them again.
        self._log_batches(run_id, mlist, plist, tlist if resume_run_id else [])
        if dataset:
            log_task_dataset(self.client, run_id, dataset)
        if artifacts:
            repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=self.uri)
            for path, folder in artifacts:
                repo.log_artifact(path, folder)
        self.client.set_terminated(run_id, "FINISHED", end_time=end_time_ms)
        return run_id

    def _log_batches(self, run_id: str, metrics: list, params: list, tags: list) -> None:
        """As few ``log_batch`` calls as MLflow takes: at most 1,000 entries a call, of which at
        most 100 params and 100 tags."""
        metrics, params, tags = list(metrics), list(params), list(tags)
        while True:
            p, t = params[:100], tags[:100]
            params, tags = params[100:], tags[100:]
            room = 1000 - len(p) - len(t)
            m, metrics = metrics[:room], metrics[room:]
            self.client.log_batch(run_id, metrics=m, params=p, tags=t)
            if not (metrics or params or tags):
                return

    # -- outages: retries, the spool, replay ---------------------------------------------------
    def log_record(self, record: dict[str, Any], resume_run_id: str | None = None,
                   lookup: bool = False) -> str:
        """``log_pair`` of a record (``pair_record``); ``lookup``: find the key's run first (a
        finished one is left as it is, an unfinished one resumed), as retries and replays do."""
        if lookup:
            finished, unfinished = self._runs_of(record["pair_key"], record["protocol_hash"])
            if finished:
                return finished
            resume_run_id = unfinished
        artifacts = [a for a in record_artifacts(record) if Path(a[0]).is_file()]
        for missing, _ in set(record_artifacts(record)) - set(artifacts):
            print(f"[whichmodel] {record['pair_key']}: artifact {missing} is gone; logged "
                  "without it", file=sys.stderr)
        return self.log_pair(record["model"], record["task"], record["protocol"],
                             record["protocol_hash"], record["tags"], record["params"],
                             record["metrics"], resume_run_id=resume_run_id,
                             history=record_history(record),
                             artifacts=artifacts or None, timestamp_ms=record.get("timestamp_ms"),
                             start_time_ms=record.get("start_time_ms"),
                             end_time_ms=record.get("end_time_ms"), dataset=record.get("dataset"))

    def _runs_of(self, key: str, protocol_hash: str) -> tuple[str | None, str | None]:
        """(a finished run id, an unfinished run id) of the key at these protocol settings."""
        finished = unfinished = None
        for run in self.search(f"tags.pair_key = '{key}' and tags.protocol_hash = '{protocol_hash}'"):
            if run.data.tags.get("protocol_hash") != protocol_hash:
                continue
            if run.info.status == "FINISHED":
                finished = finished or run.info.run_id
            else:
                unfinished = unfinished or run.info.run_id
        return finished, unfinished

    def record_pair(self, record: dict[str, Any], resume_run_id: str | None = None) -> str | None:
        """Log a pair's record, outliving an outage of the server: retried with backoff, then
        spooled. Returns the run id, or None when the record went to the spool. Without a spool
        the last error is raised."""
        first = [True]
        if self.offline and self.spool is not None:
            if not self.reachable():
                self._spool_put(record, "still unreachable")
                return None
            self.drain_spool()  # it answers again: older records first (this one too, if
            first[0] = False    # the writer had put it in the spool): look it up first

        def attempt() -> str:
            lookup, first[0] = not first[0], False  # a retry may follow a half-done try
            return self.log_record(record, None if lookup else resume_run_id, lookup=lookup)

        run_id, error = with_retries(attempt, RETRY_DELAYS_S)
        if error is None:
            return run_id
        if self.spool is None:
            raise error
        self.offline = True
        self._spool_put(record, short_error(error))
        return None

    def drain_spool(self, delays: Iterable[float] = ()) -> int:
        """Replay the spool (waiting ``delays`` for the server); returns the records left."""
        if self.spool is None:
            return 0
        logged, delays = 0, tuple(delays)
        for path, record in self.spool.pending():
            try:
                _, error = with_retries(lambda r=record: self.log_record(r, lookup=True), delays)
            except Exception as exc:  # not the server: this record cannot be logged as it is
                print(f"[whichmodel] spool: {path} ({record.get('pair_key')}) could not be "
                      f"logged: {short_error(exc)}; left in the spool", file=sys.stderr)
                continue
            if error is not None:
                if not self.reachable():
                    self.offline = True
                    break
                # The server answers, yet not to this record: leave it, try the others.
                print(f"[whichmodel] spool: {path} ({record.get('pair_key')}) could not be "
                      f"logged: {short_error(error)}; left in the spool", file=sys.stderr)
                delays = ()
                continue
            self.spool.discard(path)
            logged, delays = logged + 1, ()  # it answers: no more waiting
        else:
            self.offline = False
        self.replayed += logged
        left = len(self.spool)
        if logged:
            print(f"[whichmodel] MLflow at {redact_uri(self.uri)} answers: {logged} spooled pair "
                  f"result(s) logged" + (f", {left} still in {self.spool.dir}" if left else ""),
                  file=sys.stderr, flush=True)
        return left

    def reachable(self, timeout: float = 3.0) -> bool:
        """Does the server answer now (one quick request, no retries)?"""
        if is_http(self.uri):
            import requests

            try:
                return requests.get(f"{self.uri.rstrip('/')}/health", timeout=timeout).ok
            except requests.RequestException:
                return False
        try:
            with fast_http():
                self.client.search_experiments(max_results=1)
            return True
        except Exception:
            return False

    def _spool_put(self, record: dict[str, Any], reason: str) -> None:
        spool_record(self.spool, self.uri, record, reason)

    def records(self, protocol_hashes: dict[str, str] | None = None
                ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
        """Long records ``model,task,metric,value``, model metadata, and task -> group."""
        finished, _ = self.runs_by_key(protocol_hashes)
        return records_from_runs(finished.values())

    def log_report(self, name: str, files: Iterable[Path], tags: dict[str, str],
                   description: str | None = None, fingerprint: str | None = None) -> str:
        """One report run per name in the experiment, its artifacts replaced on every report;
        ``description`` (Markdown, the leaderboard) is the run's description in the UI. A report
        run that already holds the report of ``fingerprint`` (:mod:`sweeps.cache`) is left as
        it is."""
        key = f"report|{name}"
        existing = self.search(f"tags.report_key = '{key}'")
        if existing:
            run_id = existing[0].info.run_id
            if fingerprint and existing[0].data.tags.get(REPORT_FINGERPRINT_TAG) == fingerprint:
                return run_id
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=f"report:{name}",
                                            tags={"report_key": key, "protocol": "report",
                                                  **tags}).info.run_id
        if description is not None:
            self.client.set_tag(run_id, "mlflow.note.content", description)
        for path in files:
            self.client.log_artifact(run_id, str(path), artifact_path="report")
        if fingerprint:  # last: a report cut short is logged again next time
            self.client.set_tag(run_id, REPORT_FINGERPRINT_TAG, fingerprint)
        self.client.set_terminated(run_id, "FINISHED")
        return run_id


def by_key(runs, protocol_hashes: dict[str, str] | None, tags_of, status_of
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(finished, unfinished) runs by ``pair_key`` at the protocol hashes, the newest first."""
    finished, unfinished = {}, {}
    for run in runs:
        tags = tags_of(run)
        proto, key = tags.get("protocol"), tags.get("pair_key")
        if protocol_hashes is not None and protocol_hashes.get(proto) != tags.get("protocol_hash"):
            continue
        target = finished if status_of(run) == "FINISHED" else unfinished
        target.setdefault(key, run)
    return finished, unfinished
