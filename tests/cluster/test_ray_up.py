"""``ray up`` for real: cluster-local.yaml on an SSH server of this machine, a sweep submitted
through ``ray dashboard``'s tunnel, its results read back from MLflow, ``ray down``.

The node is Debian's sshd on 127.0.0.1 (tests/cluster/sshnode.py: own host key and authorised
key, its own PID namespace so that the file's ``ray stop`` sees only its own Ray, HOME and Ray's
temp dir under the test's folder). The test fills a copy of cluster-local.yaml the way a user
does -- the head's address, the SSH user and key, ``auth.ssh_proxy_command`` for the free port
(Ray's SSH runner has no port option) -- and on this 2-core machine gives the head one CPU for
trials (``--num-cpus=1`` for the file's ``--num-cpus=0``, which the file says to drop on a big
head). The file's setup commands install the synced project into the node's virtualenv, which
``WHICHMODEL_VENV`` (set in the node's environment, as the file reads it) points at: a fresh
virtualenv that sees this one's packages, so nothing like torch is installed again.

Head only, no worker on 127.0.0.2. Tried once, outside the suite: the same filled copy with
``worker_ips: [127.0.0.2]`` and a second SSH server there (own PID namespace, HOME and Ray temp
dir); for 150 s after ``ray up`` the head's autoscaler logged "Adding 1 node(s) of type
local.cluster.node" every 5 s and never ran the worker's setup over SSH, and ``ray status``
showed the head alone (cause not found). Read from Ray 2.60's code, it would not hold either:
the file starts a worker without --node-ip-address, as real machines need, and on one machine
such a node registers under the machine's own address (the route to the head at 127.0.0.1
gives it 127.0.0.1, which Ray swaps, ``resolve_ip_for_localhost``), not the 127.0.0.2 the
local provider knows it by; its dashboard agent would find the head's fixed port 52365 taken.
Adding flags to the copy would test another file.
The multi-node cases run on tests/cluster/raycluster.py's nodes.

Then, as a user: ``ray up -y``, ``ray dashboard -p PORT``, ``whichmodel submit`` (tracking on the
session's authenticated MLflow server; its password only in the secrets file ``ray up`` copies),
the runs read back, ``whichmodel jobs`` and ``logs``, ``ray down -y``. Everything is stopped
also on failure: the tunnel, the cluster (``ray down``), the SSH server and with it every
process of its namespace. The user's commands run with HOME and TMPDIR under the test's folder
(Ray's CLI keeps its state there); only Ray's ssh control-socket folder goes to /tmp, and is
removed. The transcript goes to test-artifacts/ray-up.log.

The head takes Ray's fixed default ports (GCS 6379, dashboard 8265, client server 10001,
dashboard agent 52365): the test waits until no other process of the machine holds them (a
local ``whichmodel run``'s Ray holds 52365), then fails naming the port.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
import yaml

from tests.cluster import services
from tests.cluster.raycluster import AUTH, copy_project, free_port
from tests.cluster.sshnode import SshNode, make_keys
from tests.tiny import ZOO, sweep

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))  # the user's `ray` CLI


def node_virtualenv(venv: Path) -> None:
    """A virtualenv whose Python sees this environment's packages (a .pth line), with the
    ``ray`` command: what WHICHMODEL_VENV names for the file's setup commands."""
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "-q"]
    # Its own setuptools (an old copy bundled with venv) would shadow this environment's.
    subprocess.run([*pip, "uninstall", "-y", "setuptools"], check=True)
    (venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
     / "zz-existing-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    ray = venv / "bin" / "ray"
    ray.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\n"
                   "from ray.scripts.scripts import main\nsys.exit(main())\n")
    ray.chmod(0o755)


# The fixed ports cluster-local.yaml's head takes (Ray's defaults, on 127.0.0.1 or every
# interface): another Ray of this machine holding one would make the head fail or, for the
# agent, start without the HTTP server that job submission goes through.
HEAD_PORTS = {6379: "the GCS (--port=6379)", 8265: "the dashboard", 10001: "Ray's client server",
              52365: "the dashboard agent"}


def wait_for_head_ports(timeout_s: float = 300.0) -> None:
    def held() -> list[int]:
        taken = []
        for port in HEAD_PORTS:
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    taken.append(port)
        return taken

    deadline = time.monotonic() + timeout_s
    while (taken := held()) and time.monotonic() < deadline:
        time.sleep(2)
    if taken:
        pytest.fail("held by another process of this machine after "
                    f"{timeout_s:.0f} s: " + ", ".join(f"port {p} ({HEAD_PORTS[p]})" for p in taken)
                    + "; cluster-local.yaml's head needs them")


def filled_config(path: Path, name: str, client_key: Path, port: int) -> None:
    cfg = yaml.safe_load((REPO / "cluster-local.yaml").read_text())
    cfg["cluster_name"] = name
    cfg["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    cfg["max_workers"] = 0
    cfg["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(client_key),
                   "ssh_proxy_command": f"nc %h {port}"}
    head = cfg["head_start_ray_commands"]
    assert any("--num-cpus=0" in c for c in head)
    cfg["head_start_ray_commands"] = [c.replace("--num-cpus=0", "--num-cpus=1") for c in head]
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


class Transcript:
    def __init__(self, path: Path):
        self.path = path
        path.write_text("")

    def __call__(self, line: str) -> None:
        stamped = f"[{time.strftime('%H:%M:%S')}] {line}"
        print(stamped, flush=True)
        with open(self.path, "a") as f:
            f.write(stamped + "\n")


def test_ray_up_then_submit_through_the_tunnel_read_results_and_ray_down(stack, rest, wm_home):
    root = Path(tempfile.mkdtemp(prefix="wmu-", dir="/tmp"))  # short: Ray's socket paths
    log = Transcript(services.artifacts_dir() / "ray-up.log")
    name = f"wm-test-{secrets.token_hex(3)}"
    host_key, client_key, authorized = make_keys(root / "ssh")
    port = free_port()
    node_virtualenv(root / "venv")
    local_home = root / "local"  # HOME of the user's commands: ~/.ray/auth_token and secrets
    for folder in (local_home / ".ray", local_home / ".whichmodel"):
        folder.mkdir(parents=True, mode=0o700)
    for path, text in ((local_home / ".ray" / "auth_token", AUTH["RAY_AUTH_TOKEN"]),
                       (local_home / ".whichmodel" / "secrets.env",
                        f"MLFLOW_TRACKING_PASSWORD={stack.password}\n")):
        path.touch(mode=0o600)
        path.write_text(text)
    project = root / "project"
    copy_project(project)
    (project / "tiny").mkdir()
    (project / "tiny" / "zoo.yaml").write_text(ZOO)
    (project / "tiny" / "rayup.yaml").write_text(sweep("rayup", tasks="[digits]"))
    config = root / "cluster-local.yaml"
    filled_config(config, name, client_key, port)

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "MLFLOW_", "AWS_"))}
    # TMPDIR: where Ray's CLI keeps the local provider's state and its config cache.
    (root / "local-tmp").mkdir()
    env.update(HOME=str(local_home), TMPDIR=str(root / "local-tmp"), RAY_USAGE_STATS_ENABLED="0",
               PYTHONUNBUFFERED="1", **AUTH)
    user_env = dict(env, MLFLOW_TRACKING_URI=stack.tracking_uri,
                    MLFLOW_TRACKING_USERNAME=stack.username,
                    MLFLOW_TRACKING_PASSWORD=stack.password, WHICHMODEL_HOME=str(wm_home))

    def run(*cmd: str, timeout: float, **kw) -> subprocess.CompletedProcess:
        log("$ " + " ".join(cmd))
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
        with open(log.path, "a") as f:
            f.write(done.stdout + done.stderr)
        return done

    whichmodel = [sys.executable, "-m", "sweeps.cli"]
    # The node's environment: its virtualenv, and pip told to install from what that
    # virtualenv already has (no download, no isolated build env), as on an offline machine.
    head = SshNode(root / "head", "127.0.0.1", port, host_key, authorized,
                   {"WHICHMODEL_VENV": str(root / "venv"), "PIP_NO_INDEX": "1",
                    "PIP_NO_BUILD_ISOLATION": "0"})  # pip's spelling: 0 turns isolation off
    tunnel: subprocess.Popen | None = None
    up = down = False
    try:
        wait_for_head_ports()
        head.start()
        done = run(RAY, "up", "-y", "--no-config-cache", str(config), cwd=project, env=env,
                   timeout=600)
        up = True
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

        local_port = free_port()
        url = f"http://127.0.0.1:{local_port}"
        log(f"$ {RAY} dashboard -p {local_port} {config} &")
        with open(root / "dashboard.log", "wb") as out:
            tunnel = subprocess.Popen([RAY, "dashboard", "-p", str(local_port), str(config)],
                                      cwd=project, env=env, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        headers = {"Authorization": f"Bearer {AUTH['RAY_AUTH_TOKEN']}"}

        def dashboard_up() -> bool:
            assert tunnel.poll() is None, (root / "dashboard.log").read_text()[-3000:]
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"{url}/api/version", headers=headers,
                                    timeout=3).status_code == 200
            return False

        services.wait_for(dashboard_up, 120, what="the dashboard through the tunnel")

        done = run(*whichmodel, "submit", str(project / "tiny" / "rayup.yaml"), "--no-report",
                   "--address", url, "--working-dir", str(project), cwd=REPO, env=user_env,
                   timeout=600)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
        job = re.search(r"submitted job (\S+) to", done.stdout).group(1)
        assert f"job {job}: SUCCEEDED" in done.stdout
        assert "MLFLOW_TRACKING_PASSWORD set here, not sent" in done.stdout
        assert stack.password not in done.stdout + done.stderr

        runs = services.pair_runs(rest.runs("rayup"))
        keys = Counter(r["tags"]["pair_key"] for r in runs)
        log(f"results: {len(runs)} runs in MLflow experiment 'rayup': "
            + ", ".join(f"{r['info']['run_name']} {r['info']['status']}" for r in runs))
        assert len(keys) == 4 and set(keys.values()) == {1}  # 2 models x 1 task x 2 protocols
        assert {r["info"]["status"] for r in runs} == {"FINISHED"}
        assert all(r["metrics"].get("test/acc") is not None for r in runs
                   if r["tags"].get("protocol") == "finetune")

        done = run(*whichmodel, "jobs", "--address", url, cwd=REPO, env=user_env, timeout=120)
        assert done.returncode == 0, done.stderr
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith(job))
        assert "SUCCEEDED" in line and "sweeps.cli run tiny/rayup.yaml" in line
        done = run(*whichmodel, "logs", job, "--address", url, cwd=REPO, env=user_env,
                   timeout=120)
        assert done.returncode == 0, done.stderr
        assert "[whichmodel] sweep rayup: 4 (model, task, protocol) keys" in done.stdout

        done = run(RAY, "down", "-y", str(config), cwd=project, env=env, timeout=300)
        down = True
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        services.wait_for(lambda: not services.processes_mentioning(str(head.ray_tmpdir)), 60,
                          what="the head's Ray processes to end after ray down")
        log("ray down: no Ray process of the head is left")
    finally:
        if tunnel is not None:  # `ray dashboard` and its ssh, one process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(tunnel.pid, signal.SIGTERM)
            tunnel.wait(timeout=30)
        if up and not down:
            with contextlib.suppress(Exception):
                run(RAY, "down", "-y", str(config), cwd=project, env=env, timeout=120)
        head.stop()  # the SSH server, and every process left in its namespace
        remove_ssh_control_folder(name)
        shutil.rmtree(root, ignore_errors=True)


def remove_ssh_control_folder(cluster_name: str) -> None:
    """The one thing Ray's CLI puts in /tmp whatever TMPDIR says: the folder of its ssh
    control sockets for the cluster (command_runner.py's naming)."""
    import hashlib

    user = Path("/tmp") / f"ray_ssh_{hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]}"
    shutil.rmtree(user / hashlib.sha256(cluster_name.encode()).hexdigest()[:10],
                  ignore_errors=True)
    with contextlib.suppress(OSError):
        user.rmdir()  # only when no other cluster's sockets are there
