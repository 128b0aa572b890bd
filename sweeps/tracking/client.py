"""MLflow tracking: one run per (model, task, protocol), written by the driver alone.

Runs are named ``model@task:protocol`` and tagged ``pair_key=model|task|protocol`` and
``protocol_hash`` (a hash of the protocol settings). Before a sweep the driver reads the finished
keys and skips them; a run left unfinished by a crash is resumed by id rather than duplicated, so
however often a sweep is re-run there is one finished run per key and settings. Ray's own MLflow
callbacks (``MLflowLoggerCallback``, ``setup_mlflow``) duplicate runs on trial retries and
``Tuner.restore`` and leave orphans RUNNING (seen with Ray 2.60), hence this module.

Against a tracking server (``http(s)://``), credentials come from ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` (MLflow reads them). ``Tracker(...)`` first runs a preflight
(``/health``, then one authenticated REST call, a few seconds at most): an unreachable server or
rejected credentials end the command with a ``WhichModelError`` before anything runs or is
written. Mid-sweep, ``record_pair`` outlives an outage: a failed log is retried with exponential
backoff (``RETRY_DELAYS_S``, ~15 s), then the pair's complete record goes to the spool
(``sweeps/tracking/spool.py``, ``$WHICHMODEL_HOME/spool/<experiment>/``) and the sweep carries on; while
the server is away later pairs go straight to the spool. The spool is replayed through the same
idempotent path (keyed by ``pair_key``: nothing duplicated) as soon as the server answers again,
at the end of the sweep (waiting up to ``FINAL_DRAIN_DELAYS_S``, ~60 s) and when the next
``Tracker`` with a spool starts (``whichmodel run`` / ``resume``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from sweeps.plan import pair_key
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

# Finetune runs log val/acc and test/acc (and the same under the records format's names,
# README, "Records format"), which the records use:
RECORD_METRICS = {("finetune", "test/acc"): "finetune_test_acc",
                  ("finetune", "val/acc"): "finetune_val_acc"}
MODEL_META_KEYS = ("imagenet_acc", "upstream_size", "params", "feature_dim", "upstream_acc")

_REP_TEST = re.compile(r"rep\d+/test_acc")
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0)  # a pair's log: 5 tries over ~15 s, then the spool
# End of a sweep: wait ~60 s for the server, asking at least every 10 s.
FINAL_DRAIN_DELAYS_S = (2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0, 10.0)
PREFLIGHT_TIMEOUT_S = 5.0  # per request; the preflight makes two
# While retrying ourselves, each MLflow request gives up at once instead of after MLflow's own
# minutes of backoff (its default: 7 retries); a variable the user set is left alone.
_FAST_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class TrackingUnavailable(WhichModelError):
    """The tracking server cannot be reached, or refuses the credentials."""


def run_name(model: str, task: str, protocol: str) -> str:
    return f"{model}@{task}:{protocol}"


class Tracker:
    """An MLflow experiment seen through ``MlflowClient`` (no global active-run state).

    ``spool_dir`` (the driver passes ``$WHICHMODEL_HOME/spool``) turns on the outage spool of
    ``record_pair``; records left there by an earlier run are replayed here, first.
    """

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None = None,
                 create: bool = True, spool_dir: Path | None = None):
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        self.experiment = experiment
        self.spool = Spool(spool_dir, experiment) if spool_dir else None
        self.offline = False  # a log failed for want of the server; the spool is not empty
        self.replayed = 0
        preflight(tracking_uri)
        # MLflow prints two "View run ... at URL" lines per run against a server: thousands in a
        # sweep; the driver prints the server's address once.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
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
                                      f"{_short(error)}")
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
        if self.spool is not None and len(self.spool):
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

    def runs_by_key(self, protocol_hashes: dict[str, str] | None = None
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(finished, unfinished) pair runs by ``pair_key``, for the given protocol hashes."""
        finished, unfinished = {}, {}
        for run in self.search():
            tags = run.data.tags
            proto, key = tags.get("protocol"), tags.get("pair_key")
            if not key:
                continue
            if protocol_hashes is not None and protocol_hashes.get(proto) != tags.get("protocol_hash"):
                continue
            target = finished if run.info.status == "FINISHED" else unfinished
            target.setdefault(key, run)
        return finished, unfinished

    def log_pair(self, model: str, task: str, protocol: str, protocol_hash: str,
                 tags: dict[str, str], params: dict[str, Any], metrics: dict[str, float],
                 resume_run_id: str | None = None, children: list[dict] | None = None,
                 artifacts: list[str] | None = None, timestamp_ms: int | None = None,
                 start_time_ms: int | None = None, end_time_ms: int | None = None,
                 dataset: dict[str, str] | None = None) -> str:
        """Create (or resume) the pair's run, log everything in batches, mark it FINISHED.

        ``children`` (name, params, metrics, history: metric -> [(step, value)]) become nested
        runs (``mlflow.parentRunId``), e.g. one per fine-tune learning rate and repetition. The
        parent is marked FINISHED last, so a crash in between leaves it to be resumed; a resumed
        run gets the children it lacks. With the same ``timestamp_ms`` a repeated log writes
        identical metric points, which MLflow keeps once. ``start_time_ms`` / ``end_time_ms``:
        the pair's compute (its trials' first start, last end), so the UI's Duration is what it
        took, not when it was logged; ``dataset``: the task as the run's dataset input.
        """
        from mlflow.entities import Metric, Param, RunTag

        all_tags = {"model": model, "task": task, "protocol": protocol,
                    "protocol_hash": protocol_hash, "pair_key": pair_key(model, task, protocol),
                    "mlflow.runName": run_name(model, task, protocol), **tags}
        if resume_run_id:
            run_id = resume_run_id
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=run_name(model, task, protocol),
                                            tags=all_tags, start_time=start_time_ms).info.run_id
        now = timestamp_ms or int(time.time() * 1000)
        mlist = [Metric(k, float(v), now, 0) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        plist = [Param(k, str(v)[:6000]) for k, v in params.items()]
        tlist = [RunTag(k, str(v)) for k, v in all_tags.items()]
        # create_run already set the tags of a new run; a resumed one gets them again.
        self._log_batches(run_id, mlist, plist, tlist if resume_run_id else [])
        if dataset:
            log_task_dataset(self.client, run_id, dataset)
        for path in artifacts or []:  # a probe's features, a fine-tune's test predictions
            self.client.log_artifact(run_id, path, artifact_path="features" if protocol == "probe"
                                     else "predictions")
        if children:
            existing = {r.data.tags.get("mlflow.runName"): r for r in self.search(
                f"tags.`mlflow.parentRunId` = '{run_id}'")} if resume_run_id else {}
            for child in children:
                run = existing.get(child["name"])
                if run is None or run.info.status != "FINISHED":
                    self._log_child(run_id, child, now, run.info.run_id if run else None)
        self.client.set_terminated(run_id, "FINISHED", end_time=end_time_ms)
        return run_id

    def _log_batches(self, run_id: str, metrics: list, params: list, tags: list) -> None:
        # MLflow caps a batch at 1000 metrics, 100 params and 100 tags.
        n = max(-(-len(metrics) // 1000), -(-len(params) // 100), -(-len(tags) // 100), 1)
        for i in range(n):
            self.client.log_batch(run_id, metrics=metrics[i * 1000:(i + 1) * 1000],
                                  params=params[i * 100:(i + 1) * 100],
                                  tags=tags[i * 100:(i + 1) * 100])

    def _log_child(self, parent_id: str, child: dict, now: int,
                   run_id: str | None = None) -> None:
        from mlflow.entities import Metric, Param

        run_id = run_id or self.client.create_run(
            self.experiment_id, run_name=child["name"],
            tags={"mlflow.parentRunId": parent_id, "mlflow.runName": child["name"]}).info.run_id
        metrics = [Metric(k, float(v), now, 0) for k, v in child.get("metrics", {}).items()
                   if v is not None]
        for key, points in child.get("history", {}).items():
            metrics += [Metric(key, float(v), now, int(step)) for step, v in points]
        params = [Param(k, str(v)) for k, v in child.get("params", {}).items()]
        self._log_batches(run_id, metrics, params, [])
        self.client.set_terminated(run_id, "FINISHED")

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
        artifacts = [p for p in record.get("artifacts") or [] if Path(p).is_file()]
        for missing in set(record.get("artifacts") or []) - set(artifacts):
            print(f"[whichmodel] {record['pair_key']}: artifact {missing} is gone; logged "
                  "without it", file=sys.stderr)
        return self.log_pair(record["model"], record["task"], record["protocol"],
                             record["protocol_hash"], record["tags"], record["params"],
                             record["metrics"], resume_run_id=resume_run_id,
                             children=record.get("children") or None,
                             artifacts=artifacts or None, timestamp_ms=record.get("timestamp_ms"),
                             start_time_ms=record.get("start_time_ms"),
                             end_time_ms=record.get("end_time_ms"), dataset=record.get("dataset"))

    def _runs_of(self, key: str, protocol_hash: str) -> tuple[str | None, str | None]:
        """(a finished run id, an unfinished run id) of the key at these protocol settings."""
        finished = unfinished = None
        for run in self.search(f"tags.pair_key = '{key}'"):
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
        if self.offline and self.spool is not None:
            if not self.reachable():
                self._spool_put(record, "still unreachable")
                return None
            self.drain_spool()  # it answers again: older records first
        first = [True]

        def attempt() -> str:
            lookup, first[0] = not first[0], False  # a retry may follow a half-done try
            return self.log_record(record, None if lookup else resume_run_id, lookup=lookup)

        run_id, error = with_retries(attempt, RETRY_DELAYS_S)
        if error is None:
            return run_id
        if self.spool is None:
            raise error
        self.offline = True
        self._spool_put(record, _short(error))
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
                      f"logged: {_short(exc)}; left in the spool", file=sys.stderr)
                continue
            if error is not None:
                if not self.reachable():
                    self.offline = True
                    break
                # The server answers, yet not to this record: leave it, try the others.
                print(f"[whichmodel] spool: {path} ({record.get('pair_key')}) could not be "
                      f"logged: {_short(error)}; left in the spool", file=sys.stderr)
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
        if _is_http(self.uri):
            import requests

            try:
                return requests.get(f"{self.uri.rstrip('/')}/health", timeout=timeout).ok
            except requests.RequestException:
                return False
        try:
            with _fast_http():
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
        rows, meta, groups = [], {}, {}
        for run in finished.values():
            tags, params = run.data.tags, run.data.params
            model, task, proto = tags["model"], tags["task"], tags["protocol"]
            groups[task] = tags.get("group", "")
            meta.setdefault(model, {"model": model, **{
                k: _num(params.get(f"model/{k}")) for k in MODEL_META_KEYS}})
            metrics = run.data.metrics
            # a fine-tune's repetitions are rows of their own (their median is test/acc)
            reps = [v for k, v in sorted(metrics.items()) if _REP_TEST.fullmatch(k)]
            for metric, value in metrics.items():
                name = RECORD_METRICS.get((proto, metric))
                if name is None and metric.startswith(("proxy/", "time/")):  # scores, seconds
                    name = metric
                if name == "finetune_test_acc" and reps:
                    rows += [(model, task, name, float(v)) for v in reps]
                elif name is not None:
                    rows.append((model, task, name, float(value)))
        records = pd.DataFrame(rows, columns=["model", "task", "metric", "value"])
        metadata = pd.DataFrame(list(meta.values()), columns=["model", *MODEL_META_KEYS])
        return records, metadata.set_index("model"), groups

    def log_report(self, name: str, files: Iterable[Path], tags: dict[str, str],
                   description: str | None = None) -> str:
        """One report run per name in the experiment, its artifacts replaced on every report;
        ``description`` (Markdown, the leaderboard) is the run's description in the UI."""
        key = f"report|{name}"
        existing = self.search(f"tags.report_key = '{key}'")
        if existing:
            run_id = existing[0].info.run_id
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=f"report:{name}",
                                            tags={"report_key": key, "protocol": "report",
                                                  **tags}).info.run_id
        if description is not None:
            self.client.set_tag(run_id, "mlflow.note.content", description)
        for path in files:
            self.client.log_artifact(run_id, str(path), artifact_path="report")
        self.client.set_terminated(run_id, "FINISHED")
        return run_id


def pair_record(model: str, task: str, protocol: str, protocol_hash: str, tags: dict[str, Any],
                params: dict[str, Any], metrics: dict[str, Any], children: list[dict] | None = None,
                artifacts: list[str] | None = None, span: tuple[float, float] | None = None,
                dataset: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything ``log_pair`` writes for a pair, as plain JSON-able data (the spool's record).
    ``span``: the pair's trials' (start, end) in epoch seconds, the run's start and end time;
    ``dataset``: the task as the run's dataset input (:func:`sweeps.tracking.recorder.task_dataset`)."""
    return {
        "pair_key": pair_key(model, task, protocol), "run_name": run_name(model, task, protocol),
        "model": model, "task": task, "protocol": protocol, "protocol_hash": protocol_hash,
        "tags": {k: str(v) for k, v in tags.items()},
        "params": {k: str(v)[:6000] for k, v in params.items()},
        "metrics": {k: float(v) for k, v in metrics.items()
                    if v is not None and math.isfinite(float(v))},
        "children": [{"name": c["name"],
                      "params": {k: str(v) for k, v in c.get("params", {}).items()},
                      "metrics": {k: (None if v is None else float(v))
                                  for k, v in c.get("metrics", {}).items()},
                      "history": {k: [[int(step), float(v)] for step, v in points]
                                  for k, points in c.get("history", {}).items()}}
                     for c in children or []],
        "artifacts": [str(a) for a in artifacts or []],
        "timestamp_ms": int(time.time() * 1000),
        "start_time_ms": int(span[0] * 1000) if span else None,
        "end_time_ms": int(span[1] * 1000) if span else None,
        "dataset": dict(dataset) if dataset else None,
    }


def spool_record(spool: Spool, uri: str, record: dict[str, Any], reason: str) -> None:
    """Keep a pair's record in the spool, and say so."""
    path = spool.put({**record, "spooled_at": time.time(), "reason": reason})
    print(f"[whichmodel] MLflow at {redact_uri(uri)} unavailable ({reason}): {record['run_name']} "
          f"kept in the spool ({path}; {len(spool)} waiting), logged once the server answers",
          file=sys.stderr, flush=True)


def preflight(uri: str, timeout: float = PREFLIGHT_TIMEOUT_S) -> None:
    """A tracking server answers ``/health`` and accepts the credentials; else a clear error.

    The server's own health check (:func:`mlflow_server.health.check`: two requests without
    retries, at most ``2 * timeout`` seconds) with this environment's credentials; other URIs
    pass through.
    """
    if not _is_http(uri):
        return
    from mlflow_server.health import check

    health = check(uri, os.environ.get("MLFLOW_TRACKING_USERNAME"),
                   os.environ.get("MLFLOW_TRACKING_PASSWORD"), timeout=timeout,
                   token=os.environ.get("MLFLOW_TRACKING_TOKEN"))
    if not health.ok:
        raise TrackingUnavailable(health.message)


def is_server_problem(exc: BaseException) -> bool:
    """Worth retrying and spooling: the server or the connection, not the request itself."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, (TrackingUnavailable, requests.RequestException, OSError)):
        return True
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return status >= 500 or status in (401, 403, 408, 429)
    return False


def with_retries(fn: Callable[[], Any], delays: Iterable[float]
                 ) -> tuple[Any, BaseException | None]:
    """``fn()`` again after each delay while the server is the problem: (result, None), or
    (None, the last error). Any other error is raised at once."""
    error = None
    for delay in (*delays, None):
        try:
            with _fast_http():
                return fn(), None
        except Exception as exc:
            if not is_server_problem(exc):
                raise
            error = exc
        if delay is not None:
            time.sleep(delay)
    return None, error


@contextlib.contextmanager
def _fast_http():
    added = [k for k in _FAST_HTTP if k not in os.environ]
    os.environ.update({k: _FAST_HTTP[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}"


def _num(value: str | None) -> float | None:
    if value in (None, "", "None"):
        return None
    try:
        return float(value)
    except ValueError:
        return None
