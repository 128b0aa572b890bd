"""Start ``mlflow server`` on PostgreSQL and S3 with basic authentication, in the foreground.

    python -m mlflow_server            # or: python -m mlflow_server.launch

Every setting comes from the environment (``mlflow_server/README.md``; ``settings.py``); a
missing or invalid one stops the launcher before anything starts, with one line naming the
variable(s). Secrets never reach a command line or a log: the backend store URI and the artifact
destination travel as ``mlflow server``'s own environment variables, the admin password and the
secret key stay in the environment, and the auth app's configuration file is written with mode
0600 into a private temporary folder that is removed on exit. SIGINT/SIGTERM stop the server and
its workers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from mlflow_server.settings import ConfigError, ServerConfig, load_settings
from whichmodel.uri import redact_uri

STOP_GRACE_S = 15.0


def write_auth_config(cfg: ServerConfig, folder: Path) -> Path:
    """The basic-auth app's ini file (no admin password: that stays in the environment)."""
    path = Path(folder) / "basic_auth.ini"
    text = ("[mlflow]\n"
            f"default_permission = {cfg.default_permission}\n"
            # configparser interpolates '%': a percent-encoded URI must keep its '%'
            f"database_uri = {with_driver(cfg.auth_database_uri).replace('%', '%%')}\n"
            f"admin_username = {cfg.admin_username}\n"
            f"auth_cache_ttl_seconds = {cfg.auth_cache_ttl_s}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def server_command(cfg: ServerConfig) -> list[str]:
    """``mlflow server`` with auth and proxied artifacts; nothing secret in it."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
           "--host", cfg.host, "--port", str(cfg.port), "--workers", str(cfg.workers),
           "--serve-artifacts"]
    if cfg.allowed_hosts:
        cmd += ["--allowed-hosts", cfg.allowed_hosts]
    return cmd


def with_driver(uri: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1: use psycopg2 when only it is here."""
    import importlib.util

    if (uri.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None
            and importlib.util.find_spec("psycopg2") is not None):
        return "postgresql+psycopg2://" + uri[len("postgresql://"):]
    return uri


def server_env(cfg: ServerConfig, auth_config: Path,
               environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if environ is None else environ)
    env.update(MLFLOW_BACKEND_STORE_URI=with_driver(cfg.backend_store_uri),
               MLFLOW_ARTIFACTS_DESTINATION=cfg.artifacts_destination,
               MLFLOW_AUTH_CONFIG_PATH=str(auth_config),
               MLFLOW_AUTH_ADMIN_USERNAME=cfg.admin_username)
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    # The job runner (LLM judges, trace archival) is not used here: no extra processes.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def describe(cfg: ServerConfig, auth_config: Path) -> str:
    return (f"[mlflow_server] mlflow {' '.join(server_command(cfg)[3:])}\n"
            f"[mlflow_server]   backend store {redact_uri(cfg.backend_store_uri)}, artifacts "
            f"{cfg.artifacts_destination} (proxied; S3 endpoint "
            f"{cfg.s3_endpoint_url or 'AWS'}), auth config {auth_config} (0600), admin user "
            f"{cfg.admin_username!r}")


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """A child gets SIGTERM when its parent dies, even when the parent is killed outright.

    (Linux ties this to the thread that started the child: start servers from a thread that
    lives as long as they should.)"""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run(environ: Mapping[str, str] | None = None, stream=None) -> int:
    """Run the server until it exits or the launcher is told to stop; returns its exit code."""
    stream = stream or sys.stderr
    cfg = load_settings(environ)
    folder = Path(tempfile.mkdtemp(prefix="mlflow-server-"))  # mode 0700
    try:
        auth_config = write_auth_config(cfg, folder)
        print(describe(cfg, auth_config), file=stream, flush=True)
        proc = subprocess.Popen(server_command(cfg), env=server_env(cfg, auth_config, environ),
                                start_new_session=True, preexec_fn=die_with_parent)
        stopping = []

        def forward(signum, _frame):
            stopping.append(signum)
            if group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGTERM)

        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            rc = proc.wait()
        finally:
            stop_group(proc)
            for s, handler in old.items():
                signal.signal(s, handler)
        return 0 if stopping else rc
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_group(proc: subprocess.Popen | None, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to a process group started with ``start_new_session``, a grace period, then
    SIGKILL; waits for the leader."""
    if proc is None:
        return
    if group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()
        if not group_alive(proc.pid):
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    if argv:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: python -m mlflow_server   (configured by environment variables; see "
              "mlflow_server/README.md)", file=sys.stderr)
        return 0 if argv[0] in ("-h", "--help") else 2
    try:
        return run()
    except ConfigError as exc:
        print(f"mlflow_server: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
