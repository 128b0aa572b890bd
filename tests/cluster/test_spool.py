"""The outage spool of ``sweeps.tracking.client``: a pair logged while the server is down waits on disk,
complete, and is logged exactly once when the server answers again; replays never duplicate.

Against the session's tracking stack, stopping and restarting only its MLflow server (a few
seconds each); the 60-second outage of a whole sweep is ``test_outage.py``.
"""

from __future__ import annotations

import json

import pytest

from sweeps.tracking import client as tracking
from sweeps.tracking.client import Tracker, pair_record
from sweeps.tracking.spool import Spool
from tests.http_calls import count_requests

pytestmark = pytest.mark.cluster


@pytest.fixture()
def client_env(stack, monkeypatch):
    for k, v in stack.client_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(tracking, "RETRY_DELAYS_S", (0.2, 0.4))  # the test need not wait 15 s


def _record(model: str, tmp_path, protocol: str = "finetune") -> dict:
    artifact = tmp_path / f"{model}.npz"
    artifact.write_bytes(b"test predictions of " + model.encode())
    history = {f"lr_{lr}/rep0/curve/train_loss": [(0, 2.0), (10, 1.0)] for lr in (0.01, 0.001)}
    return pair_record(model, "digits", protocol, "h1", {"group": "natural", "sweep": "s"},
                       {f"{protocol}/steps": 5, "model/arch": "cnn"},
                       {"test/acc": 0.4, "val/acc": 0.5, "bad": float("nan")},
                       history=history, artifacts=[(str(artifact), "predictions")])


@pytest.mark.slow
def test_pair_logged_while_the_server_is_down_waits_in_the_spool_then_is_logged_once(
        mlflow_up, rest, client_env, tmp_path, capsys, monkeypatch):
    stack = mlflow_up
    spool_dir = tmp_path / "spool"
    tracker = Tracker(stack.tracking_uri, "spool-outage", spool_dir=spool_dir)
    first = tracker.record_pair(_record("m-before", tmp_path))
    assert first is not None

    stack.stop_mlflow()
    assert tracker.record_pair(_record("m-a", tmp_path)) is None  # retried, then spooled
    assert tracker.offline
    calls = count_requests(monkeypatch)
    assert tracker.record_pair(_record("m-b", tmp_path)) is None  # straight to the spool
    # offline: one quick /health probe, no retried logging calls
    assert [(m, u.removeprefix(stack.tracking_uri.rstrip("/"))) for m, u in calls] == [
        ("GET", "/health")]
    spool = Spool(spool_dir, "spool-outage")
    files = sorted(spool.dir.glob("*.json"))
    assert len(files) == 2 and not list(spool.dir.glob(".tmp-*"))
    saved = json.loads(files[0].read_text())
    assert {"pair_key", "run_name", "tags", "params", "metrics", "history", "artifacts",
            "protocol_hash", "timestamp_ms", "spooled_at", "reason"} <= set(saved)
    assert saved["history"]["lr_0.01/rep0/curve/train_loss"] == [[0, 2.0], [10, 1.0]]
    assert "bad" not in saved["metrics"]  # what log_pair would drop
    assert "kept in the spool" in capsys.readouterr().err

    stack.start_mlflow()
    assert tracker.record_pair(_record("m-c", tmp_path)) is not None  # the spool goes first
    assert len(spool) == 0 and not tracker.offline
    assert "2 spooled pair result(s) logged" in capsys.readouterr().err

    runs = rest.runs("spool-outage")
    parents = [r for r in runs if r["tags"].get("pair_key")]
    assert len(parents) == len(runs)
    assert sorted(r["tags"]["pair_key"] for r in parents) == sorted(
        f"m-{x}|digits|finetune" for x in ("a", "b", "before", "c"))
    assert all(r["info"]["status"] == "FINISHED" for r in runs)
    replayed = next(r for r in parents if r["tags"]["pair_key"] == "m-a|digits|finetune")
    assert replayed["metrics"] == {"test/acc": 0.4, "val/acc": 0.5,
                                   "lr_0.01/rep0/curve/train_loss": 1.0,
                                   "lr_0.001/rep0/curve/train_loss": 1.0}
    assert replayed["params"] == {"finetune/steps": "5", "model/arch": "cnn"}
    assert replayed["tags"]["group"] == "natural" and replayed["tags"]["protocol_hash"] == "h1"
    listed = rest.get("artifacts/list", run_id=replayed["info"]["run_id"], path="predictions").json()
    # a fine-tune's artifact is its test predictions (a probe's: its features)
    assert [f["path"] for f in listed["files"]] == ["predictions/m-a.npz"]

    # Replaying again, or logging a record whose key is finished, adds nothing.
    again = Tracker(stack.tracking_uri, "spool-outage", spool_dir=spool_dir)
    assert again.log_record(_record("m-a", tmp_path), lookup=True) == replayed["info"]["run_id"]
    assert len(rest.runs("spool-outage")) == len(runs)


def test_a_half_logged_run_is_resumed_by_the_replay_not_duplicated(
        stack, rest, client_env, tmp_path):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    spool_dir = tmp_path / "spool"
    tracker = Tracker(stack.tracking_uri, "spool-half", spool_dir=spool_dir)
    record = _record("m-half", tmp_path)
    # A log cut short by the outage: the run created with its tags, one curve's points logged.
    client = MlflowClient(stack.tracking_uri)
    parent = client.create_run(tracker.experiment_id, run_name=record["run_name"], tags={
        "pair_key": record["pair_key"], "protocol_hash": "h1", "protocol": "finetune",
        "model": "m-half", "task": "digits"}).info.run_id
    key = "lr_0.01/rep0/curve/train_loss"
    client.log_batch(parent, metrics=[Metric(key, v, record["timestamp_ms"], s)
                                      for s, v in record["history"][key]])
    Spool(spool_dir, "spool-half").put(record)

    # A new Tracker with that spool (what 'whichmodel run' / 'resume' make first) replays it.
    Tracker(stack.tracking_uri, "spool-half", spool_dir=spool_dir)
    assert len(Spool(spool_dir, "spool-half")) == 0
    runs = rest.runs("spool-half")
    assert [r["info"]["run_id"] for r in runs] == [parent]
    assert runs[0]["info"]["status"] == "FINISHED"
    assert runs[0]["metrics"]["test/acc"] == 0.4 and runs[0]["metrics"]["val/acc"] == 0.5
    for key in record["history"]:
        history = rest.get("metrics/get-history", run_id=parent, metric_key=key).json()
        assert len(history["metrics"]) == 2  # the curve logged before was not logged twice
