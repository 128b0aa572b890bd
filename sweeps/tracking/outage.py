"""When the tracking server is away: the preflight, what counts as an outage, retries.

Only a failure to reach the server -- a refused or reset connection, a timeout, a name that
does not resolve, a 5xx answer (or 401/403/408/429: credentials or a proxy in the way) -- is an
outage worth retrying and spooling (:func:`is_server_problem`). Any other error, a local
``PermissionError`` or a missing file included, is raised at once: spooling it would hide it
until the replay fails the same way.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from whichmodel.errors import WhichModelError
from whichmodel.uri import redact_uri

RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0)  # a pair's log: 5 tries over ~15 s, then the spool
# End of a sweep: wait ~60 s for the server, asking at least every 10 s.
FINAL_DRAIN_DELAYS_S = (2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0, 10.0)
PREFLIGHT_TIMEOUT_S = 5.0  # per request; the preflight makes two
# While retrying ourselves, each MLflow request gives up at once instead of after MLflow's own
# minutes of backoff (its default: 7 retries); a variable the user set is left alone.
FAST_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
# HTTP answers that mean "the server (or what stands before it) cannot take this now"
RETRY_STATUS = (401, 403, 408, 429)


class TrackingUnavailable(WhichModelError):
    """The tracking server cannot be reached, or refuses the credentials."""


def preflight(uri: str, timeout: float = PREFLIGHT_TIMEOUT_S) -> None:
    """A tracking server answers ``/health`` and accepts the credentials; else a clear error.

    The server's own health check (:func:`mlflow_server.health.check`: two requests without
    retries, at most ``2 * timeout`` seconds) with this environment's credentials; other URIs
    pass through.
    """
    if not is_http(uri):
        return
    from mlflow_server.health import check

    health = check(uri, os.environ.get("MLFLOW_TRACKING_USERNAME"),
                   os.environ.get("MLFLOW_TRACKING_PASSWORD"), timeout=timeout,
                   token=os.environ.get("MLFLOW_TRACKING_TOKEN"))
    if not health.ok:
        raise TrackingUnavailable(health.message)


def is_server_problem(exc: BaseException) -> bool:
    """Worth retrying and spooling: the server or the connection to it, not the request itself
    and not this machine (a ``PermissionError`` or a full disk here is no outage)."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, TrackingUnavailable):
        return True
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else 500
        return status >= 500 or status in RETRY_STATUS
    if isinstance(exc, (requests.ConnectionError, requests.Timeout,
                        requests.exceptions.ChunkedEncodingError, ConnectionError, TimeoutError,
                        socket.gaierror)):
        return True
    if isinstance(exc, MlflowException):
        # MLflow wraps a failed request (refused, reset, timed out) as an internal error (500)
        status = exc.get_http_status_code()
        return status >= 500 or status in RETRY_STATUS
    return False


def with_retries(fn: Callable[[], Any], delays: Iterable[float]
                 ) -> tuple[Any, BaseException | None]:
    """``fn()`` again after each delay while the server is the problem: (result, None), or
    (None, the last error). Any other error is raised at once."""
    error = None
    for delay in (*delays, None):
        try:
            with fast_http():
                return fn(), None
        except Exception as exc:
            if not is_server_problem(exc):
                raise
            error = exc
        if delay is not None:
            time.sleep(delay)
    return None, error


@contextlib.contextmanager
def fast_http():
    added = [k for k in FAST_HTTP if k not in os.environ]
    os.environ.update({k: FAST_HTTP[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def spool_record(spool, uri: str, record: dict[str, Any], reason: str) -> None:
    """Keep a pair's record in the spool because the server is away, and say so."""
    path = spool.put({**record, "spooled_at": time.time(), "reason": reason})
    print(f"[whichmodel] MLflow at {redact_uri(uri)} unavailable ({reason}): {record['run_name']} "
          f"kept in the spool ({path}; {len(spool)} waiting), logged once the server answers",
          file=sys.stderr, flush=True)


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def short_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}"
