"""A pair's MLflow run as plain data: what the driver writes (:func:`pair_record`, the spool's
and the writer queue's unit) and what the report reads back (:func:`records_from_runs`).

A fine-tune pair is one run. Its (learning rate, repetition) runs are not child runs: each
one's accuracies are metrics of the pair run (``lr_0.01/rep0/val_acc``, ``.../test_acc``) and its
curves are stepped metrics of it (``lr_0.01/rep0/curve/train_loss``, :data:`CURVE_POINTS` points
of it, and ``lr_0.01/rep0/curve/val_acc`` at every rung where the budgeted search is on); every
point of every curve is in the run's ``curves/<model>@<task>.json`` artifact. Ten child runs cost
thirty requests a pair (create, log, finish each; MLflow has no batched run creation).
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import pandas as pd

from sweeps.plan import pair_key

# Finetune runs log val/acc and test/acc (and the same under the records format's names,
# README, "Records format"), which the records use:
RECORD_METRICS = {("finetune", "test/acc"): "finetune_test_acc",
                  ("finetune", "val/acc"): "finetune_val_acc"}
MODEL_META_KEYS = ("imagenet_acc", "upstream_size", "params", "feature_dim", "upstream_acc")
REP_TEST = re.compile(r"rep\d+/test_acc")
CHILD_NAME = re.compile(r".*:finetune/lr=([^/]+)/rep(\d+)")
# Points of a run's training-loss curve that go to the pair run as stepped metrics: each metric
# point is a row the server inserts (~0.2 ms each here: the paper's 2,500 points a pair would be
# half a second); the whole curves are the run's ``curves/`` artifact.
CURVE_POINTS = 25


def run_name(model: str, task: str, protocol: str) -> str:
    return f"{model}@{task}:{protocol}"


def run_prefix(lr: float, rep: int) -> str:
    """The metric prefix of one (learning rate, repetition) run of a fine-tune pair."""
    return f"lr_{lr:g}/rep{rep}"


def curve_key(lr: float, rep: int, curve: str) -> str:
    """A run's curve as a stepped metric of its pair run: ``train_loss`` or ``val_acc``."""
    return f"{run_prefix(lr, rep)}/curve/{curve}"


def pair_record(model: str, task: str, protocol: str, protocol_hash: str, tags: dict[str, Any],
                params: dict[str, Any], metrics: dict[str, Any],
                history: dict[str, list] | None = None,
                artifacts: list[tuple[str, str]] | None = None,
                span: tuple[float, float] | None = None,
                dataset: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything ``Tracker.log_pair`` writes for a pair, as plain JSON-able data (the spool's
    record). ``history``: metric -> [(step, value)], the runs' curves; ``artifacts``: (local
    file, artifact folder) pairs; ``span``: the pair's
    trials' (start, end) in epoch seconds, the run's start and end time; ``dataset``: the task as
    the run's dataset input (:func:`sweeps.tracking.recorder.task_dataset`)."""
    return {
        "pair_key": pair_key(model, task, protocol), "run_name": run_name(model, task, protocol),
        "model": model, "task": task, "protocol": protocol, "protocol_hash": protocol_hash,
        "tags": {k: str(v) for k, v in tags.items()},
        "params": {k: str(v)[:6000] for k, v in params.items()},
        "metrics": {k: float(v) for k, v in metrics.items()
                    if v is not None and math.isfinite(float(v))},
        "history": {k: [[int(step), float(v)] for step, v in points
                        if v is not None and math.isfinite(float(v))]
                    for k, points in (history or {}).items()},
        "artifacts": [[str(path), folder] for path, folder in artifacts or []],
        "timestamp_ms": int(time.time() * 1000),
        "start_time_ms": int(span[0] * 1000) if span else None,
        "end_time_ms": int(span[1] * 1000) if span else None,
        "dataset": dict(dataset) if dataset else None,
    }


def record_artifacts(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(local file, artifact folder) of the record's artifacts; a record spooled by an earlier
    version lists paths only, in its protocol's folder."""
    default = "features" if record["protocol"] == "probe" else "predictions"
    return [(a, default) if isinstance(a, str) else (str(a[0]), str(a[1]))
            for a in record.get("artifacts") or []]


def thin(points: list, n: int = CURVE_POINTS) -> list:
    """At most ``n`` of a curve's points, evenly spaced, the first and the last kept."""
    if len(points) <= n:
        return list(points)
    step = (len(points) - 1) / (n - 1)
    return [points[round(i * step)] for i in range(n)]


def record_history(record: dict[str, Any]) -> dict[str, list]:
    """The record's curves; a record spooled by an earlier version holds them as child runs
    (``children``: name, history), which become the pair run's stepped metrics here."""
    history = dict(record.get("history") or {})
    for child in record.get("children") or []:
        m = CHILD_NAME.fullmatch(child.get("name", ""))
        if not m:
            continue
        prefix = f"lr_{m.group(1)}/rep{m.group(2)}"
        for key, points in (child.get("history") or {}).items():
            name = "train_loss" if key == "train/loss" else key.rsplit("/", 1)[-1]
            history.setdefault(f"{prefix}/curve/{name}", points)
    return history


def records_from_runs(runs) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Long records ``model,task,metric,value``, model metadata, and task -> group, from
    finished pair runs."""
    rows, meta, groups = [], {}, {}
    for run in runs:
        tags, params = run.data.tags, run.data.params
        model, task, proto = tags["model"], tags["task"], tags["protocol"]
        groups[task] = tags.get("group", "")
        meta.setdefault(model, {"model": model, **{
            k: to_number(params.get(f"model/{k}")) for k in MODEL_META_KEYS}})
        metrics = run.data.metrics
        # a fine-tune's repetitions are rows of their own (their median is test/acc)
        reps = [v for k, v in sorted(metrics.items()) if REP_TEST.fullmatch(k)]
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


def to_number(value: str | None) -> float | None:
    if value in (None, "", "None"):
        return None
    try:
        return float(value)
    except ValueError:
        return None
