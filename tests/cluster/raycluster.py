"""A real multi-node Ray cluster on this one machine, for the cluster tests.

Each node is its own ``ray start --block`` in its own process group and temp dir (jobs with a
working dir break when nodes share one), on free ports, with a loopback address of its own
(127.0.0.2 for the head, 127.0.0.3... for workers) and the dashboard on 127.0.0.1. Ray's gRPC
servers (GCS, raylets, workers) listen on every interface whatever the flags; everything else
binds to the loopback. Stopping a node kills its process group, then any process still holding a
file under its temp dir (Ray workers and a job's driver run in process groups of their own) -
never ``ray stop``, which stops every Ray of the machine.

    with LocalCluster(head_cpus=0, workers=1) as cluster:   # the cluster.yaml shape
        cluster.dashboard_url      # http://127.0.0.1:PORT, for the Jobs API
        cluster.gcs_address        # 127.0.0.2:PORT, for RAY_ADDRESS
        cluster.kill_worker(0)     # a node dies
        cluster.add_worker()       # and another joins
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.reaper import descendants, reaped, stop

RAY = str(Path(sys.executable).with_name("ray"))
REPO = Path(__file__).resolve().parents[2]

# Lets a dead worker node be noticed in ~3 s rather than Ray's default of ~30 s.
FAST_FAILURE_DETECTION = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
                          "health_check_failure_threshold": 3}


def copy_project(dest: Path) -> None:
    """The project's code as a user's checkout holds it: what a submitted job uploads and runs."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    packages = [p for p in cfg["options.packages.find"]["include"].split() if "." not in p]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in packages:
        shutil.copytree(REPO / pkg, dest / pkg, ignore=ignore)
    for f in ("setup.cfg", "pyproject.toml"):
        shutil.copy(REPO / f, dest / f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Ray's gRPC servers listen on every interface whatever the flags: the test cluster requires
# Ray's token authentication, one random token per test session, shared by its processes.
# tests/conftest.py puts the session's token in the environment before Ray is imported.
AUTH = {"RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32)}


def node_env(**extra: str) -> dict[str, str]:
    """The environment of every Ray process of these tests (nodes, drivers, clients)."""
    env = dict(os.environ)
    env.update(AUTH)
    env["PL_DISABLE_FORK"] = "1"  # as cluster.yaml's nodes export it (see sweeps/tune_runner.py)
    # A job's entrypoint runs `python ...` from the node's PATH: this interpreter's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    env.update(extra)
    return env


@dataclass
class Node:
    name: str
    ip: str
    temp_dir: Path
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None


class LocalCluster:
    # Ray swaps 127.0.0.1 for the machine's routable address when it starts a node that may join
    # a multi-node cluster; other loopback addresses it keeps. One per node also tells the nodes
    # apart in Tune's `node_ip`.
    HEAD_IP = "127.0.0.2"

    def __init__(self, head_cpus: int = 0, workers: int = 1, cpus_per_worker: int = 1,
                 system_config: dict | None = None, start_timeout_s: float = 120.0):
        self.head_cpus, self.n_workers, self.cpus_per_worker = head_cpus, workers, cpus_per_worker
        self.system_config = system_config or {}
        self.start_timeout_s = start_timeout_s
        # Short: Ray's socket paths under the temp dir must stay below 107 characters.
        self.root = Path(tempfile.mkdtemp(prefix="wmc-", dir="/tmp"))
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.head: Node | None = None
        self.workers: list[Node] = []

    @property
    def gcs_address(self) -> str:
        return f"{self.HEAD_IP}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        head_args = ["--head", f"--port={self.gcs_port}", f"--num-cpus={self.head_cpus}",
                     "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                     "--include-dashboard=true", f"--ray-client-server-port={free_port()}"]
        if self.system_config:  # cluster-wide: the head's word holds for every node
            head_args.append(f"--system-config={json.dumps(self.system_config)}")
        self.head = self._start("head", self.HEAD_IP, head_args)
        self._wait(self._dashboard_up, "the head's dashboard", self.head)
        for _ in range(self.n_workers):
            self.add_worker()

    def add_worker(self) -> Node:
        i = len(self.workers)
        node = self._start(f"worker{i}", f"127.0.0.{3 + i}",
                           [f"--address={self.gcs_address}", f"--num-cpus={self.cpus_per_worker}"])
        self.workers.append(node)
        # up when its own raylet is an alive node of the cluster (not merely one more node)
        self._wait(lambda: self.node_id_of(node) in self.alive_node_ids(), f"worker node {i}",
                   node)
        return node

    def _start(self, name: str, ip: str, args: list[str]) -> Node:
        temp_dir = self.root / name
        temp_dir.mkdir(parents=True)
        log = self.root / f"{name}.log"
        cmd = [RAY, "start", "--block", "--num-gpus=0", f"--temp-dir={temp_dir}",
               f"--node-ip-address={ip}", f"--dashboard-agent-listen-port={free_port()}",
               "--disable-usage-stats", *args]
        with open(log, "wb") as out:  # under the reaper: the node's processes stop by PID
            proc = reaped(cmd, env=node_env(), stdout=out, text=False)
        return Node(name, ip, temp_dir, proc, log)

    def _wait(self, ready, what: str, node: Node) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if not node.alive():
                raise RuntimeError(f"{what} exited: {node.log.read_text()[-3000:]}")
            try:
                if ready():
                    return
            except Exception:  # not up yet
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{what} not up after {self.start_timeout_s}s: "
                           f"{node.log.read_text()[-3000:]}")

    def _dashboard_up(self) -> bool:
        import urllib.request

        request = urllib.request.Request(
            f"{self.dashboard_url}/api/version",
            headers={"Authorization": f"Bearer {AUTH['RAY_AUTH_TOKEN']}"})
        with urllib.request.urlopen(request, timeout=2) as r:
            return r.status == 200

    def kill_worker(self, i: int = 0) -> None:
        """SIGKILL a worker node: its raylet, agents and every worker process it started."""
        stop(self.workers[i].proc)

    def stop(self) -> None:
        for node in [*self.workers, *([self.head] if self.head else [])]:
            stop(node.proc)
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ what runs where
    def alive_node_ids(self) -> list[str]:
        from ray.util.state import list_nodes

        nodes = list_nodes(address=self.dashboard_url, filters=[("state", "=", "ALIVE")],
                           raise_on_missing_output=False)
        return [n.node_id for n in nodes]

    def node_id_of(self, node: Node) -> str:
        """The node id Ray gave ``node`` (its raylet carries it on its command line)."""
        for pid in descendants(node.proc.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"/raylet"):
                for arg in cmd:
                    if arg.startswith(b"--node_id="):
                        return arg.split(b"=", 1)[1].decode()
        raise LookupError(f"no raylet found for {node.name}")

    def trial_actors_on(self, node_id: str) -> int:
        """Tune trial actors alive on a node."""
        from ray.util.state import list_actors

        actors = list_actors(address=self.dashboard_url, filters=[("state", "=", "ALIVE")],
                             detail=True, raise_on_missing_output=False)
        return sum(a.node_id == node_id and a.class_name in ("ImplicitFunc", "_trainable")
                   for a in actors)


def tune_trials(experiment_dir: Path) -> list[dict]:
    """Each trial of a Tune experiment as its saved state has it: ``job`` (the config),
    ``status``, ``num_failures`` and ``node_ip`` (of the node that ran its last result)."""
    trials = []
    for state in sorted(experiment_dir.glob("experiment_state-*.json"))[-1:]:
        for trial_json, runtime_json in json.loads(state.read_text())["trial_data"]:
            trial, runtime = json.loads(trial_json), json.loads(runtime_json)
            last = runtime.get("last_result") or {}
            trials.append({"job": trial["config"]["job"], "status": trial["status"],
                           "num_failures": runtime.get("num_failures", 0),
                           "node_ip": last.get("node_ip")})
    return trials
