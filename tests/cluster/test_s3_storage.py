"""Sweep state on S3 (moto's server on loopback): a new head node resumes a killed sweep.

Head A runs a sweep with ``WHICHMODEL_STORAGE=s3://...`` (Tune state, the sweep's state file and
the feature caches in the bucket) and is SIGKILLed mid-sweep. Head B has an empty home folder
(its own zoo build, no Tune state, no state file) and the same bucket and tracking store:
``whichmodel resume NAME`` finds the state in S3, restores Tune's experiment from S3, and every
(model, task, protocol) ends with exactly one finished run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mlflow_server.local import MotoS3
from tests.reaper import reaped, stop
from tests.tiny import ZOO, sweep

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
BUCKET = "wm-state"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = MotoS3(log=tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()


def _env(home: Path, ray_dir: Path, s3: MotoS3, db: Path) -> dict[str, str]:
    env = dict(os.environ, WHICHMODEL_HOME=str(home), WHICHMODEL_RAY_TEMP_DIR=str(ray_dir),
               PYTHONUNBUFFERED="1", WHICHMODEL_STORAGE=f"s3://{BUCKET}/team",
               AWS_ENDPOINT_URL=s3.endpoint, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               MLFLOW_TRACKING_URI=f"sqlite:///{db}")
    env.pop("RAY_ADDRESS", None)
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.Popen:
    return reaped([sys.executable, "-m", "sweeps.cli", *args], env=env)


def test_new_head_node_resumes_a_killed_sweep_from_state_on_s3(tmp_path, s3, short_tmp):
    from tests.test_resume import _finished_pair_count

    db = tmp_path / "shared" / "mlflow.db"  # stands for the shared tracking server
    db.parent.mkdir()
    (tmp_path / "zoo.yaml").write_text(ZOO)
    config = tmp_path / "s3kill.yaml"
    config.write_text(sweep("s3kill", tasks="[digits, sprite_location, count]", steps=40))
    ray_a, ray_b = short_tmp("s"), short_tmp("s")
    env_a = _env(tmp_path / "head-a", ray_a, s3, db)
    env_b = _env(tmp_path / "head-b", ray_b, s3, db)
    for env in (env_a, env_b):
        build = _cli(env, "zoo", "build", str(tmp_path / "zoo.yaml"))
        assert build.wait(timeout=300) == 0, build.stdout.read()  # leftovers stopped by PID

    driver = _cli(env_a, "run", str(config), "--no-report")
    total = 2 * 3 * 2
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if _finished_pair_count(db.parent) >= 3 or driver.poll() is not None:
                break
            time.sleep(0.5)
    finally:
        stop(driver)
    done_before = _finished_pair_count(db.parent)
    assert 0 < done_before < total, "head A must be killed mid-sweep"

    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert "team/sweeps/s3kill.json" in keys
    assert any(k.startswith("team/tune/s3kill-") for k in keys)  # Tune's experiment state
    assert any(k.startswith("team/features/s3kill/") and k.endswith(".npz") for k in keys)
    assert not (tmp_path / "head-b" / "sweeps").exists()  # head B knows nothing locally

    resume = _cli(env_b, "resume", "s3kill", "--no-report")
    try:
        out, _ = resume.communicate(timeout=600)
    finally:
        stop(resume)
    assert resume.returncode == 0, out
    assert "resuming s3://" in out and "afresh" not in out  # Tune restored from S3

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("s3kill")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("pair_key")]
    counts = Counter(r.data.tags["pair_key"] for r in runs)
    assert len(counts) == total and set(counts.values()) == {1}, counts
    assert all(r.info.status == "FINISHED" for r in runs)
    probes = [r for r in runs if r.data.tags["pair_key"].endswith("|probe")]
    assert all(r.data.tags.get("features_uri", "").startswith(f"s3://{BUCKET}/team/features/")
               for r in probes)
