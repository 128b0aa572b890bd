"""The skip check's read: which pair runs there are, their status and end time, and their tags.

``whichmodel run`` needs no metric or param to know which (model, task, protocol) keys are
finished, nor does a report to know that nothing changed since the last one. Against a tracking
server, MLflow's GraphQL endpoint (``/graphql``, which its own UI reads runs through) returns
only the fields asked for: a pair run's id, status, end time and tags, a tenth of the bytes
``runs/search`` returns with every metric and param (measured: README, "Benchmarks"). The same
search filter (``tags.pair_key IS NOT NULL``), the same credentials (MLflow's own,
:func:`mlflow.utils.credentials.get_default_host_creds`). A local store, or a server that has no
``/graphql``, is read with the full search instead.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

QUERY = """query whichmodelPairKeys($input: MlflowSearchRunsInput) {
  mlflowSearchRuns(input: $input) {
    runs { info { runId status startTime endTime } data { tags { key value } } }
    nextPageToken
  }
}"""
PAGE = 5000
# A server builds every run it returns from its database row by row, in Python: one search is
# one server worker's work. Sixteen searches, one per first hex digit of the run id (MLflow's
# run ids are uuid4 hex), by READERS threads, keep every worker busy.
RUN_ID_PARTS = tuple(f"attributes.run_id LIKE '{c}%'" for c in "0123456789abcdef")
READERS = 8


@dataclass(frozen=True)
class PairKey:
    """A pair run without its metrics and params."""

    run_id: str
    status: str
    end_time: int | None
    tags: dict[str, str] = field(default_factory=dict)
    start_time: int | None = None

    @classmethod
    def of(cls, run) -> PairKey:
        """The lean view of a full run (``mlflow.entities.Run``)."""
        return cls(run.info.run_id, run.info.status, run.info.end_time, dict(run.data.tags),
                   run.info.start_time)


def partitioned(search: Callable[[str], list], filter_string: str,
                order: Callable[[Any], tuple]) -> list:
    """``search(filter)`` over the 16 run-id partitions at once, merged newest first by
    ``order(run)`` -> (start time, run id), as one search orders them."""
    with ThreadPoolExecutor(READERS, thread_name_prefix="whichmodel-read") as pool:
        parts = pool.map(lambda part: search(f"{filter_string} and {part}"), RUN_ID_PARTS)
        runs = [run for part in parts for run in part]
    return sorted(runs, key=order, reverse=True)


def lean_pair_runs(uri: str, experiment_id: str, filter_string: str) -> list[PairKey] | None:
    """The experiment's runs matching ``filter_string``, lean, through the server's GraphQL
    endpoint (:func:`partitioned`); None when ``uri`` is no server or the server has no GraphQL
    endpoint."""
    from sweeps.tracking.outage import is_http

    if not is_http(uri):
        return None
    try:
        return partitioned(lambda f: _graphql_runs(uri, experiment_id, f), filter_string,
                           lambda r: (r.start_time or 0, r.run_id))
    except NoGraphQL:
        return None


class NoGraphQL(Exception):
    """The server answers ``/graphql`` with no MLflow schema of runs."""


def _graphql_runs(uri: str, experiment_id: str, filter_string: str) -> list[PairKey]:
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    out, token = [], None
    while True:
        query: dict[str, Any] = {"experimentIds": [experiment_id], "filter": filter_string,
                                 "maxResults": PAGE}
        if token:
            query["pageToken"] = token
        response = http_request(creds, "/graphql", "POST",
                                json={"query": QUERY, "variables": {"input": query}})
        if response.status_code in (404, 405):  # not an MLflow server with GraphQL
            raise NoGraphQL(response.status_code)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):  # a schema other than this MLflow's
            raise NoGraphQL(str(body["errors"])[:200])
        page = (body.get("data") or {}).get("mlflowSearchRuns") or {}
        for run in page.get("runs") or []:
            info = run["info"]
            tags = {t["key"]: t["value"] for t in (run.get("data") or {}).get("tags") or []}
            start, end = info.get("startTime"), info.get("endTime")
            out.append(PairKey(info["runId"], info["status"], int(end) if end else None, tags,
                               int(start) if start else None))
        token = page.get("nextPageToken")
        if not token:
            return out
