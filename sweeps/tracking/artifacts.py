"""Artifacts of finished runs, fetched concurrently and kept on disk.

    fetch_artifacts(tracker, [(run, "predictions/m@t.npz"), ...], cache_dir)

A FINISHED run's artifacts never change, so each is downloaded once, by a pool of ``WORKERS``
threads, into ``<cache_dir>/<run id>/<artifact path>`` (the report passes
``$WHICHMODEL_HOME/cache/artifacts``); a second report downloads nothing. A run that has no such
artifact is remembered too (``<path>.absent``). Runs logged with the ``artifacts`` tag
(:data:`sweeps.tracking.client.ARTIFACTS_TAG`) say what they hold; older ones are listed first.
An artifact the tracking server proxies is one GET of its REST endpoint (MLflow's repository
lists a path before it downloads it: two requests).
Artifacts of a local store are read where they are. One progress line (:class:`ReadProgress`),
never MLflow's progress bars.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sweeps.tracking.outage import is_http

WORKERS = 8  # concurrent downloads: the server proxies each from S3, mostly waiting


def fetch_artifacts(tracker, wanted: list[tuple[Any, str]], cache_dir: Path,
                    stream=None, label: str = "artifacts") -> dict[str, Path | None]:
    """``{run_id: local path, or None where the run has no such artifact}`` of ``(run,
    artifact path)`` pairs (one artifact per run)."""
    from sweeps.tracking.client import ARTIFACTS_TAG

    out: dict[str, Path | None] = {}
    todo, cached = [], 0
    for run, name in wanted:
        run_id = run.info.run_id
        local = local_artifact(run.info.artifact_uri, name)
        tagged = run.data.tags.get(ARTIFACTS_TAG)
        if tagged is not None and name not in tagged.split(","):
            out[run_id] = None
        elif local is not None:
            out[run_id] = local if local.is_file() else None
        elif (cache_dir / run_id / name).is_file():
            out[run_id], cached = cache_dir / run_id / name, cached + 1
        elif (cache_dir / run_id / f"{name}.absent").is_file():
            out[run_id], cached = None, cached + 1
        else:
            todo.append((run, name, tagged is not None))
    if not todo:
        return out
    progress = ReadProgress(f"downloading {label}", len(todo), stream,
                            note=f"{cached} cached" if cached else "")
    cache_dir.mkdir(parents=True, exist_ok=True)
    repos: dict[str, Any] = {}
    lock = threading.Lock()

    def one(item) -> None:
        run, name, listed = item
        out[run.info.run_id] = _download(tracker, run, name, listed, cache_dir, repos, lock)
        progress.step()

    with ThreadPoolExecutor(WORKERS, thread_name_prefix="whichmodel-download") as pool:
        list(pool.map(one, todo))
    progress.done()
    return out


def _download(tracker, run, name: str, listed: bool, target: Path, repos: dict, lock) -> Path | None:
    run_id = run.info.run_id
    root, prefix = shared_root(run.info.artifact_uri, run_id)
    with lock:  # one repository (and its thread pool) per artifact root, not per run
        repo = repos.get(root)
        if repo is None:
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            repo = repos[root] = get_artifact_repository(root, tracking_uri=tracker.uri)
    folder = target / run_id
    if not listed:  # a run from before the artifacts tag: does it hold the artifact?
        parent = name.rsplit("/", 1)[0] if "/" in name else ""
        names = {f.path[len(prefix):].lstrip("/") for f in
                 repo.list_artifacts(f"{prefix}/{parent}".strip("/"))}
        if name not in names:
            absent = folder / f"{name}.absent"
            absent.parent.mkdir(parents=True, exist_ok=True)
            absent.touch()
            return None
    final = folder / name
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        endpoint = proxied_endpoint(run.info.artifact_uri, name)
        if endpoint is not None and is_http(tracker.uri):  # one GET, not a listing and a GET
            got = Path(tmp) / "artifact"
            _get(tracker.uri, endpoint, got)
        else:
            got = Path(repo.download_artifacts(f"{prefix}/{name}".strip("/"), tmp))
        shutil.move(str(got), final)  # same file system: a rename; readers see all or nothing
    return final


def keep_artifacts(cache_dir: Path, run_id: str, record: dict[str, Any],
                   folders: tuple[str, ...] = ("predictions",)) -> None:
    """Put the files of a run just logged from ``record`` into the cache as the run's
    artifacts (a hard link, else a copy): a report on this machine downloads none of them.
    Only ``folders`` (the report reads the predictions; curves and features stay remote)."""
    import os

    from sweeps.tracking.pairs import record_artifacts

    for path, folder in record_artifacts(record):
        target = Path(cache_dir) / run_id / folder / Path(path).name
        if folder not in folders or target.exists() or not Path(path).is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            os.link(path, tmp)
        except OSError:  # another file system
            shutil.copyfile(path, tmp)
        os.replace(tmp, target)


def proxied_endpoint(artifact_uri: str, name: str) -> str | None:
    """The tracking server's REST endpoint of an artifact it proxies (``mlflow-artifacts:/...``,
    as ``mlflow server --serve-artifacts`` stores them); None for any other artifact URI."""
    parts = urlsplit(artifact_uri)
    if parts.scheme != "mlflow-artifacts" or parts.netloc:
        return None
    return f"/api/2.0/mlflow-artifacts/artifacts/{parts.path.strip('/')}/{name}"


def _get(uri: str, endpoint: str, path: Path) -> None:
    """Download one proxied artifact with the client's own credentials (MLflow's)."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.request_utils import augmented_raise_for_status
    from mlflow.utils.rest_utils import http_request

    response = http_request(get_default_host_creds(uri), endpoint, "GET", stream=True)
    augmented_raise_for_status(response)
    with open(path, "wb") as f:
        for chunk in response.iter_content(chunk_size=1 << 20):
            f.write(chunk)


def shared_root(artifact_uri: str, run_id: str) -> tuple[str, str]:
    """(the experiment's artifact root, the run's path under it) for the usual layout
    ``<root>/<run id>/artifacts``; else (the run's artifact URI, "")."""
    marker = f"/{run_id}/artifacts"
    if artifact_uri.rstrip("/").endswith(marker):
        return artifact_uri.rstrip("/")[: -len(marker)], marker.strip("/")
    return artifact_uri, ""


def local_artifact(artifact_uri: str, name: str) -> Path | None:
    """The artifact's path where the run's artifacts are a local folder; None otherwise."""
    parts = urlsplit(artifact_uri)
    if parts.scheme == "file":
        return Path(unquote(parts.path)) / name
    if parts.scheme == "" and artifact_uri.startswith("/"):
        return Path(artifact_uri) / name
    return None


class ReadProgress:
    """One line for a long read: rewritten in place on a terminal, else printed when it starts,
    at most every ``every_s`` seconds, and when it ends."""

    def __init__(self, what: str, total: int, stream=None, every_s: float = 15.0, note: str = ""):
        self.what, self.total, self.note = what, total, note
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s, self.n, self.start = every_s, 0, time.monotonic()
        self._last = self.start
        self._lock = threading.Lock()
        self._print(end="\r" if self.tty else "\n")

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        note = f" ({self.note})" if self.note else ""
        return f"[whichmodel] {self.what} {self.n}/{self.total}{note} | {elapsed:.0f}s"

    def step(self) -> None:
        with self._lock:
            self.n += 1
            now = time.monotonic()
            if self.tty and now - self._last >= 0.2:
                self._last = now
                self._print(end="\r")
            elif not self.tty and now - self._last >= self.every_s:
                self._last = now
                self._print()

    def done(self) -> None:
        self._print()

    def _print(self, end: str = "\n") -> None:
        print(self.line(), file=self.stream, end=end, flush=True)
