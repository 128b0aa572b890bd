"""Trial actors start on Ray's idle, preloaded workers, not on fresh ones.

Tune would give every trial actor a runtime env (``PL_DISABLE_FORK``) that Ray's idle workers
lack, so each experiment's first trials waited for a new worker to start and import torch and
Lightning (5.5 s here). ``sweeps.tune_runner`` moves the variable into the nodes' environment.

The check runs as ``whichmodel run`` does, in a process of its own that starts a fresh local Ray
(``init_ray``): the session's Ray has had its prestarted workers used up by earlier tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker_facts(job, settings, report):
    import psutil

    from sweeps.tune_runner import PRELOAD_MODULES

    return {"pid": os.getpid(), "created": psutil.Process().create_time(),
            "preloaded": all(m in sys.modules for m in PRELOAD_MODULES),
            "pl_disable_fork": os.environ.get("PL_DISABLE_FORK")}


class _Sink:
    def __init__(self):
        self.errors = []

    def on_result(self, job, metrics):
        pass

    def on_error(self, job, error):
        self.errors.append(error)


def _driver(out: Path) -> None:
    """A sweep's driver: a fresh local Ray, its workers warm, then one trial."""
    from sweeps.plan import Job
    from sweeps.tune_runner import TrialResources, init_ray, run_jobs, settled_idle_workers

    init_ray(2)
    idle = settled_idle_workers()
    called, sink = time.time(), _Sink()
    done = run_jobs(worker_facts, [Job("x", "m")], None, name="warm",
                    storage_path=out.parent / "tune", sink=sink,
                    resources=TrialResources({"x": (1, 0)}))
    out.write_text(json.dumps({"idle": sorted(idle), "called": called, "errors": sink.errors,
                               "facts": [m for _, m in done]}))


def test_trial_actor_runs_on_an_idle_preloaded_worker_with_pl_disable_fork(tmp_path):
    out = tmp_path / "facts.json"
    ray_dir = tempfile.mkdtemp(prefix="wmw-", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "PYTHONPATH": str(REPO), "WHICHMODEL_RAY_TEMP_DIR": ray_dir}
    env.pop("RAY_ADDRESS", None)
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.test_tune_workers", str(out)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["errors"] == [] and len(got["facts"]) == 1
    facts = got["facts"][0]
    assert facts["pid"] in got["idle"] and facts["created"] < got["called"]
    assert facts["preloaded"] and facts["pl_disable_fork"] == "1"


if __name__ == "__main__":
    _driver(Path(sys.argv[1]))


def test_trial_configs_hold_each_job_as_one_json_string_read_back_as_the_job():
    # Tune rebuilds and deep-copies the search space per generated trial: with the jobs as dicts
    # that was quadratic (minutes before the first of the paper's 5,472 trials); as strings,
    # each trial's copy is a list of references
    from ray import tune
    from ray.tune.impl.placeholder import create_resolvers_map, inject_placeholders
    from ray.tune.search.variant_generator import generate_variants

    from sweeps.plan import Job
    from sweeps.tune_runner import config_job, job_key

    jobs = [Job("finetune", f"m{i}", "t", runs=((0.01, i),)) for i in range(300)]
    space = inject_placeholders({"job": tune.grid_search([job_key(j) for j in jobs])},
                                create_resolvers_map())
    configs = [spec["job"] for _, spec in generate_variants(space)]
    assert all(isinstance(c, str) for c in configs)
    assert [config_job(c) for c in configs] == jobs
    assert config_job(jobs[3].to_dict()) == jobs[3]  # experiments saved before: dicts
