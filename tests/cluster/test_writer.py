"""The recorder's writer and the report's reads against the tracking server (PostgreSQL, moto S3,
MLflow with basic auth, on loopback).

A server paused with SIGSTOP (it accepts connections and answers nothing) stalls no callback,
and a full queue makes the driver wait without losing a record; a driver killed while records
wait in its queue loses no acknowledged pair once ``whichmodel resume`` ran; the report's
predictions artifacts are downloaded once, concurrently, without MLflow's progress bars, and a
second read needs no server at all.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sweeps.tracking.client import Tracker
from sweeps.tracking.pairs import pair_record
from tests.cluster import services
from tests.tiny import sweep

pytestmark = pytest.mark.cluster


@pytest.fixture()
def client_env(stack, monkeypatch):
    for k, v in stack.client_env().items():
        monkeypatch.setenv(k, v)


def _record(model: str, tmp_path: Path, task: str = "digits") -> dict:
    preds = tmp_path / f"{model}@{task}.npz"
    labels = np.arange(20) % 4
    np.savez_compressed(preds, predictions=np.stack([labels, (labels + model.count("b")) % 4]),
                        labels=labels)
    return pair_record(model, task, "finetune", "h1", {"group": "natural"}, {"model/arch": "cnn"},
                       {"test/acc": 0.5, "val/acc": 0.5},
                       history={"lr_0.01/rep0/curve/train_loss": [(0, 2.0), (10, 1.0)]},
                       artifacts=[(str(preds), "predictions")])


def _in_thread(fn) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_a_paused_server_stalls_no_callback_and_a_full_queue_waits_losing_nothing(
        mlflow_up, rest, client_env, tmp_path):
    from sweeps.tracking.writer import Writer

    stack = mlflow_up
    tracker = Tracker(stack.tracking_uri, "writer-paused", spool_dir=tmp_path / "spool")
    writer = Writer(tracker, tracker.spool, maxsize=2, cache_dir=tmp_path / "cache")
    records = [_record(f"m{i}", tmp_path) for i in range(5)]
    with services.server_paused(stack):
        # the writer takes the first record and waits on the server; the queue holds two more
        acknowledged = _in_thread(lambda: [writer.put(r) for r in records[:3]])
        acknowledged.join(timeout=60)
        assert not acknowledged.is_alive(), "a paused server must not hold the callback"
        waiting = _in_thread(lambda: writer.put(records[3]))
        waiting.join(timeout=3)
        assert waiting.is_alive(), "with the queue full, the driver waits"
        assert len(tracker.spool) == 4  # every record journaled before it is queued
    waiting.join(timeout=120)
    assert not waiting.is_alive()
    writer.put(records[4])
    writer.close()
    assert writer.logged == 5 and writer.failures == [] and len(tracker.spool) == 0
    runs = services.pair_runs(rest.runs("writer-paused"))
    assert Counter(r["tags"]["pair_key"] for r in runs) == Counter(r["pair_key"] for r in records)
    assert all(r["info"]["status"] == "FINISHED" for r in runs)
    # each run's predictions are in the cache as its artifact: a report here downloads none
    for run in runs:
        model = run["tags"]["model"]
        kept = tmp_path / "cache" / run["info"]["run_id"] / "predictions" / f"{model}@digits.npz"
        assert kept.read_bytes() == (tmp_path / f"{model}@digits.npz").read_bytes()


def test_predictions_are_downloaded_once_then_read_without_the_server(
        mlflow_up, client_env, tmp_path, capfd):
    from sweeps.reporting import test_results

    stack = mlflow_up
    tracker = Tracker(stack.tracking_uri, "artifact-cache")
    for model in ("a", "b", "ab", "bb"):
        tracker.log_record(_record(model, tmp_path))
    # a run logged before the artifacts tag: listed, then downloaded; one without predictions
    old = tracker.client.create_run(tracker.experiment_id, tags={
        "pair_key": "old|digits|finetune", "model": "old", "task": "digits",
        "protocol": "finetune", "protocol_hash": "h1"}).info.run_id
    tracker.client.log_artifact(old, _record("old", tmp_path)["artifacts"][0][0], "predictions")
    tracker.client.log_metric(old, "test/acc", 0.5)
    tracker.client.set_terminated(old)
    gone = tracker.client.create_run(tracker.experiment_id, tags={
        "pair_key": "gone|digits|finetune", "model": "gone", "task": "digits",
        "protocol": "finetune", "protocol_hash": "h1"}).info.run_id
    tracker.client.set_terminated(gone)
    # a run that says it has no artifact: not even listed
    tracker.log_record(pair_record("none", "digits", "finetune", "h1", {}, {}, {"test/acc": 0.5}))
    cache = tmp_path / "cache"
    capfd.readouterr()
    first = test_results(tracker, {"finetune": "h1"}, cache)
    err = capfd.readouterr().err
    assert sorted(first["digits"]) == ["a", "ab", "b", "bb", "old"]
    assert first["digits"]["b"].shape == (2, 20) and first["digits"]["a"].all()
    assert "Downloading artifacts" not in err and "%|" not in err  # no third-party bar
    assert [line.split(" | ")[0] for line in err.splitlines()] == [
        "[whichmodel] downloading test predictions 0/6",
        "[whichmodel] downloading test predictions 6/6"]
    assert len(list(cache.rglob("*.npz"))) == 5 and len(list(cache.rglob("*.absent"))) == 1
    stack.stop_mlflow()  # the second read must not need it
    try:
        again = test_results(tracker, {"finetune": "h1"}, cache)
    finally:
        stack.start_mlflow()
    assert capfd.readouterr().err == ""
    assert {m: v.tolist() for m, v in again["digits"].items()} == {
        m: v.tolist() for m, v in first["digits"].items()}


def test_the_lean_read_of_the_keys_finds_what_the_full_read_finds(mlflow_up, client_env, tmp_path):
    """The skip check reads ids, status, end time and tags only (GraphQL), in 16 run-id
    partitions; the report's full read, partitioned too, finds the same runs in the same order."""
    stack = mlflow_up
    writer_tracker = Tracker(stack.tracking_uri, "lean-read")
    for i in range(12):
        writer_tracker.log_record(_record(f"m{i}", tmp_path))
    unfinished = writer_tracker.client.create_run(writer_tracker.experiment_id, tags={
        "pair_key": "m0|digits|finetune", "protocol": "finetune", "protocol_hash": "h1",
        "model": "m0", "task": "digits"}).info.run_id
    writer_tracker.client.create_run(writer_tracker.experiment_id, tags={"protocol": "report"})
    tracker = Tracker(stack.tracking_uri, "lean-read")
    finished, waiting = tracker.keys_by_status({"finetune": "h1"})
    assert tracker.reads == 1 and tracker.pair_runs() and tracker.reads == 2
    full_finished, full_waiting = tracker.runs_by_key({"finetune": "h1"})
    assert {k: (r.run_id, r.end_time) for k, r in finished.items()} == {
        k: (r.info.run_id, r.info.end_time) for k, r in full_finished.items()}
    assert len(finished) == 12 and waiting["m0|digits|finetune"].run_id == unfinished
    assert full_waiting["m0|digits|finetune"].info.run_id == unfinished
    assert finished["m3|digits|finetune"].tags["group"] == "natural"
    assert [r.run_id for r in tracker.pair_keys()] == [r.info.run_id for r in tracker.pair_runs()]


@pytest.mark.slow
def test_a_driver_killed_with_records_in_its_queue_loses_no_acknowledged_pair(
        mlflow_up, rest, wm_home, tmp_path):
    """The acceptance test of issue 26: records wait in the writer's queue (the server paused),
    the driver is killed (SIGKILL), then ``whichmodel resume``: every acknowledged pair -- in
    MLflow or in the journal when the driver died -- is logged, once."""
    stack = mlflow_up
    config = tmp_path / "killed.yaml"
    config.write_text(sweep("killed", tasks="[digits, sprite_location]", steps=200))
    keys = {f"{m}|{t}|{p}" for m in ("tiny-shapes", "tiny-random")
            for t in ("digits", "sprite_location") for p in ("probe", "finetune")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(stack.client_env())
    spool = wm_home / "spool" / "killed"
    ray_a, ray_b = Path(f"/tmp/wmq-{os.getpid()}-a"), Path(f"/tmp/wmq-{os.getpid()}-b")
    proc = services.cli(wm_home, ray_a, "run", str(config), "--no-report", env=env,
                        log=tmp_path / "run.log")
    try:
        def one_pair_logged():
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "run.log").read_text()[-3000:])
            return any(r["info"]["status"] == "FINISHED"
                       for r in services.pair_runs(rest.runs("killed")))

        services.wait_for(one_pair_logged, timeout=240, what="the first logged pair")
        with services.server_paused(stack):
            services.wait_for(lambda: len(list(spool.glob("*.json"))) >= 2 or proc.poll(),
                              timeout=240, what="two pairs acknowledged while the server waits")
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            journal = {json.loads(p.read_text())["pair_key"] for p in spool.glob("*.json")}
            services.stop_cli(proc)  # the driver and all it started SIGKILLed, by PID
    finally:
        services.stop_cli(proc)
        shutil.rmtree(ray_a, ignore_errors=True)
    done = {r["tags"]["pair_key"] for r in services.pair_runs(rest.runs("killed"))
            if r["info"]["status"] == "FINISHED"}
    assert journal - done, "records must have been waiting in the queue when the driver died"
    acknowledged = journal | done

    resume = services.cli(wm_home, ray_b, "resume", "killed", "--no-report", env=env,
                          log=tmp_path / "resume.log")
    try:
        rc = resume.wait(timeout=600)
    finally:
        services.stop_cli(resume)
        shutil.rmtree(ray_b, ignore_errors=True)
    out = (tmp_path / "resume.log").read_text()
    assert rc == 0, out[-4000:]
    assert "spooled pair result(s) logged" in out  # the journal replayed first
    runs = services.pair_runs(rest.runs("killed"))
    counts = Counter(r["tags"]["pair_key"] for r in runs)
    assert acknowledged <= set(counts) and set(counts) == keys and set(counts.values()) == {1}
    assert all(r["info"]["status"] == "FINISHED" for r in runs)
    assert not list(spool.glob("*.json"))
