"""Shared fixtures: one local Ray per test session (own temp dir, no dashboard)."""

from __future__ import annotations

import logging
import os
import secrets
import tempfile

import pytest

# Every Ray of the test session -- the local one below, the loopback clusters of tests/cluster
# (whose gRPC servers listen beyond loopback) -- requires Ray's token authentication: one random
# token per session, in the environment that every Ray process and client of the tests inherits.
# Set before anything imports Ray: its clients read the mode once per process.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

from sweeps.tune_runner import prepare_ray  # noqa: E402 (after the auth mode: Ray reads it on import)

prepare_ray()  # whichmodel's Ray environment, for every Ray process the tests start


@pytest.fixture(scope="session")
def ray_session():
    """A 2-CPU local Ray for the whole session; the driver code finds it already initialised."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="wmt-", dir="/tmp")
    from sweeps.tune_runner import worker_system_config

    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir,
             logging_level=logging.WARNING, _system_config=worker_system_config())
    yield ray
    ray.shutdown()


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """An empty WHICHMODEL_HOME, with tracking at its default local store."""
    monkeypatch.setenv("WHICHMODEL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


@pytest.fixture()
def short_tmp():
    """Short folders under /tmp (Ray's socket paths must stay under ~107 characters, which a
    pytest tmp_path can exceed), removed after the test, also on failure: ``short_tmp("a")``."""
    import shutil
    from pathlib import Path

    made: list[Path] = []

    def make(tag: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"wm{tag}-", dir="/tmp"))
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
