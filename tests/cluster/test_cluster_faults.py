"""A worker node killed mid-sweep: its trial fails with the node, Tune retries it
(``resources.max_failures``) on the node that replaces it, and the sweep still ends with exactly
one finished MLflow run per (model, task, protocol). When Tune gives up on the trial early (its
dead actor can fail twice at once), whichmodel runs it again in a retry round.

The cluster has the shape of cluster.yaml: the head runs the job's driver and no trial; one
worker runs the trials until it is SIGKILLed (raylet, agents, trial workers) in the middle of
one; a second worker then joins, as the autoscaler would bring one, and takes over.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter

import pytest

from sweeps.cli import main
from tests.cluster.raycluster import FAST_FAILURE_DETECTION, LocalCluster, copy_project, node_env, tune_trials
from tests.tiny import ZOO, sweep

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_worker_node_killed_mid_sweep_leaves_one_finished_run_per_key(tmp_path, monkeypatch,
                                                                      capsys):
    project, home = tmp_path / "project", tmp_path / "home"
    copy_project(project)
    (project / "tiny").mkdir()
    (project / "tiny" / "zoo.yaml").write_text(ZOO)
    # Fine-tunes of ~2 s, so that the kill lands inside a trial.
    config = sweep("fault", tasks="[digits, count]", steps=200).replace(
        "resources: {probe: {cpus: 1}, finetune: {cpus: 1}}",
        "resources: {probe: {cpus: 1}, finetune: {cpus: 1}, max_failures: 3}")
    assert "max_failures: 3" in config
    (project / "tiny" / "fault.yaml").write_text(config)
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    from tests.cluster.raycluster import AUTH

    for name, value in AUTH.items():  # the client needs the cluster's token
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WHICHMODEL_HOME", str(home))
    from ray.job_submission import JobSubmissionClient

    from sweeps.tune_runner import worker_system_config

    system_config = {**worker_system_config(), **FAST_FAILURE_DETECTION}
    with LocalCluster(head_cpus=0, workers=1, system_config=system_config) as cluster:
        url, first = cluster.dashboard_url, cluster.workers[0]
        build = subprocess.run(
            [sys.executable, "-m", "sweeps.cli", "zoo", "build",
             str(project / "tiny" / "zoo.yaml")],
            env=node_env(WHICHMODEL_HOME=str(home), RAY_ADDRESS=cluster.gcs_address),
            capture_output=True, text=True, timeout=300)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

        assert main(["submit", str(project / "tiny" / "fault.yaml"), "--address", url,
                     "--working-dir", str(project), "--no-report", "--no-wait"]) == 0
        job = re.search(r"submitted job (\S+) to", capsys.readouterr().out).group(1)
        client = JobSubmissionClient(url)
        first_id = cluster.node_id_of(first)
        # Trials run one after another on the worker's one reused actor: once it is up and a
        # second has passed, one is running.
        deadline = time.monotonic() + 180
        while not cluster.trial_actors_on(first_id):
            assert time.monotonic() < deadline, "no trial ever started on the worker node"
            assert str(client.get_job_status(job)) in ("PENDING", "RUNNING")
            time.sleep(0.3)
        time.sleep(1.0)
        cluster.kill_worker(0)
        deadline = time.monotonic() + 60
        while first_id in cluster.alive_node_ids():
            assert time.monotonic() < deadline, "the killed node is still alive for Ray"
            time.sleep(0.5)
        assert str(client.get_job_status(job)) == "RUNNING"  # the driver goes on
        second = cluster.add_worker()

        assert main(["logs", job, "--address", url, "--follow"]) == 0
        out = capsys.readouterr().out
        assert f"job {job}: SUCCEEDED" in out, out[-5000:]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fault")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("pair_key")]
    keys = Counter(r.data.tags["pair_key"] for r in runs)
    assert len(keys) == 8 and set(keys.values()) == {1}  # 2 models x 2 tasks x 2 protocols
    assert all(r.info.status == "FINISHED" for r in runs)
    # Tune's own record: a trial failed with the node and finished on its replacement, either
    # retried by Tune within the experiment or, when Tune gave up on it early, in a retry round.
    (experiment,) = [e for e in (home / "tune").glob("fault-*") if "-retry" not in e.name]
    trials = tune_trials(experiment)
    assert len(trials) == 16  # 4 probes, 8 fine-tunes, 4 early-stop proxies (fine-tune work)
    rounds = [t for e in sorted((home / "tune").glob(f"{experiment.name}-retry*"))
              for t in tune_trials(e)]
    assert all(t["num_failures"] == 0 and t["status"] == "TERMINATED" for t in rounds)
    finished = [t for t in trials + rounds if t["status"] == "TERMINATED"]
    assert Counter(json.dumps(t["job"], sort_keys=True) for t in finished) == Counter(
        json.dumps(t["job"], sort_keys=True) for t in trials)  # each job finished exactly once
    failed = [t for t in trials if t["num_failures"]]
    assert failed and {t["status"] for t in failed} <= {"TERMINATED", "ERROR"}
    retried = [t for t in finished if t["job"] in [f["job"] for f in failed]]
    assert len(retried) == len(failed) and all(t["node_ip"] == second.ip for t in retried)
    assert {t["node_ip"] for t in finished} == {first.ip, second.ip}
