"""What a trial runs, apart from where it runs: the trial bodies, with neither Ray nor MLflow.

Each body is ``fn(job, settings, report) -> metrics`` (a flat dict, or None when it reported by
itself through ``report(metrics)``, as the budgeted search does rung by rung). The Tune runner
(:mod:`sweeps.tune_runner`) calls them inside trials; tests call them directly on the tiny zoo::

    settings = TrialSettings(cfg, data_root, zoo_root)
    metrics = run_trial(Job("probe", "tiny-shapes", "digits"), settings)

- ``probe``: one frozen forward pass over the task's train800/val200/test, then every proxy the
  sweep names (:mod:`selection.proxies`; the early-stop proxy fine-tunes copies of the backbone
  for a few steps, :func:`lightning_modules.training.short_finetune`);
- ``finetune``: one pair at one learning rate, every repetition (linear head on the frozen
  backbone, then the whole network; :func:`lightning_modules.training.run_finetune`);
- ``search``: one (model, task, lr) fine-tune reporting its validation accuracy every
  ``search.rung_steps`` steps, which ASHA may stop at any rung;
- ``pretrain``: one zoo model (:mod:`sweeps.zoo`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.config import SweepConfig
from sweeps.plan import Job
from sweeps.registry import load_model_ref, load_task_ref
from sweeps.zoo_config import ZooConfig
from whichmodel.files import atomic_path

Report = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep shares (pickled once to the workers by Tune)."""

    cfg: SweepConfig
    data_root: str
    zoo_root: str
    features_dir: str | None = None  # keep each probe's features as a compressed .npz here
    features_remote: str | None = None  # and copy them to <storage>/features/<sweep> (S3)
    model_refs: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> registry ref
    task_refs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def load_model(self, name: str):
        return load_model_ref(name, self.model_refs.get(name, {"source": "zoo"}), self.zoo_root)

    def load_task(self, name: str):
        return load_task_ref(name, self.task_refs.get(name, {"source": "offline"}),
                             self.data_root, self.cfg.image_size, self.cfg.seed,
                             download=self.cfg.data.download)


def run_trial(job: Job, settings: TrialSettings, report: Report | None = None) -> dict[str, Any]:
    """The body of a sweep's trial, by the job's kind."""
    bodies = {"probe": probe_trial, "finetune": finetune_trial}
    if job.kind not in bodies:
        raise ValueError(f"unknown job kind {job.kind!r}; a sweep runs {', '.join(bodies)}")
    return bodies[job.kind](job, settings, report)


def probe_trial(job: Job, settings: TrialSettings, report: Report | None = None
                ) -> dict[str, Any]:
    """One frozen forward pass over train, validation and test; then every proxy on it."""
    from lightning_modules.backbones import extract_features
    from lightning_modules.training import short_finetune
    from selection.proxies import make_inputs, score_proxies

    cfg = settings.cfg
    backbone, _ = settings.load_model(job.model)
    data = settings.load_task(job.task)
    t0 = time.perf_counter()
    feats, probs = {}, {}
    for split in ("train800", "val200", "test"):
        feats[split], probs[split] = extract_features(backbone, data.splits[split][0],
                                                      with_source_probs=True)
    metrics: dict[str, Any] = {"time/features": time.perf_counter() - t0}
    finetune = short_finetune(backbone, data.splits, data.num_classes)
    inputs = make_inputs(feats["train800"], data.splits["train800"][1], feats["val200"],
                         data.splits["val200"][1], source_probs_train=probs["train800"],
                         finetune=finetune)
    results = score_proxies(cfg.probe.proxies, inputs, cfg.probe.proxy_settings(cfg.seed))
    for name, (value, seconds) in results.items():
        metrics[f"proxy/{name}"] = float(value)
        metrics[f"time/proxy/{name}"] = seconds
    if settings.features_dir and cfg.probe.save_features:
        path = save_features(Path(settings.features_dir) / job.model / f"{data.name}.npz",
                             feats, probs, data.splits)
        metrics["features_path"] = str(path)
        if settings.features_remote:
            from sweeps import storage

            metrics["features_uri"] = storage.upload_file(
                path, storage.join(settings.features_remote, job.model, f"{data.name}.npz"))
    return metrics


def save_features(path: Path, feats: dict, probs: dict, splits: dict) -> Path:
    """A probe's features (float16), labels and source probabilities as one compressed .npz."""
    import numpy as np

    arrays = {f"{s}_x": f.numpy().astype(np.float16) for s, f in feats.items()}
    arrays.update({f"{s}_y": splits[s][1] for s in feats})
    arrays.update({f"{s}_source_probs": v.numpy().astype(np.float16)
                   for s, v in probs.items() if v is not None})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def finetune_trial(job: Job, settings: TrialSettings, report: Report | None = None
                   ) -> dict[str, Any]:
    """Every repetition of one pair's fine-tune at one learning rate: validation and test
    accuracy per repetition, and the training-loss curves (for the child runs)."""
    import copy

    from lightning_modules.training import run_finetune

    cfg = settings.cfg
    f = cfg.finetune
    backbone, _ = settings.load_model(job.model)
    data = settings.load_task(job.task)
    metrics: dict[str, Any] = {}
    curves = {}
    t0 = time.perf_counter()
    for rep in range(f.repeats):
        run = run_finetune(copy.deepcopy(backbone), data.splits, data.num_classes, lr=job.lr,
                           steps=f.steps, head_steps=f.head_steps, batch_size=f.batch_size,
                           seed=cfg.seed + rep, trainable=f.trainable, curve_every=f.curve_every,
                           precision=f.precision)
        metrics[f"rep{rep}/val_acc"] = run["val_acc"]
        metrics[f"rep{rep}/test_acc"] = run["test_acc"]
        curves[f"rep{rep}"] = run["curve"]
    metrics["time/finetune"] = time.perf_counter() - t0
    metrics["curves"] = json.dumps(curves)  # a string: Tune results stay flat
    return metrics


def search_trial(job: Job, settings: TrialSettings, report: Report | None = None) -> None:
    """One (model, task, lr) fine-tune of the budgeted search: ``report`` gets the validation
    accuracy every ``search.rung_steps`` steps (an ASHA rung); the scheduler may stop it."""
    import pytorch_lightning as pl

    from lightning_modules.training import evaluate, run_finetune

    if report is None:
        raise ValueError("a search trial reports rung by rung: pass report")
    cfg = settings.cfg
    f, rung_steps = cfg.finetune, cfg.search.rung_steps
    backbone, _ = settings.load_model(job.model)
    data = settings.load_task(job.task)
    xva, yva = data.splits["val200"]

    class ReportRung(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step % rung_steps == 0:
                report({"val_acc": evaluate(module, xva, yva),
                        "steps": f.head_steps + trainer.global_step})

    run_finetune(backbone, data.splits, data.num_classes, lr=job.lr, steps=f.steps,
                 head_steps=f.head_steps, batch_size=f.batch_size, seed=cfg.seed,
                 trainable=f.trainable, evaluate_test=False, precision=f.precision,
                 callbacks=[ReportRung()])
    return None


# --------------------------------------------------------------------------- pre-training (zoo)
@dataclass(frozen=True)
class ZooTrialSettings:
    zoo: ZooConfig
    zoo_root: str
    data_root: str


def pretrain_trial(job: Job, settings: ZooTrialSettings, report: Report | None = None
                   ) -> dict[str, Any]:
    """Pre-train one zoo model and save its checkpoint."""
    meta = build_model(settings.zoo, job.model, settings.zoo_root, settings.data_root)
    return {"upstream_acc": meta["upstream_acc"] or 0.0,
            "pretrain_seconds": meta["pretrain_seconds"]}


def build_model(zoo: ZooConfig, name: str, zoo_root: str | Path, data_root: str | Path) -> dict:
    """Pre-train one zoo model (none for a random-initialisation control) and save it as
    ``model.safetensors`` + ``meta.json``; returns its metadata."""
    import torch

    from lightning_modules.backbones import count_parameters, create_backbone, save_checkpoint
    from lightning_modules.training import run_pretrain, source_accuracy

    m = zoo.model(name)
    training = m.training or zoo.training
    source = _load_upstream(zoo, m.upstream, str(data_root)) if m.upstream else None
    if m.objective == "supervised":
        source_classes, class_names = len(source.class_names), list(source.class_names)
    elif m.objective == "rotation":
        source_classes, class_names = 4, ["rot0", "rot90", "rot180", "rot270"]
    else:
        source_classes, class_names = 0, []
    torch.manual_seed(zoo.seed)
    backbone = create_backbone(m.arch, source_classes=source_classes,
                               input_size=zoo.image_size, **m.arch_kwargs)
    seconds, upstream_acc = 0.0, None
    if m.objective != "none":
        seconds = run_pretrain(backbone, source.train, m.objective, training.steps,
                               training.batch_size, training.lr, seed=zoo.seed)
        upstream_acc = source_accuracy(backbone, *source.val, objective=m.objective)
    meta = {
        "name": name, "arch": m.arch,
        "arch_kwargs": {"input_size": zoo.image_size, **m.arch_kwargs},
        "objective": m.objective, "upstream": list(m.upstream),
        "upstream_size": int(len(source.train[1])) if source is not None else 0,
        "upstream_acc": upstream_acc, "imagenet_acc": None,
        "params": count_parameters(backbone), "feature_dim": backbone.feature_dim,
        "preprocessing": backbone.preprocessing, "source_classes": source_classes,
        "source_class_names": class_names, "recipe_hash": zoo.recipe_hash(name),
        "pretrain_seconds": round(seconds, 2),
    }
    save_checkpoint(backbone, Path(zoo_root) / name, meta)
    return meta


def _load_upstream(zoo: ZooConfig, families: list[str], data_root: str):
    from lightning_modules.sources import load_source, load_source_mix

    kwargs = dict(root=data_root, image_size=zoo.image_size, seed=zoo.seed,
                  n_train=zoo.source.n_train, n_val=zoo.source.n_val)
    if len(families) == 1:
        return load_source(families[0], **kwargs)
    return load_source_mix(list(families), **kwargs)
