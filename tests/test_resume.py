"""A driver killed mid-sweep (SIGKILL), then ``whichmodel resume``: one finished run per key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.reaper import reaped, stop
from tests.tiny import ZOO, sweep

pytestmark = pytest.mark.slow


def _pair_runs(home: Path, experiment: str):
    """The experiment's pair runs, read once no driver writes the store any more."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {home / 'mlflow.db'}"
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("pair_key")]


def _finished_pair_count(home: Path) -> int:
    """Finished pair runs, read straight from SQLite while the driver may still be creating the
    store (an MLflow client here would race it on schema creation)."""
    import sqlite3

    db = home / "mlflow.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
                "WHERE tags.key = 'pair_key' AND runs.status = 'FINISHED'").fetchone()
        return int(n)
    except sqlite3.Error:
        return 0


def _cli(home: Path, ray_dir: Path, *args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, WHICHMODEL_HOME=str(home), WHICHMODEL_RAY_TEMP_DIR=str(ray_dir),
               PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    return reaped([sys.executable, "-m", "sweeps.cli", *args], env=env, **kw)


def _journal(home: Path, experiment: str) -> set[str]:
    """The pair keys whose records wait in the spool (acknowledged, not logged yet)."""
    import json

    return {json.loads(p.read_text())["pair_key"]
            for p in (home / "spool" / experiment).glob("*.json")}


def test_sigkilled_driver_then_resume_leaves_one_finished_run_per_key(tmp_path, short_tmp):
    home = tmp_path / "home"
    (tmp_path / "zoo.yaml").write_text(ZOO)
    config = tmp_path / "kill.yaml"
    config.write_text(sweep("kill", tasks="[digits, sprite_location, count]", steps=40))
    ray_a, ray_b = short_tmp("k"), short_tmp("k")
    build = _cli(home, ray_a, "zoo", "build", str(tmp_path / "zoo.yaml"))
    assert build.wait(timeout=300) == 0, build.stdout.read()  # its leftovers stopped by PID

    driver = _cli(home, ray_a, "run", str(config), "--no-report")
    total = 2 * 3 * 2
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if _finished_pair_count(home) >= 3 or driver.poll() is not None:
                break
            time.sleep(0.5)
    finally:
        stop(driver)
    before = {r.data.tags["pair_key"]: r.info.run_id for r in _pair_runs(home, "kill")
              if r.info.status == "FINISHED"}
    assert 0 < len(before) < total, "the driver must be killed mid-sweep"
    acknowledged = set(before) | _journal(home, "kill")  # logged, or journaled and queued

    resume = _cli(home, ray_b, "resume", "kill", "--no-report")
    try:
        out, _ = resume.communicate(timeout=600)
    finally:
        stop(resume)
    assert resume.returncode == 0, out
    assert "resuming" in out and "afresh" not in out  # Tune restored its experiment

    runs = _pair_runs(home, "kill")
    keys = Counter(r.data.tags["pair_key"] for r in runs)
    assert len(keys) == total and set(keys.values()) == {1}, keys
    assert all(r.info.status == "FINISHED" for r in runs)
    after = {r.data.tags["pair_key"]: r.info.run_id for r in runs}
    assert all(after[k] == run_id for k, run_id in before.items())  # nothing logged twice
    assert acknowledged <= set(after) and not _journal(home, "kill")
