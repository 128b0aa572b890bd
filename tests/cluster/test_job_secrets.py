"""No secret in Ray's job table: ``whichmodel submit`` with the tracking password and AWS keys set
leaves their values out of the job's runtime env, and the job still reaches the authenticated
MLflow server and S3 with them, read from the secrets file on the nodes.

Ray keeps a job's runtime env in its job table and returns it through the Jobs API and the
dashboard. Here a 2-node Ray cluster on loopback (tests/cluster/raycluster.py, started without
any secret in its environment), the session's tracking stack (PostgreSQL, moto S3, MLflow with
basic auth) and a secrets file of mode 0600 where ``ray up`` would have put it on the nodes
(``WHICHMODEL_SECRETS_FILE``). The job's driver logs to MLflow (the server checks the password)
and writes Tune and sweep state to S3; its trials upload feature caches to S3 (both need the
AWS keys: boto3 and pyarrow refuse to sign without them).
"""

from __future__ import annotations

import json
import re
import secrets
from collections import Counter

import pytest
import requests

from sweeps.cli import main
from tests.cluster import services
from tests.cluster.raycluster import AUTH, LocalCluster, copy_project
from tests.tiny import ZOO, sweep

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_secrets_never_reach_the_job_table_logs_or_params_yet_the_job_uses_them(
        stack, rest, wm_home, tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    copy_project(project)
    (project / "tiny").mkdir()
    (project / "tiny" / "zoo.yaml").write_text(ZOO)
    (project / "tiny" / "secretjob.yaml").write_text(
        sweep("secretjob", tasks="[digits]").replace(
            "report: {max_budget: 3}", "report: {max_budget: 3, choicenet: {enabled: false}}"))
    prefix = f"secretjob-{secrets.token_hex(3)}"
    values = {  # the secrets, set in the submitting shell and in the nodes' file
        "MLFLOW_TRACKING_PASSWORD": stack.password,
        "AWS_ACCESS_KEY_ID": f"wmkeyid{secrets.token_hex(6)}",
        "AWS_SECRET_ACCESS_KEY": f"wm-secret-key-{secrets.token_hex(12)}",
        "AWS_SESSION_TOKEN": f"wm-session-token-{secrets.token_hex(12)}",
    }
    secrets_file = tmp_path / "node" / "secrets.env"
    secrets_file.parent.mkdir()
    secrets_file.touch(mode=0o600)
    secrets_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))

    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", *values):
        monkeypatch.delenv(name, raising=False)
    with LocalCluster(head_cpus=0, workers=1) as cluster:  # nodes without any secret
        monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.tracking_uri)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.username)
        monkeypatch.setenv("AWS_ENDPOINT_URL", stack.s3.endpoint)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("WHICHMODEL_STORAGE", f"s3://{stack.bucket}/{prefix}")
        monkeypatch.setenv("WHICHMODEL_HOME", str(wm_home))
        monkeypatch.setenv("WHICHMODEL_SECRETS_FILE", str(secrets_file))
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        code = main(["submit", str(project / "tiny" / "secretjob.yaml"), "--no-report",
                     "--address", cluster.dashboard_url, "--working-dir", str(project)])
        out, err = capsys.readouterr()
        job = re.search(r"submitted job (\S+) to", out).group(1)

        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(cluster.dashboard_url)
        info = client.get_job_info(job)
        logs = client.get_job_logs(job)
        # What the dashboard shows: the Jobs API's list and the job's own entry.
        headers = {"Authorization": f"Bearer {AUTH['RAY_AUTH_TOKEN']}"}
        api = "".join(requests.get(f"{cluster.dashboard_url}{path}", headers=headers,
                                   timeout=30).text for path in ("/api/jobs/", f"/api/jobs/{job}"))

    assert code == 0, out[-4000:] + err[-2000:]
    assert f"job {job}: SUCCEEDED" in out
    info_text = json.dumps(info.dict(), default=str)  # every field of the job info
    runs = rest.runs("secretjob")
    params = json.dumps([{"params": r["params"], "tags": r["tags"]} for r in runs])
    for name, value in values.items():
        assert value not in info_text, f"{name} in the Jobs API's job info"
        assert value not in api, f"{name} in the dashboard's job list"
        assert value not in logs, f"{name} in the job's logs"
        assert value not in params, f"{name} in the MLflow params or tags"
        assert value not in out + err, f"{name} printed by submit"
    # The submitter names what it kept back; the job got where to read it, not what.
    assert ("secrets:     AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, "
            "MLFLOW_TRACKING_PASSWORD set here, not sent") in out
    assert info.runtime_env["env_vars"]["WHICHMODEL_SECRETS_FILE"] == str(secrets_file)

    # Yet the driver logged to the authenticated server: one finished run per key...
    pairs = services.pair_runs(runs)
    keys = Counter(r["tags"]["pair_key"] for r in pairs)
    assert len(keys) == 4 and set(keys.values()) == {1}  # 2 models x 1 task x 2 protocols
    assert {r["info"]["status"] for r in pairs} == {"FINISHED"}
    # ... and wrote to S3 with the keys, as did the trials (feature caches, from the worker).
    listed = stack.s3.client().list_objects_v2(Bucket=stack.bucket, Prefix=f"{prefix}/")
    objects = [o["Key"] for o in listed.get("Contents", [])]
    assert f"{prefix}/sweeps/secretjob.json" in objects
    assert any(k.startswith(f"{prefix}/tune/") for k in objects)
    assert sum(k.startswith(f"{prefix}/features/secretjob/") and k.endswith(".npz")
               for k in objects) == 2  # one per model: the probes of digits
