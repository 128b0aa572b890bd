"""Helpers of the cluster tests: the tracking stack's folder, MLflow's REST API, sweep processes.

The stack itself (PostgreSQL, moto S3, MLflow with basic auth, all on loopback) is
``mlflow_server.local.local_stack``; ``conftest.py`` starts it once per session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from tests.reaper import reaped, stop

REPO = Path(__file__).resolve().parents[2]


def stack_root() -> Path:
    """A fresh folder for the stack that the ``postgres`` user can reach when we are root
    (pytest's own tmp folders are mode 0700 and owned by root)."""
    root = Path(tempfile.mkdtemp(prefix="wm-stack-", dir="/tmp"))
    root.chmod(0o711)
    return root


def artifacts_dir() -> Path:
    """Where tests leave files for people to look at (``WHICHMODEL_TEST_ARTIFACTS``, default
    ``test-artifacts/`` in the repository, which ignores itself so nothing lands in git)."""
    custom = os.environ.get("WHICHMODEL_TEST_ARTIFACTS")
    folder = Path(custom) if custom else REPO / "test-artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    if not custom and not (folder / ".gitignore").exists():
        (folder / ".gitignore").write_text("*\n")
    return folder


class Rest:
    """MLflow's REST API through ``requests`` with basic-auth credentials."""

    def __init__(self, uri: str, username: str | None, password: str | None):
        self.uri = uri.rstrip("/")
        self.auth = (username, password) if username else None

    def get(self, endpoint: str, **params) -> requests.Response:
        return requests.get(f"{self.uri}/api/2.0/mlflow/{endpoint}", params=params,
                            auth=self.auth, timeout=10)

    def post(self, endpoint: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.uri}/api/2.0/mlflow/{endpoint}", json=body, auth=self.auth,
                             timeout=10)

    def experiment_id(self, name: str) -> str | None:
        r = self.get("experiments/get-by-name", experiment_name=name)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()["experiment"]["experiment_id"]

    def runs(self, experiment: str, filter_string: str = "") -> list[dict[str, Any]]:
        """Every run of the experiment (all statuses), each with a flat ``tags`` dict added."""
        exp_id = self.experiment_id(experiment)
        if exp_id is None:
            return []
        runs, token = [], None
        while True:
            body = {"experiment_ids": [exp_id], "filter": filter_string, "max_results": 1000}
            if token:
                body["page_token"] = token
            r = self.post("runs/search", body)
            r.raise_for_status()
            page = r.json()
            for run in page.get("runs", []):
                run["tags"] = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
                run["metrics"] = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
                run["params"] = {p["key"]: p["value"] for p in run["data"].get("params", [])}
                runs.append(run)
            token = page.get("next_page_token")
            if not token:
                return runs


def pair_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if r["tags"].get("pair_key")]


def seed_home(root: Path, home: Path) -> Path:
    """A fresh WHICHMODEL_HOME with the session's built zoo and task caches copied in."""
    home.mkdir(parents=True, exist_ok=True)
    for part in ("zoo", "data/tasks"):  # not the zoo's rendered source images
        if (root / part).is_dir():
            shutil.copytree(root / part, home / part)
    return home


def cli(home: Path, ray_dir: Path, *args: str, env: dict[str, str] | None = None,
        log: Path | None = None) -> subprocess.Popen:
    """``python -m sweeps.cli ARGS`` under :mod:`tests.reaper` (everything it starts is stopped
    by PID when it ends or on :func:`stop_cli`), output to ``log``."""
    full = dict(os.environ if env is None else env, WHICHMODEL_HOME=str(home),
                WHICHMODEL_RAY_TEMP_DIR=str(ray_dir), PYTHONUNBUFFERED="1")
    full.pop("RAY_ADDRESS", None)
    out = open(log, "w") if log else subprocess.PIPE
    try:
        return reaped([sys.executable, "-m", "sweeps.cli", *args], env=full, stdout=out)
    finally:
        if log:
            out.close()


def stop_cli(proc: subprocess.Popen) -> None:
    """End a :func:`cli` process and every process it started (Ray's daemons too), by PID."""
    stop(proc)


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (a path unique to this test's processes)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def server_paused(stack):
    """The stack's MLflow server (the launcher's ``mlflow server`` process group: its uvicorn
    workers too) stopped with SIGSTOP while the block runs, then continued: a server that
    accepts connections and answers nothing, the slowest server there is."""
    parent = stack.mlflow_proc.pid
    (child,) = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                and _ppid(p) == parent]
    group = os.getpgid(child)
    os.killpg(group, signal.SIGSTOP)
    try:
        yield group
    finally:
        os.killpg(group, signal.SIGCONT)


def _ppid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
