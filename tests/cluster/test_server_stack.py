"""The tracking server of cluster mode: PostgreSQL + S3 (moto) + MLflow with basic auth.

An authenticated client logs a run with a metric and an artifact; the run is read back through
MLflow's REST API, the artifact found in the bucket with boto3; requests without credentials get
401; the health check passes, and fails for wrong credentials or no server; the launcher refuses
to start without its secrets, keeps them off command lines and logs, and its README documents
every setting.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.cluster import services

pytestmark = pytest.mark.cluster


def _health(url: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "mlflow_server.health", url], env=full,
                          cwd=services.REPO, capture_output=True, text=True, timeout=60)


def test_authenticated_client_logs_a_run_read_back_over_rest_with_its_artifact_in_s3(
        stack, rest, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    for k, v in stack.client_env().items():
        monkeypatch.setenv(k, v)
    client = MlflowClient(stack.tracking_uri)
    exp_id = client.create_experiment("stack-check")
    run = client.create_run(exp_id, run_name="m@t:probe", tags={"pair_key": "m|t|probe"})
    client.log_metric(run.info.run_id, "proxy/knn", 0.75)
    (tmp_path / "notes.txt").write_text("hello from the artifact store\n")
    client.log_artifact(run.info.run_id, str(tmp_path / "notes.txt"), artifact_path="report")
    client.set_terminated(run.info.run_id, "FINISHED")

    runs = rest.runs("stack-check")
    assert [r["info"]["run_name"] for r in runs] == ["m@t:probe"]
    assert runs[0]["info"]["status"] == "FINISHED"
    assert runs[0]["metrics"] == {"proxy/knn": 0.75}
    assert runs[0]["tags"]["pair_key"] == "m|t|probe"
    listed = rest.get("artifacts/list", run_id=run.info.run_id, path="report").json()
    assert [f["path"] for f in listed["files"]] == ["report/notes.txt"]

    # Proxied: the server wrote it to the bucket under the configured prefix.
    keys = [o["Key"] for o in stack.s3.client().list_objects_v2(
        Bucket=stack.bucket, Prefix=stack.prefix).get("Contents", [])]
    expected = f"{stack.prefix}/{exp_id}/{run.info.run_id}/artifacts/report/notes.txt"
    assert expected in keys, keys
    body = stack.s3.client().get_object(Bucket=stack.bucket, Key=expected)["Body"].read()
    assert body == b"hello from the artifact store\n"


def test_requests_without_or_with_wrong_credentials_get_401(stack, rest):
    url = f"{stack.tracking_uri}/api/2.0/mlflow/experiments/search"
    assert requests.get(url, params={"max_results": 1}, timeout=10).status_code == 401
    assert requests.get(url, params={"max_results": 1}, auth=(stack.username, "wrong-password-1"),
                        timeout=10).status_code == 401
    assert rest.get("experiments/search", max_results=1).status_code == 200


def test_health_check_passes_and_fails_for_wrong_credentials_or_no_server(stack):
    from mlflow_server.local import free_port

    ok = _health(stack.tracking_uri, MLFLOW_TRACKING_USERNAME=stack.username,
                 MLFLOW_TRACKING_PASSWORD=stack.password)
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout and stack.password not in ok.stdout + ok.stderr

    wrong = _health(stack.tracking_uri, MLFLOW_TRACKING_USERNAME=stack.username,
                    MLFLOW_TRACKING_PASSWORD="not-the-password")
    assert wrong.returncode == 1
    assert "401" in wrong.stderr and "MLFLOW_TRACKING_USERNAME/PASSWORD" in wrong.stderr
    assert "not-the-password" not in wrong.stderr

    missing = _health(stack.tracking_uri)
    assert missing.returncode == 1 and "not set" in missing.stderr

    down = _health(f"http://127.0.0.1:{free_port()}", MLFLOW_TRACKING_USERNAME=stack.username,
                   MLFLOW_TRACKING_PASSWORD=stack.password)
    assert down.returncode == 1 and "unreachable" in down.stderr


def test_secrets_stay_off_command_lines_and_logs_and_the_auth_config_is_private(stack):
    server_secrets = [stack.password, stack.server_secrets["MLFLOW_FLASK_SERVER_SECRET_KEY"],
                      stack.server_secrets["PGPASSWORD"]]
    pids = services.processes_mentioning("mlflow")
    assert pids, "no MLflow server process found"
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert not any(s in cmdline for s in server_secrets), f"a secret in pid {pid}'s cmdline"
    logs = stack.mlflow_log.read_text() + (stack.root / "postgres.log").read_text()
    assert not any(s in logs for s in server_secrets)
    config = re.findall(r"auth config (\S+basic_auth\.ini) \(0600\)", stack.mlflow_log.read_text())
    assert config, "the launcher did not say where its auth config is"
    mode = Path(config[-1]).stat().st_mode & 0o777
    assert mode == 0o600 and (Path(config[-1]).parent.stat().st_mode & 0o077) == 0
    assert "admin_password" not in Path(config[-1]).read_text()


@pytest.mark.parametrize("drop, expected", [
    ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD is not set"),
    ("MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_FLASK_SERVER_SECRET_KEY is not set"),
    ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_BACKEND_STORE_URI is not set"),
])
def test_launcher_refuses_to_start_without_a_required_setting(drop, expected):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PGPASSWORD"))}
    env.update(MLFLOW_BACKEND_STORE_URI="postgresql://mlflow@127.0.0.1:1/mlflow",
               MLFLOW_ARTIFACTS_DESTINATION="s3://bucket/prefix",
               MLFLOW_AUTH_ADMIN_PASSWORD="a-long-enough-password",
               MLFLOW_FLASK_SERVER_SECRET_KEY="k" * 32)
    del env[drop]
    r = subprocess.run([sys.executable, "-m", "mlflow_server"], env=env, cwd=services.REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("mlflow_server: error:") and expected in r.stderr
    assert "a-long-enough-password" not in r.stderr


def test_launcher_refuses_a_short_admin_password_and_other_stores():
    from mlflow_server.settings import ConfigError, load_settings

    base = {"MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow@db:5432/mlflow",
            "MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/p",
            "MLFLOW_AUTH_ADMIN_PASSWORD": "pw-x7q", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k"}
    with pytest.raises(ConfigError, match="MLFLOW_AUTH_ADMIN_PASSWORD is too short") as err:
        load_settings(base)
    assert "pw-x7q" not in str(err.value)
    with pytest.raises(ConfigError, match="must be a postgresql:// URI.*://\\*\\*\\*@"):
        load_settings({**base, "MLFLOW_AUTH_ADMIN_PASSWORD": "x" * 12,
                       "MLFLOW_BACKEND_STORE_URI": "mysql://u:topsecret@db/m"})
    with pytest.raises(ConfigError, match="MLFLOW_ARTIFACTS_DESTINATION must be s3://"):
        load_settings({**base, "MLFLOW_AUTH_ADMIN_PASSWORD": "x" * 12,
                       "MLFLOW_ARTIFACTS_DESTINATION": "/var/artifacts"})
    cfg = load_settings({**base, "MLFLOW_AUTH_ADMIN_PASSWORD": "x" * 12})
    assert (cfg.host, cfg.port, cfg.admin_username) == ("127.0.0.1", 5000, "admin")


def test_readme_documents_every_setting_in_one_table():
    from mlflow_server.settings import settings_table

    readme = (services.REPO / "mlflow_server" / "README.md").read_text()
    assert settings_table() in readme
