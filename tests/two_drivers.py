"""Two ``whichmodel run`` of one tiny sweep started at the same moment against one store.

Shared by the local-store test (``tests/test_two_drivers.py``) and the server-stack test
(``tests/cluster/test_two_drivers_server.py``). The experiment exists already (as after any
earlier sweep) and holds the lease of a driver that died ten minutes ago; then both drivers
start at once. What must hold: one driver runs the sweep, taking over the dead lease and saying
so; the other stops before its first trial with one line naming the holder and since when (exit
code 2); each (model, task, protocol) key has exactly one finished run; no lease is left.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from pathlib import Path

from tests.reaper import reaped, stop

SWEEP = """
name: twice
models: [control]
tasks: [digits]
probe: {proxies: [knn, logme], linear: {steps: 5, repeats: 1}}
finetune: {profile: t, lrs: [0.01], head_steps: 2, steps: 3, batch_size: 16, repeats: 1,
           trials: per_pair}
resources: {num_cpus: 1, probe: {cpus: 1}, finetune: {cpus: 1}}
"""
ZOO = "models:\n  - {name: control, arch: cnn, arch_kwargs: {width: 4}, objective: none}\n"
KEYS = {"control|digits|probe", "control|digits|finetune"}


def prepare(root: Path) -> tuple[Path, Path]:
    """The sweep file and a home with its one model built and its task cached (no Ray)."""
    from lightning_modules.offline import build_suite
    from sweeps.trials import build_model
    from sweeps.zoo_config import load_zoo_config

    (root / "zoo.yaml").write_text(ZOO)
    (root / "twice.yaml").write_text(SWEEP)
    home = root / "home"
    build_model(load_zoo_config(root / "zoo.yaml"), "control", home / "zoo", home / "data")
    build_suite(home / "data", ["digits"], image_size=32, seed=0)
    return root / "twice.yaml", home


def plant_dead_lease(client, experiment: str) -> str:
    """The experiment (created if new) with the lease of a driver on another host that stopped
    renewing it ten minutes ago; returns the experiment's id."""
    from sweeps.tracking.lease import TAG_PREFIX, Holder

    exp = client.get_experiment_by_name(experiment)
    eid = exp.experiment_id if exp else client.create_experiment(experiment)
    now = time.time()
    ghost = Holder(TAG_PREFIX + "ghost", "ghost", "sweep", f"sweep {experiment!r}", "ghost",
                   "gone-host", 4242, now - 3600, now - 600, "*")
    client.set_experiment_tag(eid, ghost.tag, ghost.value())
    return eid


def run_both(config: Path, home: Path, ray_dirs: list[Path], env: dict[str, str],
             logs: Path) -> list[tuple[int, str]]:
    """Both drivers started together; (exit code, stderr) of each, in start order."""
    procs = []
    for i, ray_dir in enumerate(ray_dirs):
        full = dict(env, WHICHMODEL_HOME=str(home), WHICHMODEL_RAY_TEMP_DIR=str(ray_dir),
                    PYTHONUNBUFFERED="1")
        full.pop("RAY_ADDRESS", None)
        with open(logs / f"driver{i}.out", "w") as out, open(logs / f"driver{i}.err", "w") as err:
            procs.append(reaped([sys.executable, "-m", "sweeps.cli", "run", str(config),
                                 "--no-report"], env=full, stdout=out, stderr=err))
    try:
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            stop(p)
    return [(code, (logs / f"driver{i}.err").read_text()) for i, code in enumerate(codes)]


def check_outcome(results: list[tuple[int, str]], runs: list[tuple[str, str]],
                  lease_tags: dict[str, str]) -> None:
    """The promises of the module docstring; ``runs``: (pair_key, status) of every pair run."""
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    (_, ran), (_, refused) = sorted(results, key=lambda r: r[0])
    lines = refused.strip().splitlines()
    # the refused driver stopped before its first trial: no progress, no Tune, one line at the end
    assert not any(line.startswith("[whichmodel] probe") for line in lines), refused
    assert "to run" not in refused and "took over" not in refused, refused
    last = lines[-1]
    assert [line for line in lines if line.startswith("whichmodel: error:")] == [last]
    pattern = (rf"^whichmodel: error: sweep 'twice' is already running: \S+@"
               rf"{re.escape(socket.gethostname())} \(pid (\d+)\) has held its lease since "
               r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(experiment 'twice' at .*\); wait for it to "
               r"finish, or pass --force if you know that driver is gone$")
    assert re.match(pattern, last), last
    assert "took over the lease of sweep 'twice' by ghost@gone-host (pid 4242)" in ran, ran
    assert re.search(r"took over the lease .*: expired \d{2,}m\d\ds ago", ran), ran  # >= 10 min
    finished = [key for key, status in runs if status == "FINISHED"]
    assert sorted(finished) == sorted(KEYS) and len(runs) == len(KEYS), runs
    assert lease_tags == {}, lease_tags


def lease_tags(tags: dict[str, str]) -> dict[str, str]:
    from sweeps.tracking.lease import TAG_PREFIX

    return {k: json.loads(v)["label"] for k, v in tags.items() if k.startswith(TAG_PREFIX)}


def environ_without_tracking() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    return env
