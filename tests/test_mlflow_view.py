"""What the MLflow UI shows of a sweep: the experiment's kind, the UI's address in the
model-training view, each pair run's real start and end, and its task as a dataset input.

On a local SQLite store (no server, no Ray); the browser test against the tracking server is
``tests/cluster/test_ui.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lightning_modules.task_data import splits_digest
from sweeps.tracking.client import Tracker, pair_record
from sweeps.tracking.recorder import task_dataset, trial_span
from sweeps.tracking.ui import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, ui_url


class _Cfg:
    image_size, seed = 32, 0


def _splits(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {s: (rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, n))
            for s, n in (("train800", 8), ("val200", 4), ("test", 6))}


def test_ui_addresses_open_the_runs_table_in_the_model_training_view():
    assert ui_url("http://127.0.0.1:5000/", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning")
    assert ui_url("http://u:secret@host:5000") == (
        "http://***@host:5000/#/experiments?workflowType=machine_learning")


def test_splits_digest_is_stable_and_changes_with_any_split():
    a, b = _splits(), _splits()
    assert splits_digest(a) == splits_digest(b) and len(splits_digest(a)) == 16
    b["test"] = (b["test"][0], (b["test"][1] + 1) % 3)  # one split's labels differ
    assert splits_digest(a) != splits_digest(b)
    reordered = {k: a[k] for k in ("test", "val200", "train800")}
    assert splits_digest(reordered) == splits_digest(a)


def test_trial_span_is_the_first_start_and_the_last_end():
    assert trial_span([{"started_at": 5.0, "ended_at": 9.0}, {"started_at": 3.0, "ended_at": 7.0},
                       {"val_acc": 0.5}]) == (3.0, 9.0)
    assert trial_span([{"val_acc": 0.5}]) is None


def test_pair_run_has_its_trials_times_and_its_task_as_dataset_input(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "ui-view",
                      artifact_root=tmp_path / "artifacts")
    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    digest = splits_digest(_splits())
    dataset = task_dataset("digits", {"source": "offline"}, digest, _Cfg, "finetune")
    start, end = 1_700_000_000.25, 1_700_000_012.75  # a 12.5 s fine-tune, logged much later
    record = pair_record("m1", "digits", "finetune", "h", {"group": "natural"}, {},
                         {"test/acc": 0.5}, span=(start, end), dataset=dataset)
    assert json.loads(json.dumps(record)) == record  # the spool keeps it as JSON
    run_id = tracker.log_record(record)
    run = tracker.client.get_run(run_id)
    assert (run.info.start_time, run.info.end_time) == (int(start * 1000), int(end * 1000))
    assert run.info.end_time - run.info.start_time == 12_500  # the UI's Duration
    (inp,) = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == ("digits", digest)
    assert json.loads(inp.dataset.source) == {"uri": "offline:digits", "kind": "offline",
                                              "image_size": 32, "seed": 0}
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "finetune"}
    # logged again (a replay): still one run and one dataset input
    assert tracker.log_record(record, lookup=True) == run_id
    assert len(tracker.client.get_run(run_id).inputs.dataset_inputs) == 1


def test_an_experiment_from_before_gets_its_kind_and_imagefolder_tasks_their_folder(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri, "warmup", artifact_root=tmp_path)  # creates the store's tables
    client = MlflowClient(uri)
    exp_id = client.create_experiment("old", artifact_location=(tmp_path / "old").as_uri())
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(exp_id).tags
    Tracker(uri, "old", create=False)
    assert client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    ds = task_dataset("leaves", {"source": "imagefolder", "path": "/data/leaves",
                                 "group": "natural"}, "abc", _Cfg, "probe")
    assert ds["source_type"] == "local" and json.loads(ds["source"])["uri"] == "/data/leaves"


@pytest.mark.slow
def test_trials_carry_their_wall_clock_and_their_tasks_digest(tmp_path):
    """A probe and a fine-tune trial of the tiny zoo's random-init model (no pre-training):
    each result has ``started_at`` <= ``ended_at`` around the call and the digest of the task's
    splits as loaded."""
    import time

    from lightning_modules.offline import build_suite
    from sweeps.driver import trial_settings
    from sweeps.paths import default_paths
    from sweeps.plan import Job, plan_sweep
    from sweeps.trials import build_model, run_trial
    from sweeps.zoo_config import load_zoo_config
    from tests.tiny import ZOO, sweep

    (tmp_path / "zoo.yaml").write_text(ZOO)
    (tmp_path / "s.yaml").write_text(sweep("trial-times", tasks="[digits]"))
    paths = default_paths(tmp_path / "home")
    build_model(load_zoo_config(tmp_path / "zoo.yaml"), "tiny-random", paths.zoo_root,
                paths.data_root)
    build_suite(paths.data_root, ["digits"], image_size=32, seed=0)
    plan = plan_sweep(tmp_path / "s.yaml")
    settings = trial_settings(plan, paths)
    digest = splits_digest(settings.load_task("digits").splits)
    for job in (Job("probe", "tiny-random", "digits"),
                Job("finetune", "tiny-random", "digits", runs=((0.01, 0),))):
        before = time.time()
        metrics = run_trial(job, settings)
        assert before <= metrics["started_at"] <= metrics["ended_at"] <= time.time()
        assert metrics["ended_at"] - metrics["started_at"] == pytest.approx(
            metrics["time/trial"], abs=0.05)
        assert metrics["task_digest"] == digest
