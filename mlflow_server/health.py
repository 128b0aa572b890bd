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
from urllib.parse import urlsplit, urlunsplit

import requests

TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Health:
    ok: bool
    message: str


def redact_url(url: str) -> str:
    """Drop ``user:password@`` from a URL."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def check(url: str, username: str | None = None, password: str | None = None,
          timeout: float = TIMEOUT_S) -> Health:
    base, shown = url.rstrip("/"), redact_url(url.rstrip("/"))
    try:
        r = requests.get(f"{base}/health", timeout=timeout)
    except requests.RequestException as exc:
        return Health(False, f"MLflow at {shown}: unreachable ({type(exc).__name__}): is the "
                             "server up, and is this its address and port?")
    if r.status_code != 200:
        return Health(False, f"MLflow at {shown}: /health answered HTTP {r.status_code}: not an "
                             "MLflow server, or not healthy (see its log)")
    auth = (username, password) if username and password else None
    try:
        r = requests.get(f"{base}/api/2.0/mlflow/experiments/search",
                         params={"max_results": 1}, auth=auth, timeout=timeout)
    except requests.RequestException as exc:
        return Health(False, f"MLflow at {shown}: REST API unreachable ({type(exc).__name__})")
    if r.status_code == 401:
        hint = ("not set" if auth is None else f"rejected for user {username!r}")
        return Health(False, f"MLflow at {shown}: 401 Unauthorized: check "
                             f"MLFLOW_TRACKING_USERNAME/PASSWORD (credentials {hint})")
    if r.status_code == 403:
        return Health(False, f"MLflow at {shown}: 403 Forbidden for user {username!r}")
    if r.status_code != 200:
        return Health(False, f"MLflow at {shown}: REST API answered HTTP {r.status_code}: "
                             f"{r.text[:200]}")
    who = f"authenticated as {username!r}" if auth else "no credentials needed"
    return Health(True, f"MLflow at {shown}: ok (/health, REST API {who})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    url = argv[0] if argv else os.environ.get("MLFLOW_TRACKING_URI", "")
    if not url.startswith(("http://", "https://")) or argv[1:]:
        print("usage: python -m mlflow_server.health http(s)://HOST:PORT   (credentials from "
              "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)", file=sys.stderr)
        return 2
    health = check(url, os.environ.get("MLFLOW_TRACKING_USERNAME"),
                   os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    print(health.message, file=sys.stdout if health.ok else sys.stderr)
    return 0 if health.ok else 1


if __name__ == "__main__":
    sys.exit(main())
