"""Is the tracking server up, and do my credentials work?

    python -m mlflow_server.health http://127.0.0.1:5000

Two checks: ``GET /health`` (no credentials needed), then an authenticated REST call
(``experiments/search``) with ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``. Exit 0
and one ``ok`` line when both pass; otherwise exit 1 and one line saying what failed and what to
check. The password is never printed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import requests

from whichmodel.uri import redact_uri

TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Health:
    ok: bool
    message: str


def check(url: str, username: str | None = None, password: str | None = None,
          timeout: float = TIMEOUT_S, token: str | None = None) -> Health:
    """The server answers ``/health`` and accepts the credentials (basic auth, else a bearer
    ``token``): two requests, no retries. The message names the server (credentials redacted)
    and what to check; the password never appears in it."""
    base, shown = url.rstrip("/"), redact_uri(url.rstrip("/"))
    try:
        r = requests.get(f"{base}/health", timeout=timeout)
    except requests.RequestException as exc:
        return Health(False, f"MLflow tracking server {shown} unreachable ({type(exc).__name__}):"
                             f" is the server up? try python -m mlflow_server.health {shown}")
    if r.status_code != 200:
        return Health(False, f"MLflow tracking server {shown}: /health answered HTTP "
                             f"{r.status_code}: is this an MLflow server? (see its log)")
    auth = (username, password) if username and password else None
    headers = {"Authorization": f"Bearer {token}"} if token and not auth else {}
    try:
        r = requests.get(f"{base}/api/2.0/mlflow/experiments/search",
                         params={"max_results": 1}, auth=auth, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        return Health(False, f"MLflow tracking server {shown}: REST API unreachable "
                             f"({type(exc).__name__})")
    if r.status_code == 401:
        given = f"rejected for user {username!r}" if auth else "not set"
        return Health(False, f"MLflow tracking server {shown}: 401: check "
                             f"MLFLOW_TRACKING_USERNAME/PASSWORD (credentials {given})")
    if r.status_code == 403:
        return Health(False, f"MLflow tracking server {shown}: 403: user {username!r} may not "
                             "read experiments; ask the server's admin for permission")
    if r.status_code != 200:
        return Health(False, f"MLflow tracking server {shown}: REST API answered HTTP "
                             f"{r.status_code}: {r.text[:200]}")
    who = f"authenticated as {username!r}" if auth else "no credentials needed"
    return Health(True, f"MLflow tracking server {shown}: ok (/health, REST API {who})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    url = argv[0] if argv else os.environ.get("MLFLOW_TRACKING_URI", "")
    if not url.startswith(("http://", "https://")) or argv[1:]:
        print("usage: python -m mlflow_server.health http(s)://HOST:PORT   (credentials from "
              "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)", file=sys.stderr)
        return 2
    health = check(url, os.environ.get("MLFLOW_TRACKING_USERNAME"),
                   os.environ.get("MLFLOW_TRACKING_PASSWORD"),
                   token=os.environ.get("MLFLOW_TRACKING_TOKEN"))
    print(health.message, file=sys.stdout if health.ok else sys.stderr)
    return 0 if health.ok else 1


if __name__ == "__main__":
    sys.exit(main())
