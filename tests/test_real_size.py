"""Every architecture family of the paper's catalog at its real size, on the CPU.

``pytest -k real_size`` selects exactly the parametrized test below: one case per family of
``sweeps/configs/pools/renggli2022.yaml`` (the smallest model of each), built with random
weights by timm or torchvision and saved as a local weights file, as a user passes one
(``weights:``); then, at the model's own input size (224, 299, 331 px), the sweep's probe trial
and a fine-tune trial (1 head step, 2 steps of an effective batch of 4 in micro-batches of 2,
the early-stop proxy in it) run on a small VTAB-style ImageFolder task of 224 px images that the
test writes (2 train, 1 val, 1 test image per class). The features are as wide as the catalog
says, the parameters as many, every proxy is finite, and the peak resident memory of each trial
is printed.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

CATALOG = Path(__file__).resolve().parents[1] / "sweeps" / "configs" / "pools" / "renggli2022.yaml"

# One model per architecture family (the family's smallest); tests/test_catalogs.py checks that
# every catalog model belongs to one of these families.
FAMILIES = {
    "googlenet": "googlenet",
    "inception_v3": "inception_v3.tf_in1k",
    "inception_resnet_v2": "inception_resnet_v2.tf_in1k",
    "resnet": "resnet50.tv_in1k",
    "resnetv2": "resnetv2_50.a1h_in1k",
    "resnetv2_bit": "resnetv2_50x1_bit.goog_in21k",
    "mobilenetv1": "mobilenetv1_100.ra4_e3600_r224_in1k",
    "mobilenetv2": "mobilenetv2_100.ra_in1k",
    "nasnet": "nasnetalarge.tf_in1k",
    "pnasnet": "pnasnet5large.tf_in1k",
    "tf_efficientnet": "tf_efficientnet_b0.in1k",
}
PROXIES = ["linear", "knn", "logme", "hscore_lw", "transrate", "leep", "nce", "early_stop"]

SWEEP = """
name: real-size
image_size: 224
models: [{{name: {name}, spec: "{spec}", weights: {weights}}}]
tasks: [{{name: small224, path: {task}, group: natural}}]
probe:
  proxies: {proxies}
  linear: {{lrs: [0.1], steps: 10, repeats: 1, batch_size: 4}}
  early_stop: {{lrs: [0.01], steps: 1, repeats: 1, batch_size: 2, micro_batch: 2}}
  save_features: true
finetune:
  profile: real-size-smoke
  lrs: [0.01]
  head_steps: 1
  steps: 2
  batch_size: 4
  micro_batch: 2
  repeats: 1
  trials: per_pair
"""


def write_imagefolder(root: Path, seed: int = 0) -> Path:
    """Two classes of 224 px PNGs (bright and dark noise): 2 train, 1 val, 1 test image each."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for label, base in (("dark", 40), ("bright", 180)):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(base + rng.normal(0, 30, (224, 224, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def write_random_weights(spec: str, path: Path) -> None:
    """The architecture's full state dict (its classifier, and GoogLeNet's auxiliary heads, as
    torchvision's published file has them) at random initialisation, as a safetensors file."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    kind, _, name = spec.partition(":")
    if kind == "timm":
        import timm

        model = timm.create_model(name, pretrained=False)
    else:
        from torchvision.models import get_model

        model = get_model(name, weights=None, **({"aux_logits": True, "init_weights": False}
                                                 if name == "googlenet" else {}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024 ** 2
    return float("nan")


def timed_trial(job, settings) -> tuple[dict, float, float]:
    from sweeps.trials import run_trial

    Path("/proc/self/clear_refs").write_text("5")  # the peak of this trial alone
    start = time.perf_counter()
    metrics = run_trial(job, settings)
    return metrics, time.perf_counter() - start, peak_rss_gib()


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_real_size_catalog_family_runs_probe_and_finetune_trials_at_its_input_size(
        family, tmp_path, monkeypatch):
    from sweeps.catalog import load_catalog
    from sweeps.plan import Job, plan_sweep
    from sweeps.refs import get_ref_task
    from sweeps.trials import TrialSettings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the weights are the file's
    torch.set_num_threads(1)  # as a 1-CPU trial; OpenMP threads stall on a shared 2-core machine
    entry = next(m for m in load_catalog(CATALOG).models if m.name == FAMILIES[family])
    write_random_weights(entry.spec, tmp_path / "weights.safetensors")
    task = write_imagefolder(tmp_path / "small224")
    (tmp_path / "s.yaml").write_text(SWEEP.format(
        name=entry.name, spec=entry.spec, weights=tmp_path / "weights.safetensors", task=task,
        proxies=PROXIES))
    plan = plan_sweep(tmp_path / "s.yaml")

    class SmallSplits(TrialSettings):
        """The trial bodies as the sweep runs them, on a task of 2 + 1 + 1 images per class
        instead of VTAB-1k's 800 + 200 (the split sizes are the task loader's arguments)."""

        def load_task(self, name):
            return get_ref_task(name, self.task_refs[name]).load(
                self.data_root, image_size=224, seed=0, n_train=4, n_val=2)

    settings = SmallSplits(plan.cfg, str(tmp_path / "data"), str(tmp_path / "zoo"),
                           features_dir=str(tmp_path / "features"), model_refs=plan.model_refs,
                           task_refs=plan.task_refs, home=str(tmp_path / "home"))
    backbone, meta = settings.load_model(entry.name)
    assert meta["params"] == entry.meta["params"] and meta["feature_dim"] == entry.meta["feature_dim"]
    size = meta["input_size"]
    del backbone

    probe, probe_s, probe_rss = timed_trial(Job("probe", entry.name, "small224"), settings)
    feats = np.load(probe["features_path"])
    assert feats["train800_x"].shape == (4, entry.meta["feature_dim"])
    for name in PROXIES[:-1]:
        assert math.isfinite(probe[f"proxy/{name}"]), name

    job = Job("finetune", entry.name, "small224", runs=((0.01, 0),), early_stop=True)
    tune, tune_s, tune_rss = timed_trial(job, settings)
    assert tune["lr_0.01/rep0/micro_batch"] == 2  # 2 micro-batches of 2 per step of 4
    assert 0.0 <= tune["lr_0.01/rep0/test_acc"] <= 1.0
    assert math.isfinite(tune["proxy/early_stop"]) and tune["early_stop_micro_batch"] == 2
    print(f"\n[real size] {family}: {entry.name} at {size} px: probe {probe_s:.0f} s, peak RSS "
          f"{probe_rss:.2f} GiB; fine-tune + early stop {tune_s:.0f} s, peak RSS "
          f"{tune_rss:.2f} GiB")
