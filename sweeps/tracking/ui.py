"""How whichmodel's runs look in MLflow's store and UI (MLflow 3.17).

- The experiment is tagged ``mlflow.experimentKind`` = ``custom_model_development``
  (:data:`EXPERIMENT_KIND_TAG`), which the UI reads to show a model-training experiment;
- every UI address whichmodel prints (:func:`ui_url`) carries ``workflowType=machine_learning``:
  the UI's GenAI / model-training switch is a global setting taken from that URL parameter (and
  remembered by the browser), so the experiment opens on its runs table, not on GenAI traces;
- each pair run has its task as a dataset input (:func:`log_task_dataset`): the runs table's
  Datasets column and its dataset filter;
- a local SQLite store runs in write-ahead mode (:func:`sqlite_write_ahead`).
"""

from __future__ import annotations

from typing import Any

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
WORKFLOW_PARAM = "workflowType=machine_learning"


def ui_url(server: str, experiment_id: str | None = None) -> str:
    """The MLflow UI's address of an experiment's runs table (or of the experiments list),
    in the model-training view: ``http://127.0.0.1:5000/#/experiments/3/runs?workflowType=
    machine_learning``. ``server`` is the UI's base address (credentials are not kept)."""
    from whichmodel.uri import redact_uri

    base = redact_uri(server).rstrip("/")
    page = f"experiments/{experiment_id}/runs" if experiment_id else "experiments"
    return f"{base}/#/{page}?{WORKFLOW_PARAM}"


def log_task_dataset(client, run_id: str, dataset: dict[str, str]) -> None:
    """Log a task (``sweeps.tracking.recorder.task_dataset``: name, digest, source_type, source, context)
    as the run's dataset input; MLflow keeps one dataset per name and digest in an experiment."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    entity = Dataset(dataset["name"], dataset["digest"], dataset["source_type"], dataset["source"])
    context = [InputTag("mlflow.data.context", dataset["context"])] if dataset.get("context") else []
    client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=context)])


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    import sqlite3

    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def sqlite_write_ahead() -> None:
    """A local SQLite store in write-ahead mode with synchronous=NORMAL: a pair's log commits
    without an fsync per transaction (9 ms instead of 14 ms a run here; durable across a process
    crash, and the last commits only may be lost to a power cut, which the sweep's resume
    re-runs). Readers (the MLflow UI, a report) do not block the sweep's writes."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", sqlite_pragmas):
        event.listen(Engine, "connect", sqlite_pragmas)
