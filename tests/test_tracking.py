"""The tracking side's reads, writes and caches on a local SQLite store (no server, no Ray).

One read of the pair runs per command, filtered on the store; a fine-tune pair as one run with
its curves stepped and whole in an artifact, in as few batches as MLflow allows; the writer's
journal (what "acknowledged" means); what counts as an outage; the report reused while its
runs, settings and code are unchanged. Against the tracking server: ``tests/cluster/
test_writer.py``.
"""

from __future__ import annotations

import shutil
import threading

import pytest

from sweeps.cli import main
from sweeps.tracking.client import PAIR_RUNS, Tracker
from sweeps.tracking.pairs import pair_record

MODELS = ("m-a", "m-b", "m-c")
TASKS = ("t1", "t2")


def _uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"


def _tracker(tmp_path, **kw) -> Tracker:
    (tmp_path / "home").mkdir(exist_ok=True)
    return Tracker(_uri(tmp_path), "exp", artifact_root=tmp_path / "home" / "mlartifacts", **kw)


def _records(model: str, task: str, quality: float) -> list[dict]:
    """A probe and a fine-tune pair of one model and task, as the recorder makes them."""
    tags = {"group": "natural", "sweep": "exp"}
    params = {"model/params": 1e6 * (1 + MODELS.index(model)), "model/upstream_size": 1000}
    probe = pair_record(model, task, "probe", "hp", tags, params,
                        {"proxy/knn": quality, "proxy/linear": quality + 0.01})
    reps = {f"rep{r}/test_acc": quality + 0.01 * r for r in range(2)}
    history = {f"lr_0.01/rep{r}/curve/train_loss": [(s, 2.0 - s / 100) for s in range(0, 60, 10)]
               for r in range(2)}
    finetune = pair_record(model, task, "finetune", "hf", tags, params,
                           {"test/acc": quality + 0.005, "val/acc": quality, **reps},
                           history=history)
    return [probe, finetune]


def _log_study(tracker: Tracker) -> None:
    for i, model in enumerate(MODELS):
        for j, task in enumerate(TASKS):
            for record in _records(model, task, 0.5 + 0.1 * i - 0.05 * j):
                tracker.log_record(record)


class Calls:
    """Records a client method's calls and passes them on to it."""

    def __init__(self, obj, name: str):
        self.calls, self._fn = [], getattr(obj, name)
        setattr(obj, name, self)

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self._fn(*args, **kwargs)


def test_pair_runs_are_read_once_filtered_by_the_store_and_again_after_a_write(tmp_path):
    tracker = _tracker(tmp_path)
    _log_study(tracker)
    client = tracker.client
    report = client.create_run(tracker.experiment_id, tags={"protocol": "report"}).info.run_id
    client.create_run(tracker.experiment_id, tags={"mlflow.parentRunId": report})  # a child
    reader = _tracker(tmp_path)
    searches = Calls(reader.client, "search_runs")
    finished, _ = reader.runs_by_key({"probe": "hp", "finetune": "hf"})
    records, metadata, groups = reader.records({"probe": "hp", "finetune": "hf"})
    reader.runs_by_key()
    assert len(finished) == len(MODELS) * len(TASKS) * 2
    assert [kw["filter_string"] for _, kw in searches.calls] == [PAIR_RUNS]  # one read, filtered
    assert reader.reads == 1 and len(reader.pair_runs()) == len(finished)
    # a fine-tune's repetitions are the records' rows; the curves are not records
    assert sorted(records.loc[(records.model == "m-a") & (records.task == "t1") & (
        records.metric == "finetune_test_acc"), "value"]) == pytest.approx([0.5, 0.51])
    assert set(records.metric) == {"proxy/knn", "proxy/linear", "finetune_test_acc",
                                   "finetune_val_acc"}
    assert metadata.loc["m-b", "params"] == 2e6 and groups == {"t1": "natural", "t2": "natural"}
    # a pair this tracker logs is seen by its next read
    reader.log_record(pair_record("m-d", "t1", "probe", "hp", {}, {}, {"proxy/knn": 0.3}))
    assert "m-d|t1|probe" in reader.runs_by_key()[0] and reader.reads == 2


def test_a_fine_tune_pair_is_one_run_logged_in_the_fewest_batches(tmp_path):
    tracker = _tracker(tmp_path)
    batches = Calls(tracker.client, "log_batch")
    creates = Calls(tracker.client, "create_run")
    preds = tmp_path / "m@t.npz"
    preds.write_bytes(b"predictions")
    curves = tmp_path / "m@t.json"
    curves.write_text("{}")
    history = {f"lr_0.01/rep{r}/curve/train_loss": [(s, 1.0 / (s + 1)) for s in range(250)]
               for r in range(10)}  # the paper's size: 2,500 points
    params = {f"finetune/p{i}": i for i in range(120)}  # more than a batch holds
    record = pair_record("m", "t", "finetune", "h", {"group": "g"}, params,
                         {f"s{i}": 0.5 for i in range(40)}, history=history,
                         artifacts=[(str(preds), "predictions"), (str(curves), "curves")])
    run_id = tracker.log_record(record)
    sizes = [(len(kw["metrics"]), len(kw["params"]), len(kw["tags"])) for _, kw in batches.calls]
    assert len(creates.calls) == 1 and len(sizes) == 3  # 2,540 metrics and 120 params: 3 calls
    assert all(m + p + t <= 1000 and p <= 100 and t <= 100 for m, p, t in sizes)
    assert sum(m for m, _, _ in sizes) == 2540 and sum(p for _, p, _ in sizes) == 120
    client = tracker.client
    assert [m.step for m in client.get_metric_history(run_id, "lr_0.01/rep3/curve/train_loss")
            ] == list(range(250))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["artifacts"] == (
        "predictions/m@t.npz,curves/m@t.json")
    assert sorted(a.path for a in client.list_artifacts(run_id, "curves")) == ["curves/m@t.json"]
    assert client.search_runs([tracker.experiment_id], "tags.`mlflow.parentRunId` IS NOT NULL") == []


def test_a_record_spooled_by_the_earlier_version_replays_its_child_runs_as_curves(tmp_path):
    tracker = _tracker(tmp_path)
    record = pair_record("m", "t", "finetune", "h", {}, {}, {"test/acc": 0.5})
    del record["history"]
    record["children"] = [{"name": "m@t:finetune/lr=0.01/rep1", "params": {}, "metrics": {},
                           "history": {"train/loss": [[0, 2.0], [10, 1.0]],
                                       "curve/val_acc": [[10, 0.4]]}}]
    run_id = tracker.log_record(record)
    history = tracker.client.get_metric_history(run_id, "lr_0.01/rep1/curve/train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (10, 1.0)]
    assert tracker.client.get_metric_history(run_id, "lr_0.01/rep1/curve/val_acc")[0].value == 0.4


def test_every_acknowledged_record_is_in_the_journal_or_finished_and_each_is_logged_once(tmp_path):
    from sweeps.tracking.spool import Spool
    from sweeps.tracking.writer import Writer

    tracker = _tracker(tmp_path, spool_dir=tmp_path / "home" / "spool")
    writer = Writer(tracker, tracker.spool, maxsize=2)
    records = [r for m in MODELS for r in _records(m, "t1", 0.6)]
    for record in records:
        writer.put(record)  # returns once the record is acknowledged
        done = {r.data.tags["pair_key"] for r in _tracker(tmp_path).pair_runs()
                if r.info.status == "FINISHED"}
        journaled = {rec["pair_key"] for _, rec in Spool(tmp_path / "home" / "spool",
                                                         "exp").pending()}
        assert record["pair_key"] in done | journaled
    writer.close()
    assert writer.logged == len(records) and writer.failures == []
    assert len(tracker.spool) == 0  # each journal file went once its run was finished
    assert writer.thread is None and len(writer.seconds) == len(records)
    runs = _tracker(tmp_path).pair_runs()
    assert sorted(r.data.tags["pair_key"] for r in runs) == sorted(r["pair_key"] for r in records)


def test_the_writer_logs_on_its_own_thread(tmp_path):
    from sweeps.tracking.writer import Writer

    tracker = _tracker(tmp_path)
    threads = []
    original = tracker.record_pair
    tracker.record_pair = lambda record, **kw: threads.append(threading.current_thread().name) \
        or original(record, **kw)
    writer = Writer(tracker)
    writer.put(_records("m-a", "t1", 0.5)[0])
    writer.close()
    assert threads == ["whichmodel-mlflow-writer"]
    assert writer.logged == 1


def test_only_a_failure_to_reach_the_server_is_an_outage():
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

    from sweeps.tracking.outage import is_server_problem, with_retries

    def http(status):
        response = requests.Response()
        response.status_code = status
        return requests.HTTPError(response=response)

    outages = [ConnectionRefusedError(), TimeoutError(), requests.ConnectionError(),
               requests.Timeout(), http(503), http(401), MlflowException("down", INTERNAL_ERROR)]
    local = [PermissionError("spool"), FileNotFoundError("x.npz"), OSError(28, "disk full"),
             http(404), MlflowException("bad", INVALID_PARAMETER_VALUE), ValueError()]
    assert [is_server_problem(e) for e in outages] == [True] * len(outages)
    assert [is_server_problem(e) for e in local] == [False] * len(local)
    tries = []

    def denied():
        tries.append(1)
        raise PermissionError("/spool/x.json")

    with pytest.raises(PermissionError):
        with_retries(denied, (5.0, 5.0))
    assert tries == [1]  # raised at once: no retry, no spool


@pytest.mark.slow
def test_the_report_is_reused_while_its_runs_settings_and_code_are_unchanged(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WHICHMODEL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = _tracker(tmp_path)
    _log_study(tracker)
    out = tmp_path / "reports"
    report = ["report", "--experiment", "exp", "--reports-dir", str(out)]
    assert main(report) == 0
    first = capsys.readouterr()
    files = {p.name: p.stat().st_mtime_ns for p in (out / "exp").iterdir()}
    assert "reusing it" not in first.err and len(files) >= 10
    report_run = tracker.search("tags.protocol = 'report'")[0]

    assert main(report) == 0
    again = capsys.readouterr()
    reuse = [line for line in again.err.splitlines() if "reusing it" in line]
    assert len(reuse) == 1 and "12 finished runs" in reuse[0] and "--force" in reuse[0]
    assert again.out == first.out  # the same report, printed
    assert {p.name: p.stat().st_mtime_ns for p in (out / "exp").iterdir()} == files  # untouched
    same_run = tracker.search("tags.protocol = 'report'")[0]
    assert same_run.info.end_time == report_run.info.end_time  # not logged again

    assert main([*report, "--force"]) == 0
    assert "reusing it" not in capsys.readouterr().err
    assert main([*report, "--budget", "2"]) == 0  # other settings: computed
    assert "reusing it" not in capsys.readouterr().err
    assert main([*report, "--budget", "2"]) == 0
    assert "reusing it" in capsys.readouterr().err
    tracker.log_record(pair_record("m-a", "t3", "finetune", "hf", {"group": "natural"}, {},
                                   {"test/acc": 0.4, "val/acc": 0.4}))
    assert main([*report, "--budget", "2"]) == 0  # a new finished run: computed
    assert "reusing it" not in capsys.readouterr().err


def test_the_code_version_changes_with_any_source_file(tmp_path, monkeypatch):
    from sweeps import cache

    for package in cache.PACKAGES:
        shutil.copytree(cache.ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "ROOT", tmp_path)
    cache.code_version.cache_clear()
    try:
        before = cache.code_version()
        path = tmp_path / "selection" / "regret.py"
        path.write_text(path.read_text() + "\n# changed\n")
        cache.code_version.cache_clear()
        assert cache.code_version() != before
    finally:
        cache.code_version.cache_clear()


def test_a_long_read_prints_one_progress_line_off_a_terminal(capsys):
    import io

    from sweeps.tracking.artifacts import ReadProgress

    stream = io.StringIO()
    progress = ReadProgress("downloading test predictions", 874, stream, note="3 cached")
    for _ in range(874):
        progress.step()
    progress.done()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[whichmodel] downloading test predictions 0/874 (3 cached)")
    assert lines[-1].startswith("[whichmodel] downloading test predictions 874/874")
    assert len(lines) == 2  # a fast read: its start and its end, nothing between


def test_the_report_artifacts_tag_spares_a_listing_and_local_stores_are_read_in_place(tmp_path):
    from sweeps.tracking.artifacts import fetch_artifacts

    tracker = _tracker(tmp_path)
    preds = tmp_path / "x@t1.npz"
    preds.write_bytes(b"npz")
    with_file = tracker.log_record(pair_record(
        "x", "t1", "finetune", "hf", {}, {}, {"test/acc": 0.5},
        artifacts=[(str(preds), "predictions")]))
    without = tracker.log_record(pair_record("y", "t1", "finetune", "hf", {}, {}, {"test/acc": 0.5}))
    runs = {r.info.run_id: r for r in _tracker(tmp_path).pair_runs()}
    lists = Calls(tracker.client, "list_artifacts")
    got = fetch_artifacts(tracker, [(runs[with_file], "predictions/x@t1.npz"),
                                    (runs[without], "predictions/y@t1.npz")],
                          tmp_path / "cache")
    assert got[with_file].read_bytes() == b"npz" and got[without] is None
    assert lists.calls == [] and not (tmp_path / "cache").exists()  # read where it is
