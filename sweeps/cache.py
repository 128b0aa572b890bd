"""What a rerun finds already done: kept under ``$WHICHMODEL_HOME/cache/``.

- ``artifacts/<run id>/``: artifacts of finished runs (:mod:`sweeps.tracking.artifacts`; a
  FINISHED run's artifacts never change);
- ``reports/<experiment>/<pool>.json``: the last report of each experiment and pool with its
  fingerprint (:func:`report_fingerprint`): the experiment's finished pair runs (id and end
  time), the report's settings (the sweep file's ``report`` section, pools, budget, strategies,
  protocol hashes) and the code version (:func:`code_version`). ``whichmodel run`` / ``report``
  reuse it while all three are unchanged, and say so in one line; ``--force`` recomputes;
- ``learned/<kind>-<key>.json``: the fits of ChoiceNet v1/v2/v3 and of Task2Vec
  (:mod:`sweeps.learned`), keyed by everything they read: the loaded models' weights and the
  tasks' splits (digests), the probe set, the results they learn from, their settings, the seed
  and the code version.

Every file is JSON written atomically (:mod:`whichmodel.files`): a cache can be deleted at any
time, and a file that cannot be read is recomputed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd

from whichmodel.files import atomic_write_json

PACKAGES = ("whichmodel", "selection", "sweeps", "lightning_modules")
ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A digest of the project's Python source (every ``.py`` file of its four packages): any
    change to the code that computes a report gives a new version."""
    h = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def digest(obj: Any) -> str:
    """A digest of JSON-able data (keys sorted; other values by ``str``)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def frame_digest(frame: pd.DataFrame | None) -> str | None:
    """A digest of a table's index, columns and values (all digits of every float)."""
    if frame is None:
        return None
    return digest(frame.to_json(orient="split", double_precision=15))


def array_digest(*arrays) -> str:
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode() + a.tobytes())
    return h.hexdigest()[:24]


def module_digest(module) -> str:
    """A digest of a torch module's weights and buffers (names, dtypes, shapes, bytes)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}{t.dtype}{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def frame_to_json(frame: pd.DataFrame) -> dict[str, Any]:
    """A table of floats as JSON, every digit kept (NaN as null), with its axes' names."""
    return {"index": [str(i) for i in frame.index], "columns": [str(c) for c in frame.columns],
            "data": [[None if v != v else float(v) for v in row]
                     for row in frame.to_numpy(dtype=float)],
            "names": [frame.index.name, frame.columns.name]}


def frame_from_json(data: dict[str, Any]) -> pd.DataFrame:
    frame = pd.DataFrame(data["data"], index=data["index"], columns=data["columns"], dtype=float)
    frame.index.name, frame.columns.name = data.get("names") or (None, None)
    return frame


def safe_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80]
    return safe if safe == name else f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def report_fingerprint(runs, settings: dict[str, Any]) -> str:
    """The report's fingerprint: its finished pair runs (``PairKey``: id, end time), its
    settings and the code version."""
    return digest({"runs": sorted((r.run_id, r.end_time) for r in runs),
                   "settings": settings, "code": code_version()})


class ReportCache:
    """The last report of one (experiment, pool)."""

    def __init__(self, home: Path, experiment: str, pool: str):
        self.path = Path(home) / "cache" / "reports" / safe_name(experiment) / f"{safe_name(pool)}.json"

    def load(self, fingerprint: str) -> dict[str, Any] | None:
        """(The cached report, when it is that of ``fingerprint``); also its ``made_at``."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if data.get("fingerprint") != fingerprint or not isinstance(data.get("report"), dict):
            return None
        return data

    def save(self, fingerprint: str, report: dict[str, Any], runs: int) -> None:
        atomic_write_json(self.path, {"fingerprint": fingerprint, "made_at": time.time(),
                                      "runs": runs, "report": report}, indent=None)


def cached_report(tracker, home: Path, kwargs: dict[str, Any], sweep_report, force: bool,
                  compute, stream=None) -> tuple[dict[str, Any], str]:
    """(the report, its fingerprint): the last one of this experiment and pool when its
    fingerprint is unchanged (said in one line), else ``compute()``, kept for next time.
    ``kwargs``: the report's arguments (:func:`sweeps.reporting.report_experiment`);
    ``sweep_report``: the sweep file's ``report`` settings, if any."""
    import sys

    settings = {k: v for k, v in kwargs.items() if k != "learned"}
    settings["sweep_report"] = sweep_report.model_dump() if sweep_report is not None else None
    finished, _ = tracker.keys_by_status(kwargs.get("protocol_hashes"))
    fingerprint = report_fingerprint(finished.values(), settings)
    cache = ReportCache(home, tracker.experiment, kwargs.get("pool", "all"))
    cached = None if force else cache.load(fingerprint)
    if cached is not None:
        print(f"[whichmodel] report: nothing changed since the report of {when(cached['made_at'])}"
              f" ({len(finished)} finished runs, the same report settings and code): reusing it;"
              " --force recomputes", file=stream or sys.stderr, flush=True)
        return cached["report"], fingerprint
    report = compute()
    cache.save(fingerprint, report, len(finished))
    return report, fingerprint


class FitCache:
    """Fits of the learned strategies, one file per key (:mod:`sweeps.learned`)."""

    def __init__(self, home: Path | None):
        self.root = Path(home) / "cache" / "learned" if home else None

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        if self.root is None:
            return None
        try:
            return json.loads((self.root / f"{kind}-{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def put(self, kind: str, key: str, payload: dict[str, Any]) -> None:
        if self.root is not None:
            atomic_write_json(self.root / f"{kind}-{key}.json",
                              {**payload, "made_at": time.time()}, indent=None)


def when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))
