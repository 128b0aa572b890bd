"""MLflow tracking: one run per (model, task, protocol), written by the driver alone.

Runs are named ``model@task:protocol`` and tagged ``pair_key=model|task|protocol`` and
``protocol_hash`` (a hash of the protocol settings). Before a sweep the driver reads the finished
keys and skips them; a run left unfinished by a crash is resumed by id rather than duplicated, so
however often a sweep is re-run there is one finished run per key and settings. Ray's own MLflow
callbacks duplicate runs on retries and restores (PLATFORM.md), hence this module.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from sweeps.config import WhichModelError

# Finetune runs log val/acc and test/acc (and the same under the records format's names,
# DESIGN.md), which the records use:
RECORD_METRICS = {("finetune", "test/acc"): "finetune_test_acc",
                  ("finetune", "val/acc"): "finetune_val_acc"}
MODEL_META_KEYS = ("imagenet_acc", "upstream_size", "params", "feature_dim", "upstream_acc")


def pair_key(model: str, task: str, protocol: str) -> str:
    return f"{model}|{task}|{protocol}"


def run_name(model: str, task: str, protocol: str) -> str:
    return f"{model}@{task}:{protocol}"


class Tracker:
    """An MLflow experiment seen through ``MlflowClient`` (no global active-run state)."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None = None,
                 create: bool = True):
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
        except Exception as exc:  # unreachable server, bad credentials, unreadable store
            raise WhichModelError(f"MLflow tracking at {_redact(tracking_uri)}: {exc}") from None
        if exp is None:
            if not create:
                raise WhichModelError(
                    f"no MLflow experiment {experiment!r} at {_redact(tracking_uri)}; "
                    f"known: {', '.join(self.list_experiments()) or 'none'}")
            location = (artifact_root / experiment).resolve().as_uri() if artifact_root else None
            self.experiment_id = self.client.create_experiment(experiment,
                                                               artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        self.experiment = experiment

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
                 artifacts: list[str] | None = None) -> str:
        """Create (or resume) the pair's run, log everything in batches, mark it FINISHED.

        ``children`` (name, params, metrics, history: metric -> [(step, value)]) become nested
        runs (``mlflow.parentRunId``), e.g. one per fine-tune learning rate and repetition. The
        parent is marked FINISHED last, so a crash in between leaves it to be resumed.
        """
        from mlflow.entities import Metric, Param, RunTag
        import time

        all_tags = {"model": model, "task": task, "protocol": protocol,
                    "protocol_hash": protocol_hash, "pair_key": pair_key(model, task, protocol),
                    "mlflow.runName": run_name(model, task, protocol), **tags}
        if resume_run_id:
            run_id = resume_run_id
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=run_name(model, task, protocol),
                                            tags=all_tags).info.run_id
        now = int(time.time() * 1000)
        mlist = [Metric(k, float(v), now, 0) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        plist = [Param(k, str(v)[:6000]) for k, v in params.items()]
        tlist = [RunTag(k, str(v)) for k, v in all_tags.items()]
        # create_run already set the tags of a new run; a resumed one gets them again.
        self._log_batches(run_id, mlist, plist, tlist if resume_run_id else [])
        for path in artifacts or []:
            self.client.log_artifact(run_id, path, artifact_path="features")
        if children:
            existing = resume_run_id and self.search(f"tags.`mlflow.parentRunId` = '{run_id}'")
            if not existing:
                for child in children:
                    self._log_child(run_id, child, now)
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def _log_batches(self, run_id: str, metrics: list, params: list, tags: list) -> None:
        # MLflow caps a batch at 1000 metrics, 100 params and 100 tags.
        n = max(-(-len(metrics) // 1000), -(-len(params) // 100), -(-len(tags) // 100), 1)
        for i in range(n):
            self.client.log_batch(run_id, metrics=metrics[i * 1000:(i + 1) * 1000],
                                  params=params[i * 100:(i + 1) * 100],
                                  tags=tags[i * 100:(i + 1) * 100])

    def _log_child(self, parent_id: str, child: dict, now: int) -> None:
        from mlflow.entities import Metric, Param

        run_id = self.client.create_run(
            self.experiment_id, run_name=child["name"],
            tags={"mlflow.parentRunId": parent_id, "mlflow.runName": child["name"]}).info.run_id
        metrics = [Metric(k, float(v), now, 0) for k, v in child.get("metrics", {}).items()
                   if v is not None]
        for key, points in child.get("history", {}).items():
            metrics += [Metric(key, float(v), now, int(step)) for step, v in points]
        params = [Param(k, str(v)) for k, v in child.get("params", {}).items()]
        self._log_batches(run_id, metrics, params, [])
        self.client.set_terminated(run_id, "FINISHED")

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
            for metric, value in run.data.metrics.items():
                name = RECORD_METRICS.get((proto, metric))
                if name is None and metric.startswith("proxy/"):
                    name = metric
                if name is not None:
                    rows.append((model, task, name, float(value)))
        records = pd.DataFrame(rows, columns=["model", "task", "metric", "value"])
        metadata = pd.DataFrame(list(meta.values()), columns=["model", *MODEL_META_KEYS])
        return records, metadata.set_index("model"), groups

    def log_report(self, name: str, files: Iterable[Path], tags: dict[str, str]) -> str:
        """One report run per name in the experiment, its artifacts replaced on every report."""
        key = f"report|{name}"
        existing = self.search(f"tags.report_key = '{key}'")
        if existing:
            run_id = existing[0].info.run_id
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=f"report:{name}",
                                            tags={"report_key": key, "protocol": "report",
                                                  **tags}).info.run_id
        for path in files:
            self.client.log_artifact(run_id, str(path), artifact_path="report")
        self.client.set_terminated(run_id, "FINISHED")
        return run_id


def _num(value: str | None) -> float | None:
    if value in (None, "", "None"):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _redact(uri: str) -> str:
    """Hide credentials embedded in a URI (``scheme://user:pass@host``)."""
    if "://" in uri and "@" in uri.split("://", 1)[1]:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri
