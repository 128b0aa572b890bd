"""Where the embedded default keeps things: one home folder (``WHICHMODEL_HOME``).

``$WHICHMODEL_HOME`` (default ``~/.cache/whichmodel``; the Makefile uses ``./.whichmodel``) holds
``data/`` (the offline task suite and source families), ``zoo/`` (one folder per model:
``model.safetensors`` + ``meta.json``), ``tune/`` (Ray Tune experiment state), ``mlflow.db``
and ``mlartifacts/`` (the local MLflow store). ``MLFLOW_TRACKING_URI`` or ``--tracking-uri``
points tracking elsewhere; ``WHICHMODEL_STORAGE=s3://...`` puts Tune state, sweep state files and
feature caches on S3 (:mod:`sweeps.storage`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def data_root(self) -> Path:
        return self.home / "data"

    @property
    def zoo_root(self) -> Path:
        return self.home / "zoo"

    @property
    def storage(self) -> str | None:
        """``WHICHMODEL_STORAGE`` (s3://...): shared sweep state, see :mod:`sweeps.storage`."""
        from sweeps.storage import storage_uri

        return storage_uri()

    @property
    def tune_root(self) -> Path | str:
        """Ray Tune's experiment state: ``<storage>/tune`` when shared, else under home."""
        return f"{self.storage}/tune" if self.storage else self.home / "tune"

    @property
    def state_root(self) -> Path:
        """Sweep state files (``<name>.json``), always kept here; mirrored to shared storage."""
        return self.home / "sweeps"

    @property
    def artifacts_root(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def default_tracking_uri(self) -> str:
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    def tracking_uri(self, override: str | None = None) -> str:
        return override or os.environ.get("MLFLOW_TRACKING_URI") or self.default_tracking_uri


def default_paths(home: str | os.PathLike | None = None) -> Paths:
    home = home or os.environ.get("WHICHMODEL_HOME") or Path.home() / ".cache" / "whichmodel"
    return Paths(Path(home).expanduser().resolve())
