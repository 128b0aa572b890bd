"""``whichmodel submit`` before any cluster is involved: which variables travel to the job, what
the job runs, and the one-line errors for a sweep file outside the working dir, a malformed one
(never submitted), a missing variable, no address and an unreachable cluster."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sweeps.cli import main
from sweeps.cluster.jobs import (
    WORKING_DIR_EXCLUDES,
    Cluster,
    describe_submission,
    job_env,
    plan_submission,
    resolve_address,
    withheld_secrets,
)
from tests.cluster.raycluster import free_port
from tests.tiny import ZOO, sweep
from whichmodel.errors import WhichModelError

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]


def test_job_env_passes_the_allow_list_and_named_variables_only():
    environ = {
        "MLFLOW_TRACKING_URI": "https://mlflow.internal", "MLFLOW_TRACKING_PASSWORD": "pw",
        "AWS_SECRET_ACCESS_KEY": "k", "AWS_ENDPOINT_URL": "http://minio:9000",
        "MLFLOW_S3_ENDPOINT_URL": "http://minio:9000", "HF_HUB_OFFLINE": "1",
        "WHICHMODEL_HOME": "/mnt/wm", "TUNE_MAX_PENDING_TRIALS_PG": "4",
        # Never: the submitter's Ray address and token, unrelated secrets, the local shell.
        "RAY_ADDRESS": "http://127.0.0.1:8265", "RAY_API_SERVER_ADDRESS": "x",
        "RAY_AUTH_TOKEN": "t", "GITHUB_TOKEN": "g", "HOME": "/root", "PATH": "/bin",
        "MY_FLAG": "on",
    }
    env = job_env(["MY_FLAG"], environ)
    # Secrets (the tracking password, AWS keys) are left out: Ray keeps the runtime env in its
    # job table (tests/cluster/test_job_secrets.py runs a job without them).
    assert set(env) == {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL",
                        "HF_HUB_OFFLINE", "WHICHMODEL_HOME", "TUNE_MAX_PENDING_TRIALS_PG",
                        "MY_FLAG"}
    assert env["MY_FLAG"] == "on"
    assert withheld_secrets(environ) == ["AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"]
    with pytest.raises(WhichModelError, match="--env NOT_SET: not set in this environment"):
        job_env(["NOT_SET"], environ)
    with pytest.raises(WhichModelError, match="never from the command line"):
        job_env(["MY_FLAG=on"], environ)
    for name in ("GITHUB_TOKEN", "MY_DB_PASSWORD", "AWS_SECRET_ACCESS_KEY"):
        with pytest.raises(WhichModelError, match=f"--env {name}: a secret never goes into the "
                                                  "job's runtime env"):
            job_env([name], environ | {name: "x"})
    assert job_env(["WHICHMODEL_SECRETS_FILE"], {"WHICHMODEL_SECRETS_FILE": "/s"}) == {
        "WHICHMODEL_SECRETS_FILE": "/s"}  # a file's place is no secret
    with pytest.raises(WhichModelError, match="MLFLOW_TRACKING_URI: its address carries a password"):
        job_env([], {"MLFLOW_TRACKING_URI": "https://me:hunter2@mlflow.internal"})
    assert job_env([], {"MLFLOW_TRACKING_URI": "https://me@mlflow.internal"}) == {
        "MLFLOW_TRACKING_URI": "https://me@mlflow.internal"}  # a user name alone is no secret


def test_a_packaged_sweep_runs_from_the_project_root_with_its_relative_path():
    sub = plan_submission(REPO / "sweeps" / "configs" / "quickstart.yaml", environ={})
    assert sub.working_dir == REPO
    assert shlex.split(sub.entrypoint) == ["python", "-m", "sweeps.cli", "run",
                                           "sweeps/configs/quickstart.yaml"]
    assert re.fullmatch(r"whichmodel-quickstart-\d{8}-\d{6}-[0-9a-f]{4}", sub.submission_id)
    env = sub.runtime_env
    assert env["working_dir"] == str(REPO) and env["env_vars"] == {}
    assert env["worker_process_setup_hook"] == "sweeps.cluster.node_secrets.load_secrets"
    assert {".venv", ".git", ".whichmodel", "reports", "*.db"} <= set(env["excludes"])
    assert env["excludes"] == WORKING_DIR_EXCLUDES
    assert sub.metadata == {"whichmodel_sweep": "quickstart",
                            "whichmodel_config": "sweeps/configs/quickstart.yaml"}
    no_report = plan_submission(REPO / "sweeps" / "configs" / "quickstart.yaml", environ={},
                                no_report=True)
    assert no_report.entrypoint.endswith(" --no-report")


def test_the_summary_names_variables_and_never_shows_a_value(tmp_path):
    (tmp_path / "zoo.yaml").write_text(ZOO)
    (tmp_path / "s.yaml").write_text(sweep("s"))
    sub = plan_submission(tmp_path / "s.yaml", working_dir=tmp_path,
                          environ={"MLFLOW_TRACKING_URI": "https://mlflow.example/hunter2",
                                   "AWS_SECRET_ACCESS_KEY": "hunter3"})
    text = describe_submission(sub, "whichmodel-s-1", "http://127.0.0.1:8265")
    assert "environment: MLFLOW_TRACKING_URI (values not shown)" in text
    assert "secrets:     AWS_SECRET_ACCESS_KEY set here, not sent" in text
    assert "hunter2" not in text and "hunter3" not in text and "hunter" not in repr(sub)
    assert "whichmodel logs whichmodel-s-1 --address http://127.0.0.1:8265 --follow" in text


def test_files_outside_the_working_dir_or_missing_are_named(tmp_path):
    (tmp_path / "project").mkdir()
    (tmp_path / "zoo.yaml").write_text(ZOO)
    (tmp_path / "outside.yaml").write_text(sweep("outside"))
    with pytest.raises(WhichModelError, match=r"outside\.yaml: the sweep file .* is outside the "
                                              r"job's working dir"):
        plan_submission(tmp_path / "outside.yaml", working_dir=tmp_path / "project", environ={})
    # The sweep file is inside, but its zoo file is not: the job could not read it.
    (tmp_path / "project" / "s.yaml").write_text(sweep("s").replace("zoo: zoo.yaml",
                                                                    "zoo: ../zoo.yaml"))
    with pytest.raises(WhichModelError, match="key 'zoo': the zoo file .* is outside"):
        plan_submission(tmp_path / "project" / "s.yaml", working_dir=tmp_path / "project",
                        environ={})
    with pytest.raises(WhichModelError, match=r"missing\.yaml: no such sweep file"):
        plan_submission(tmp_path / "missing.yaml", working_dir=tmp_path, environ={})


def test_a_malformed_sweep_is_refused_before_any_cluster_is_contacted(tmp_path, capsys):
    (tmp_path / "zoo.yaml").write_text(ZOO)
    (tmp_path / "bad.yaml").write_text(sweep("bad").replace("finetune:", "finetun:"))
    # The address leads nowhere: the error must be the sweep file's, found first.
    assert main(["submit", str(tmp_path / "bad.yaml"), "--working-dir", str(tmp_path),
                 "--address", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("whichmodel: error: ") and "bad.yaml" in err and "finetun" in err
    assert "cannot reach" not in err


def test_no_address_and_an_unreachable_cluster_are_one_line_errors(tmp_path, monkeypatch,
                                                                    capsys):
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert main(["jobs"]) == 2
    assert "no Ray cluster given: pass --address" in capsys.readouterr().err
    port = free_port()
    for cmd in (["jobs"], ["logs", "some-job"], ["stop", "some-job"]):
        assert main([*cmd, "--address", f"http://127.0.0.1:{port}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert f"cannot reach the Ray dashboard at http://127.0.0.1:{port}" in err
    assert main(["jobs", "--address", f"127.0.0.1:{port}"]) == 2  # a GCS address
    assert "cannot reach the Ray cluster (GCS) at" in capsys.readouterr().err


def test_an_explicit_address_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://from-ray-address:8265")
    assert resolve_address(None) == "http://from-ray-address:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://from-api-server:8265/")
    assert resolve_address(None) == "http://from-api-server:8265"
    assert resolve_address("http://given:8265") == "http://given:8265"
    port = free_port()
    with pytest.raises(WhichModelError, match=f"http://127.0.0.1:{port}"):
        Cluster(f"http://127.0.0.1:{port}")


def test_the_nodes_secrets_file_fills_what_is_unset_and_must_be_private(tmp_path, capsys,
                                                                        monkeypatch):
    from sweeps.cluster.node_secrets import load_secrets

    path = tmp_path / "secrets.env"
    path.write_text("# the nodes' secrets\n\nexport MLFLOW_TRACKING_PASSWORD='pw 1'\n"
                    "AWS_SECRET_ACCESS_KEY=k=2\nAWS_SESSION_TOKEN=\"t3\"\n")
    path.chmod(0o600)
    environ = {"WHICHMODEL_SECRETS_FILE": str(path), "AWS_SESSION_TOKEN": "set-here"}
    assert load_secrets(environ) == ["MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY"]
    assert environ["MLFLOW_TRACKING_PASSWORD"] == "pw 1" and environ["AWS_SECRET_ACCESS_KEY"] == "k=2"
    assert environ["AWS_SESSION_TOKEN"] == "set-here"  # the process's own environment wins
    path.chmod(0o640)
    with pytest.raises(WhichModelError, match=f"{path}: secrets file readable by others .* "
                                              f"chmod 600 {path}"):
        load_secrets({"WHICHMODEL_SECRETS_FILE": str(path)})
    path.chmod(0o600)
    path.write_text("MLFLOW_TRACKING_PASSWORD hunter2\n")
    with pytest.raises(WhichModelError, match=r"line 1: write NAME=VALUE") as exc:
        load_secrets({"WHICHMODEL_SECRETS_FILE": str(path)})
    assert "hunter2" not in str(exc.value)
    with pytest.raises(WhichModelError, match="WHICHMODEL_SECRETS_FILE=.*missing.env: no such file"):
        load_secrets({"WHICHMODEL_SECRETS_FILE": str(tmp_path / "missing.env")})
    # Any whichmodel command on a node reads it first: a bad file is a one-line error, exit 2.
    path.chmod(0o644)
    monkeypatch.setenv("WHICHMODEL_SECRETS_FILE", str(path))
    assert main(["jobs", "--address", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "secrets file readable by others" in err
