"""``whichmodel run`` against a tracking server it cannot use stops at once, before any trial.

Wrong credentials and an unreachable address each end with one ``whichmodel: error:`` line that
names the server (credentials redacted) and what to check, exit code 2, after the health check's
own requests and no retry (the HTTP requests are counted); no Tune state, no sweep state, no
MLflow experiment or run is written.
"""

from __future__ import annotations

import pytest

from sweeps.cli import main
from tests.http_calls import count_requests
from tests.tiny import sweep

pytestmark = pytest.mark.cluster


def _run(wm_home, monkeypatch, capsys, uri: str, user: str, password: str):
    monkeypatch.setenv("WHICHMODEL_HOME", str(wm_home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    config = wm_home.parent / "preflight.yaml"
    config.write_text(sweep("preflight"))
    capsys.readouterr()
    calls = count_requests(monkeypatch)
    rc = main(["run", str(config), "--reports-dir", str(wm_home.parent / "reports")])
    return rc, capsys.readouterr().err.strip(), calls


def _nothing_written(wm_home, rest=None):
    assert not (wm_home / "tune").exists()  # no Tune experiment, so no trial
    assert not (wm_home / "sweeps").exists()  # no state for 'whichmodel resume'
    assert not (wm_home / "features").exists()  # no probe ran
    assert not (wm_home / "mlflow.db").exists()
    assert not (wm_home.parent / "reports").exists()
    if rest is not None:
        assert rest.experiment_id("preflight") is None  # no experiment, so no run


def test_wrong_password_stops_the_run_before_any_trial(stack, rest, wm_home, monkeypatch, capsys):
    rc, err, calls = _run(wm_home, monkeypatch, capsys, stack.tracking_uri, stack.username,
                          "wrong-password-123")
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("whichmodel: error: MLflow tracking server ")
    assert stack.tracking_uri in err
    assert "401: check MLFLOW_TRACKING_USERNAME/PASSWORD" in err
    assert "wrong-password-123" not in err and stack.password not in err
    # the health check's two requests (/health, then one authenticated read), and no retry
    assert [(m, u.split("?")[0].removeprefix(stack.tracking_uri)) for m, u in calls] == [
        ("GET", "/health"), ("GET", "/api/2.0/mlflow/experiments/search")]
    _nothing_written(wm_home, rest)


def test_unreachable_server_stops_the_run_before_any_trial(stack, wm_home, monkeypatch, capsys):
    from mlflow_server.local import free_port

    port = free_port()
    rc, err, calls = _run(wm_home, monkeypatch, capsys,
                          f"http://admin:url-secret-9@127.0.0.1:{port}", "admin", "whatever-pass")
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert f"MLflow tracking server http://***@127.0.0.1:{port} unreachable" in err
    assert "is the server up? try python -m mlflow_server.health" in err
    assert "url-secret-9" not in err and "whatever-pass" not in err
    assert len(calls) == 1 and calls[0][1].endswith("/health")  # refused once, not retried
    _nothing_written(wm_home)


def test_resume_runs_the_same_preflight(stack, wm_home, monkeypatch, capsys):
    """A sweep state pointing at a server with the wrong password: resume stops before Tune."""
    import json

    config = wm_home.parent / "preflight.yaml"
    config.write_text(sweep("preflight"))
    (wm_home / "sweeps").mkdir()
    (wm_home / "sweeps" / "preflight.json").write_text(json.dumps({
        "config": str(config), "tracking_uri": stack.tracking_uri, "experiment": "preflight",
        "experiment_path": str(wm_home / "tune" / "preflight-x")}))
    monkeypatch.setenv("WHICHMODEL_HOME", str(wm_home))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-123")
    capsys.readouterr()
    assert main(["resume", "preflight", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "401: check MLFLOW_TRACKING_USERNAME/PASSWORD" in err and "resuming" not in err
    assert not (wm_home / "tune").exists()
