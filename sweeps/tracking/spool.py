"""Pair results that MLflow could not take (the server was down), kept on disk until it can.

One JSON file per (pair_key, protocol_hash) at ``$WHICHMODEL_HOME/spool/<experiment>/<hash>.json``,
written atomically and fsynced (``whichmodel.files``), holding everything
``Tracker.log_pair`` writes: run name, tags, params, metrics, the curves, the
paths of artifact files and the metrics' timestamp. The recorder's writer journals every pair
here before queueing it (:mod:`sweeps.tracking.writer`), so the spool also holds what a killed
driver had not logged yet. ``Tracker.drain_spool`` replays the records
through the same idempotent path keyed by ``pair_key`` (a finished run of the key: the record is
dropped; an unfinished one: resumed by id; none: created), so a record replayed twice, or a pair
that was logged in the meantime, never makes a second run. A record leaves the spool only once
its run is FINISHED in MLflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from whichmodel.files import atomic_write_json

SPOOL_FORMAT = 2  # 1: curves as child runs (``children``), still replayed


def _folder_name(experiment: str) -> str:
    """A folder per experiment; names with other characters get a hash suffix to stay unique."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", experiment)[:80]
    if safe == experiment:
        return safe
    return f"{safe}-{hashlib.sha256(experiment.encode()).hexdigest()[:8]}"


def record_file_name(pair_key: str, protocol_hash: str) -> str:
    return hashlib.sha256(f"{pair_key}\n{protocol_hash}".encode()).hexdigest()[:24] + ".json"


class Spool:
    """The spooled pair records of one experiment."""

    def __init__(self, root: str | os.PathLike, experiment: str):
        self.experiment = experiment
        self.dir = Path(root) / _folder_name(experiment)

    def put(self, record: dict[str, Any]) -> Path:
        """Write (or replace) the record of its (pair_key, protocol_hash), atomically."""
        path = self.dir / record_file_name(record["pair_key"], record["protocol_hash"])
        return atomic_write_json(path, {"format": SPOOL_FORMAT, "experiment": self.experiment,
                                        **record}, indent=None, mode=0o600)

    def pending(self) -> list[tuple[Path, dict[str, Any]]]:
        """Readable records, oldest first; an unreadable file is reported and left in place."""
        if not self.dir.is_dir():
            return []
        out = []
        for path in self.dir.glob("*.json"):  # not the writer's temporary files (.*.tmp)
            try:
                record = json.loads(path.read_text())
                missing = {"pair_key", "protocol_hash", "model", "task", "protocol"} - set(record)
                if missing:
                    raise ValueError(f"no {', '.join(sorted(missing))}")
            except (OSError, ValueError) as exc:
                print(f"[whichmodel] spool: cannot read {path} ({exc}); left in place",
                      file=sys.stderr)
                continue
            out.append((path, record))
        return sorted(out, key=lambda item: (item[1].get("spooled_at", 0), item[0].name))

    def discard(self, path: Path) -> None:
        Path(path).unlink(missing_ok=True)

    def __len__(self) -> int:
        if not self.dir.is_dir():
            return 0
        return sum(1 for _ in self.dir.glob("*.json"))
