"""Reproducible: the same sweep file and seed on the same machine give bit-identical zoo
checkpoints, proxy values, fine-tune accuracies and test predictions. A tiny sweep (2 models x
2 tasks, 2 repetitions) is built and run twice, each into its own fresh home (zoo, data, MLflow
store), and every metric of every run is compared exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sweeps.cli import main
from tests.tiny import ZOO, sweep

pytestmark = pytest.mark.slow


def _build_and_run(root: Path, monkeypatch) -> Path:
    root.mkdir()
    (root / "zoo.yaml").write_text(ZOO)
    text = sweep("repro").replace("repeats: 1\n", "repeats: 2\n  trials: per_pair\n")
    (root / "repro.yaml").write_text(text)
    monkeypatch.setenv("WHICHMODEL_HOME", str(root / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["zoo", "build", str(root / "zoo.yaml")]) == 0
    assert main(["run", str(root / "repro.yaml"), "--reports-dir", str(root / "reports")]) == 0
    return root / "home"


def _everything(home: Path) -> dict[str, dict[str, float]]:
    """Every run's metrics (time/* left out: they are seconds), keyed by run name."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("repro")
    out = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        if run.data.tags.get("protocol") == "report":
            continue
        metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith("time/")}
        for key in [k for k in metrics if "/curve/" in k]:  # each run's curves, every point
            metrics[key] = [m.value for m in client.get_metric_history(run.info.run_id, key)]
        out[run.info.run_name] = metrics
    return out


def test_a_tiny_sweep_run_twice_into_fresh_stores_gives_identical_numbers(
        tmp_path, monkeypatch, ray_session):
    a = _build_and_run(tmp_path / "a", monkeypatch)
    b = _build_and_run(tmp_path / "b", monkeypatch)
    for model in ("tiny-shapes", "tiny-random"):
        assert ((a / "zoo" / model / "model.safetensors").read_bytes()
                == (b / "zoo" / model / "model.safetensors").read_bytes())
    first, second = _everything(a), _everything(b)
    assert sorted(first) == sorted(second)
    # 2 models x 2 tasks x (probe, fine-tune); each fine-tune's 4 runs are metrics of its run
    assert len(first) == 8
    n_metrics = sum(len(m) for m in first.values())
    assert n_metrics > 100
    differences = [(run, key) for run in first for key in first[run]
                   if first[run][key] != second[run].get(key)]
    assert differences == [], differences[:10]
    pa = sorted((a / "predictions" / "repro").glob("*.npz"))
    assert len(pa) == 4
    for path in pa:
        with np.load(path) as x, np.load(b / "predictions" / "repro" / path.name) as y:
            assert np.array_equal(x["predictions"], y["predictions"])
            assert np.array_equal(x["labels"], y["labels"])
