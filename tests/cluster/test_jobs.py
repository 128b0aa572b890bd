"""Cluster mode end to end: a tiny sweep submitted as a Ray Job to a real 2-node Ray cluster.

The cluster (tests/cluster/raycluster.py) is two ``ray start`` nodes on this machine in the shape
of cluster.yaml: a head with no CPU for trials and the dashboard (Jobs API) on 127.0.0.1, and a
1-CPU worker. ``whichmodel submit`` uploads a copy of the project as the job's working dir; the
job's driver runs on the head, its trials on the worker; runs land in the SQLite store of the
WHICHMODEL_HOME passed through to the job (both nodes are on this machine, so they share it).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter

import pytest

from sweeps.cli import main
from tests.cluster.raycluster import LocalCluster, copy_project, node_env, tune_trials
from tests.tiny import ZOO, sweep

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SECRET = "wm-test-secret-value-7f3a"  # set where the job is submitted: never printed or sent


@pytest.fixture(scope="module")
def cluster_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    project, home = root / "project", root / "home"
    copy_project(project)
    (project / "tiny").mkdir()
    (project / "tiny" / "zoo.yaml").write_text(ZOO)
    # ChoiceNet is off to keep the report quick; the tests/test_e2e.py sweep covers it.
    (project / "tiny" / "tiny.yaml").write_text(
        sweep("jobs").replace("report: {max_budget: 3}",
                              "report: {max_budget: 3, choicenet: {enabled: false}}"))
    (project / "tiny" / "long.yaml").write_text(sweep("long", tasks="[digits]", steps=100000))

    mp = pytest.MonkeyPatch()
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI"):
        mp.delenv(name, raising=False)
    from tests.cluster.raycluster import AUTH

    for name, value in AUTH.items():  # the client needs the cluster's token
        mp.setenv(name, value)
    mp.setenv("WHICHMODEL_HOME", str(home))
    mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    from sweeps.tune_runner import worker_system_config

    # The cluster.yaml shape: a head that runs drivers only ({"CPU": 0}), a worker for trials.
    cluster = LocalCluster(head_cpus=0, workers=1, system_config=worker_system_config())
    try:
        cluster.start()
        # The zoo, built on the cluster into the shared home folder.
        build = subprocess.run(
            [sys.executable, "-m", "sweeps.cli", "zoo", "build",
             str(project / "tiny" / "zoo.yaml")],
            env=node_env(WHICHMODEL_HOME=str(home), RAY_ADDRESS=cluster.gcs_address),
            capture_output=True, text=True, timeout=300)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
        yield {"cluster": cluster, "project": project, "home": home, "url": cluster.dashboard_url}
    finally:
        cluster.stop()
        mp.undo()


@pytest.fixture(scope="module")
def tiny_job(cluster_env):
    """The tiny sweep submitted once as a job and followed to its end: (job id, stdout, stderr).
    A submission that fails fails every test that reads the job, loudly."""
    import contextlib
    import io

    project = cluster_env["project"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["submit", str(project / "tiny" / "tiny.yaml"), "--address",
                     cluster_env["url"], "--working-dir", str(project)])
    out, err = out.getvalue(), err.getvalue()
    assert code == 0, out[-4000:] + err[-2000:]
    return _job_id(out), out, err


def _job_id(out: str) -> str:
    m = re.search(r"submitted job (\S+) to", out)
    assert m, out
    return m.group(1)


def _client(url: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(url)


def test_submit_runs_the_sweep_as_a_job_and_logs_one_finished_run_per_key(cluster_env, tiny_job):
    job, out, err = tiny_job
    assert f"job {job}: SUCCEEDED" in out
    assert "python -m sweeps.cli run tiny/tiny.yaml" in out
    assert f"whichmodel logs {job} --address {cluster_env['url']} --follow" in out
    # The followed log carries the driver's output, the report included.
    assert "[whichmodel] sweep jobs: 8 (model, task, protocol) keys" in out
    assert "Fine-tune test accuracy" in out
    # Variable names are shown; no value ever is, yet the job got them.
    assert "AWS_SECRET_ACCESS_KEY" in out and "WHICHMODEL_HOME" in out
    assert SECRET not in out + err
    info = _client(cluster_env["url"]).get_job_info(job)
    # A secret stays out of the job table (the nodes' secrets file: test_job_secrets.py).
    assert "AWS_SECRET_ACCESS_KEY" not in info.runtime_env["env_vars"]
    assert SECRET not in str(info)
    assert info.metadata["whichmodel_sweep"] == "jobs"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{cluster_env['home'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name("jobs")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("pair_key")]
    keys = Counter(r.data.tags["pair_key"] for r in runs)
    assert len(keys) == 8 and set(keys.values()) == {1}  # 2 models x 2 tasks x 2 protocols
    assert all(r.info.status == "FINISHED" for r in runs)
    assert any(r.data.tags.get("protocol") == "report" for r in
               client.search_runs([exp.experiment_id], max_results=1000))


def test_the_driver_ran_on_the_head_and_every_trial_on_the_worker(cluster_env, tiny_job):
    cluster = cluster_env["cluster"]
    info = _client(cluster_env["url"]).get_job_info(tiny_job[0])
    assert info.driver_info.node_ip_address == cluster.HEAD_IP
    (experiment,) = (cluster_env["home"] / "tune").glob("jobs-*")
    trials = tune_trials(experiment)
    # 4 probes + 8 fine-tunes (2 learning rates) + 4 early-stop proxies (fine-tune work)
    assert len(trials) == 16
    assert {t["node_ip"] for t in trials} == {cluster.workers[0].ip}
    assert {t["status"] for t in trials} == {"TERMINATED"}


def test_jobs_lists_the_job_and_logs_show_the_report(cluster_env, tiny_job, capsys, monkeypatch):
    job = tiny_job[0]
    # --address wins over the environment (Ray's own client would take the variable).
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:1")
    assert main(["jobs", "--address", cluster_env["url"]]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith(job))
    assert "SUCCEEDED" in line and "python -m sweeps.cli run tiny/tiny.yaml" in line
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line)  # start time
    assert out.splitlines()[0].split() == ["JOB", "STATUS", "START", "ENTRYPOINT"]

    assert main(["logs", job, "--address", cluster_env["url"]]) == 0
    out = capsys.readouterr().out
    assert "Fine-tune test accuracy" in out and "task_agnostic" in out
    assert "8 already finished" not in out  # this log is the first run's, not a re-run


def test_stop_ends_a_long_running_job(cluster_env, capsys):
    project = cluster_env["project"]
    url = cluster_env["url"]
    assert main(["submit", str(project / "tiny" / "long.yaml"), "--address", url,
                 "--working-dir", str(project), "--no-wait"]) == 0
    job = _job_id(capsys.readouterr().out)
    client = _client(cluster_env["url"])
    deadline = time.monotonic() + 120
    while str(client.get_job_status(job)) != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert str(client.get_job_status(job)) == "RUNNING"
    assert main(["stop", job, "--address", cluster_env["url"]]) == 0
    assert f"job {job}: STOPPED" in capsys.readouterr().out
    assert str(client.get_job_status(job)) == "STOPPED"
    # Stopping a stopped job says so, and is not an error.
    assert main(["stop", job, "--address", cluster_env["url"]]) == 0
    assert "nothing to stop" in capsys.readouterr().out


def test_an_unknown_job_is_a_one_line_error(cluster_env, capsys):
    assert main(["logs", "no-such-job", "--address", cluster_env["url"]]) == 2
    err = capsys.readouterr().err
    assert "no job 'no-such-job' on the Ray cluster at" in err and "whichmodel jobs" in err
    assert main(["stop", "no-such-job", "--address", cluster_env["url"]]) == 2
    assert "no job 'no-such-job'" in capsys.readouterr().err


def test_a_malformed_sweep_never_reaches_the_cluster(cluster_env, capsys):
    project = cluster_env["project"]
    bad = project / "tiny" / "bad.yaml"
    bad.write_text(sweep("bad").replace("finetune:", "finetun:"))
    before = len(_client(cluster_env["url"]).list_jobs())
    assert main(["submit", str(bad), "--address", cluster_env["url"],
                 "--working-dir", str(project)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "finetun" in err
    assert len(_client(cluster_env["url"]).list_jobs()) == before


def test_a_client_without_the_clusters_token_is_refused(cluster_env):
    """Ray's servers listen beyond loopback, so the test cluster requires its token. (A fresh
    process: Ray's client reads the token once per process.)"""
    import subprocess
    import sys

    from tests.cluster.raycluster import node_env

    for token in ("0" * 64, None):
        env = node_env()
        if token:
            env["RAY_AUTH_TOKEN"] = token
        else:
            env.pop("RAY_AUTH_TOKEN")
        done = subprocess.run([sys.executable, "-m", "sweeps.cli", "jobs", "--address",
                               cluster_env["url"]], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "whichmodel: error:" in done.stderr and "RAY_AUTH_TOKEN" in done.stderr
        assert "0" * 64 not in done.stderr
