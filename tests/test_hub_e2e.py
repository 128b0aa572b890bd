"""A sweep over hub-style inputs end to end: an ImageFolder task and timm models from local files.

The weights travel through timm's own pretrained-weights path (``weights:``), the task through the
ImageFolder loader; the sweep runs probes and fine-tunes on the session's Ray and logs one MLflow
run per (model, task, protocol).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sweeps.cli import main

pytestmark = pytest.mark.slow


def write_digits_imagefolder(root: Path, n_train: int = 1100) -> dict[str, int]:
    """scikit-learn's digits as PNGs in ImageFolder layout: root/{train,test}/<digit>/*.png."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts = {"train": 0, "test": 0}
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        split = "train" if i < n_train else "test"
        folder = root / split / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (img / 16.0 * 255).astype(np.uint8)
        Image.fromarray(pixels).convert("RGB").resize((16, 16)).save(folder / f"{i:04d}.png")
        counts[split] += 1
    return counts


def write_timm_weights(path: Path, name: str, seed: int) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


SWEEP = """
name: hubtiny
image_size: 32
models:
  - {{name: resnet-a, spec: "timm:test_resnet", weights: a.safetensors,
     meta: {{imagenet_acc: 0.6, upstream_size: 1000}}}}
  - {{name: resnet-b, spec: "timm:test_resnet", weights: b.safetensors,
     meta: {{imagenet_acc: 0.5, upstream_size: 1000}}}}
tasks:
  - {{name: folder-digits, path: {folder}, group: natural}}
probe:
  proxies: [linear, knn, logme, leep, nce]
  linear: {{lrs: [0.1], steps: 30, repeats: 1, batch_size: 64}}
finetune:
  profile: test-tiny
  lrs: [0.01]
  head_steps: 5
  steps: 5
  batch_size: 32
  repeats: 1
resources: {{probe: {{cpus: 1}}, finetune: {{cpus: 1}}}}
report: {{max_budget: 2, choicenet: {{enabled: false}}}}
"""


def test_sweep_over_an_imagefolder_task_and_local_timm_weights_logs_every_run(
        tmp_path, monkeypatch, ray_session, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("WHICHMODEL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    counts = write_digits_imagefolder(tmp_path / "digits")
    assert counts["train"] >= 1000
    write_timm_weights(tmp_path / "a.safetensors", "test_resnet", seed=0)
    write_timm_weights(tmp_path / "b.safetensors", "test_resnet", seed=1)
    (tmp_path / "s.yaml").write_text(SWEEP.format(folder="digits"))

    assert main(["run", str(tmp_path / "s.yaml"), "--reports-dir", str(tmp_path / "r")]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("hubtiny")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=100)
            if r.data.tags.get("pair_key")]
    keys = sorted(r.data.tags["pair_key"] for r in runs)
    assert keys == sorted(f"{m}|folder-digits|{p}" for m in ("resnet-a", "resnet-b")
                          for p in ("probe", "finetune"))
    assert all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        assert r.data.tags["group"] == "natural"
        if r.data.tags["pair_key"].endswith("finetune"):
            assert 0.0 <= r.data.metrics["finetune_test_acc"] <= 1.0
        else:
            # test_resnet has an ImageNet classifier: LEEP and NCE come from its source head.
            for proxy in ("linear", "knn", "logme", "leep", "nce"):
                assert np.isfinite(r.data.metrics[f"proxy/{proxy}"]), proxy
    out = capsys.readouterr().out
    assert "folder-digits" in out and "task_agnostic" in out


def test_weights_that_do_not_fit_the_architecture_stop_the_sweep_naming_the_file(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WHICHMODEL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_digits_imagefolder(tmp_path / "digits")
    write_timm_weights(tmp_path / "a.safetensors", "test_vit", seed=0)   # a ViT's weights ...
    write_timm_weights(tmp_path / "b.safetensors", "test_resnet", seed=1)
    (tmp_path / "s.yaml").write_text(SWEEP.format(folder="digits"))  # ... for a ResNet
    assert main(["run", str(tmp_path / "s.yaml"), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "a.safetensors") in err
    assert not (tmp_path / "home" / "mlflow.db").exists()  # nothing written


def test_a_missing_imagefolder_root_stops_the_sweep_naming_the_path(tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setenv("WHICHMODEL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_timm_weights(tmp_path / "a.safetensors", "test_resnet", seed=0)
    write_timm_weights(tmp_path / "b.safetensors", "test_resnet", seed=1)
    (tmp_path / "s.yaml").write_text(SWEEP.format(folder="no-such-folder"))
    assert main(["run", str(tmp_path / "s.yaml"), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "no-such-folder") in err
