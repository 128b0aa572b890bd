"""What a trial runs, apart from where it runs: the trial bodies, with neither Ray nor MLflow.

Each body is ``fn(job, settings, report) -> metrics`` (a flat dict, or None when it reported by
itself through ``report(metrics)``, as the budgeted search does rung by rung). The Tune runner
(:mod:`sweeps.tune_runner`) calls them inside trials; tests call them directly on the tiny zoo::

    settings = TrialSettings(cfg, data_root, zoo_root)
    metrics = run_trial(Job("probe", "tiny-shapes", "digits"), settings)

- ``probe``: one frozen forward pass over the task's train800/val200/test, then every feature
  proxy the sweep names (:mod:`selection.proxies`);
- ``finetune``: runs of one pair, each a (learning rate, repetition) with its own seed (linear
  head on the frozen backbone, then the whole network;
  :func:`lightning_modules.training.run_finetune`), and the pair's early-stop proxy when asked;
- ``early_stop``: the early-stop proxy alone (it fine-tunes copies of the backbone for a few
  steps, :func:`lightning_modules.training.short_finetune`, so it runs as fine-tune work);
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

from lightning_modules.task_data import splits_digest
from sweeps.config import SweepConfig
from sweeps.plan import Job
from sweeps.refs import load_model_ref, load_task_ref
from sweeps.zoo_config import ZooConfig
from whichmodel.files import atomic_path
from whichmodel.names import within
from whichmodel.seeds import derive_seed

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
    home: str | None = None  # $WHICHMODEL_HOME: where the micro-batch sizes that fit are kept

    def load_model(self, name: str):
        return load_model_ref(name, self.model_refs.get(name, {"source": "zoo"}), self.zoo_root)

    def load_task(self, name: str):
        return load_task_ref(name, self.task_refs.get(name, {"source": "offline"}),
                             self.data_root, self.cfg.image_size, self.cfg.seed,
                             download=self.cfg.data.download)


    def micro_batcher(self, meta: dict[str, Any], kind: str, effective: int,
                      setting: int | str = "auto", precision: str = "auto"):
        """The micro-batch of one kind of work (``train``: a fine-tune step, ``extract``: a
        frozen forward pass) of a model on this trial's device: ``setting`` N, or ``auto``: on
        a GPU the size remembered for (kind, architecture, input size, precision, device name)
        under ``home``, else ``effective``, halved on out-of-memory errors; on the CPU
        ``effective``."""
        import torch

        from lightning_modules.micro_batch import (
            CACHE_FILE,
            MicroBatchCache,
            MicroBatcher,
            cache_key,
            device_name,
        )

        if setting != "auto":
            return MicroBatcher(effective, fixed=int(setting))
        if not torch.cuda.is_available() or self.home is None:
            return MicroBatcher(effective)
        if precision == "auto":
            precision = "bf16-mixed"  # make_trainer's choice on a GPU
        arch = str(meta.get("arch")) + (f"{meta['arch_kwargs']}" if meta.get("arch_kwargs") else "")
        key = cache_key(kind, arch, int(meta.get("input_size") or self.cfg.image_size), precision,
                        device_name("cuda"))
        return MicroBatcher(effective, cache=MicroBatchCache(Path(self.home) / CACHE_FILE), key=key)


#: Images per chunk of a frozen forward pass (probe features): the size the search starts at.
EXTRACT_BATCH = 256


def run_trial(job: Job, settings: TrialSettings, report: Report | None = None) -> dict[str, Any]:
    """The body of a sweep's trial, by the job's kind."""
    bodies = {"probe": probe_trial, "finetune": finetune_trial, "early_stop": early_stop_trial}
    if job.kind not in bodies:
        raise ValueError(f"unknown job kind {job.kind!r}; a sweep runs {', '.join(bodies)}")
    start, started_at = time.perf_counter(), time.time()
    metrics = bodies[job.kind](job, settings, report)
    metrics["time/trial"] = time.perf_counter() - start
    # wall-clock bounds (epoch seconds): the pair's MLflow run starts and ends with its trials
    metrics["started_at"], metrics["ended_at"] = started_at, time.time()
    return metrics


def probe_trial(job: Job, settings: TrialSettings, report: Report | None = None
                ) -> dict[str, Any]:
    """One frozen forward pass over train, validation and test; then every feature proxy on it
    (the early-stop proxy, a short fine-tune, runs as fine-tune work: :func:`early_stop_trial`)."""
    from selection.proxies import make_inputs, score_proxies

    cfg = settings.cfg
    feats, probs, data, seconds, micro_size = probe_features(job, settings)
    metrics: dict[str, Any] = {"time/features": seconds, "task_digest": splits_digest(data.splits),
                               "extract_micro_batch": micro_size}
    inputs = make_inputs(feats["train800"], data.splits["train800"][1], feats["val200"],
                         data.splits["val200"][1], source_probs_train=probs["train800"])
    names = [n for n in cfg.probe.proxies if n != "early_stop"]
    seed = derive_seed(cfg.seed, job.model, job.task, "probe")
    results = score_proxies(names, inputs, cfg.probe.proxy_settings(seed))
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


def probe_features(job: Job, settings: TrialSettings
                   ) -> tuple[dict, dict, Any, float, int]:
    """The probe's one frozen forward pass: features and source-classifier probabilities of the
    train800, val200 and test splits (torch float32; probabilities None without a source head),
    the task's data, the seconds of the forward pass alone and the micro-batch it ended at."""
    from lightning_modules.backbones import extract_features

    backbone, meta = settings.load_model(job.model)
    data = settings.load_task(job.task)
    t0 = time.perf_counter()
    feats, probs = {}, {}
    micro = settings.micro_batcher(meta, "extract", EXTRACT_BATCH)
    for split in ("train800", "val200", "test"):
        feats[split], probs[split] = extract_features(backbone, data.splits[split][0],
                                                      with_source_probs=True, micro=micro)
    return feats, probs, data, time.perf_counter() - t0, micro.size


#: the splits the proxies read, kept at float32 in a features cache; the test split at float16
PROXY_SPLITS = ("train800", "val200")


def save_features(path: Path, feats: dict, probs: dict, splits: dict) -> Path:
    """A probe's features, labels and source probabilities as one compressed .npz: what the
    proxies read (train800, val200) exactly as they read it (float32), so a proxy scored later
    from the cache (``whichmodel proxy score``) sees the probe's inputs; the test split at
    float16."""
    import numpy as np

    def kept(split: str, tensor) -> np.ndarray:
        return tensor.numpy().astype(np.float32 if split in PROXY_SPLITS else np.float16)

    arrays = {f"{s}_x": kept(s, f) for s, f in feats.items()}
    arrays.update({f"{s}_y": splits[s][1] for s in feats})
    arrays.update({f"{s}_source_probs": kept(s, v) for s, v in probs.items() if v is not None})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def load_features(path: str | Path) -> dict[str, Any]:
    """What :func:`save_features` wrote, as the probe trial hands it to the proxies: features and
    source probabilities of train800 and val200 as torch tensors, labels as numpy arrays
    (``train_x, train_y, val_x, val_y, source_probs_train``: None without a source head) and
    ``dtype``, the features' stored type (float16 in caches of earlier versions)."""
    import numpy as np
    import torch

    with np.load(path) as npz:
        probs = npz["train800_source_probs"] if "train800_source_probs" in npz.files else None
        return {"train_x": torch.from_numpy(npz["train800_x"].astype(np.float32)),
                "train_y": npz["train800_y"],
                "val_x": torch.from_numpy(npz["val200_x"].astype(np.float32)),
                "val_y": npz["val200_y"],
                "source_probs_train": None if probs is None else torch.from_numpy(
                    probs.astype(np.float32)),
                "dtype": str(npz["train800_x"].dtype)}


def run_key(lr: float, rep: int) -> str:
    """A fine-tune run's metric prefix: ``lr_0.01/rep0``."""
    return f"lr_{lr:g}/rep{rep}"


def finetune_trial(job: Job, settings: TrialSettings, report: Report | None = None
                   ) -> dict[str, Any]:
    """The job's fine-tune runs of one pair, each a (learning rate, repetition) with its own seed
    (:func:`whichmodel.seeds.derive_seed`): validation and test accuracy per run, the
    training-loss and validation curves (for the pair run's curves and the budgeted search's replay),
    and with ``job.early_stop`` the pair's early-stop proxy. The backbone, the task and the
    frozen features of the head stage are loaded and computed once for all of them."""
    import copy

    import numpy as np

    from lightning_modules.backbones import extract_features
    from lightning_modules.training import run_finetune

    cfg = settings.cfg
    f = cfg.finetune
    backbone, meta = settings.load_model(job.model)
    data = settings.load_task(job.task)
    ftr, _ = extract_features(backbone, data.splits["train800"][0],
                              micro=settings.micro_batcher(meta, "extract", EXTRACT_BATCH))
    # one micro-batcher for the pair's runs: a size halved in one run stays halved
    micro = settings.micro_batcher(meta, "train", f.batch_size, f.micro_batch, f.precision)
    # the validation curve the budgeted search can replay: repetition 0 of its learning rates
    search_lrs = set(cfg.search.lrs or f.lrs) if cfg.search.enabled else set()
    metrics: dict[str, Any] = {"task_digest": splits_digest(data.splits)}
    curves, val_curves, preds, inside = {}, {}, {}, 0.0
    heads: dict[int, Any] = {}  # one head per repetition, fine-tuned at each of its lrs
    t0 = time.perf_counter()
    for lr, rep in job.runs:
        key = run_key(lr, rep)
        if rep not in heads:
            heads[rep], seconds = repetition_head(cfg, job, data, ftr, rep)
            inside += seconds
        run = run_finetune(copy.deepcopy(backbone), data.splits, data.num_classes, lr=lr,
                           steps=f.steps, head_steps=f.head_steps, batch_size=f.batch_size,
                           seed=derive_seed(cfg.seed, job.model, job.task, lr, rep),
                           trainable=f.trainable, curve_every=f.curve_every,
                           precision=f.precision, head=heads[rep], micro=micro,
                           val_every=cfg.search.rung_steps if rep == 0 and lr in search_lrs
                           else 0)
        metrics[f"{key}/val_acc"] = run["val_acc"]
        metrics[f"{key}/test_acc"] = run["test_acc"]
        if "micro_batch" in run:
            metrics[f"{key}/micro_batch"] = run["micro_batch"]
        curves[key] = run["curve"]
        preds[key] = run["test_pred"].tolist()
        if "val_curve" in run:
            val_curves[key] = run["val_curve"]
        inside += run["train_eval_s"]
    metrics["time/finetune"] = time.perf_counter() - t0
    metrics["curves"] = json.dumps(curves)  # strings: Tune results stay flat
    metrics["val_curves"] = json.dumps(val_curves)
    # per test example: the predictions of every run and the labels (the report resamples them)
    metrics["test_predictions"] = json.dumps(preds)
    metrics["test_labels"] = json.dumps(np.asarray(data.splits["test"][1]).tolist())
    if job.early_stop:
        metrics.update(_early_stop(job, settings, backbone, meta, data, ftr))
        inside += metrics["time/early_stop_train_eval"]
    metrics["time/train_eval"] = inside
    return metrics


def early_stop_trial(job: Job, settings: TrialSettings, report: Report | None = None
                     ) -> dict[str, Any]:
    """The pair's early-stop proxy alone (fine-tune work, on fine-tune resources)."""
    from lightning_modules.backbones import extract_features

    backbone, meta = settings.load_model(job.model)
    data = settings.load_task(job.task)
    ftr, _ = extract_features(backbone, data.splits["train800"][0],
                              micro=settings.micro_batcher(meta, "extract", EXTRACT_BATCH))
    metrics = _early_stop(job, settings, backbone, meta, data, ftr)
    metrics["time/train_eval"] = metrics["time/early_stop_train_eval"]
    return metrics


def repetition_head(cfg: SweepConfig, job: Job, data, ftr, rep: int):
    """The head of repetition ``rep`` (stage 1 of the fine-tune protocol, on the frozen
    features ``ftr`` of train800): seeded by (seed, model, task, repetition), not the learning
    rate, so every run of the repetition, in this trial or another on any machine, fine-tunes
    the same head. Returns it and the seconds of its training steps."""
    from lightning_modules.training import train_head

    f = cfg.finetune
    return train_head(ftr, data.splits["train800"][1], ftr.shape[1], data.num_classes,
                      f.head_lr, f.head_steps, f.batch_size,
                      derive_seed(cfg.seed, job.model, job.task, "head", rep))


def _early_stop(job: Job, settings: TrialSettings, backbone, meta, data, ftr) -> dict[str, Any]:
    from lightning_modules.backbones import extract_features
    from lightning_modules.training import short_finetune
    from selection.proxies import make_inputs, score_proxies

    cfg = settings.cfg
    fva, _ = extract_features(backbone, data.splits["val200"][0])
    es, precision = cfg.probe.early_stop, cfg.finetune.precision
    finetune = short_finetune(backbone, data.splits, data.num_classes, precision=precision,
                              momentum=es.momentum,
                              micro_batch=lambda effective: settings.micro_batcher(
                                  meta, "train", effective, es.micro_batch, precision))
    inputs = make_inputs(ftr, data.splits["train800"][1], fva, data.splits["val200"][1],
                         finetune=finetune)
    seed = derive_seed(cfg.seed, job.model, job.task, "early_stop")
    settings_ = cfg.probe.proxy_settings(seed)
    (value, seconds), = score_proxies(["early_stop"], inputs,
                                      {"early_stop": settings_["early_stop"]}).values()
    return {"proxy/early_stop": float(value), "time/proxy/early_stop": seconds,
            "time/early_stop_train_eval": finetune.train_eval_s,
            "early_stop_micro_batch": finetune.micro_batch}


def search_trial(job: Job, settings: TrialSettings, report: Report | None = None) -> None:
    """One (model, task, lr) fine-tune of the budgeted search: ``report`` gets the validation
    accuracy every ``search.rung_steps`` steps (an ASHA rung); the scheduler may stop it."""
    import pytorch_lightning as pl

    from lightning_modules.backbones import extract_features
    from lightning_modules.training import evaluate, run_finetune

    if report is None:
        raise ValueError("a search trial reports rung by rung: pass report")
    cfg = settings.cfg
    f, rung_steps = cfg.finetune, cfg.search.rung_steps
    backbone, meta = settings.load_model(job.model)
    data = settings.load_task(job.task)
    xva, yva = data.splits["val200"]
    ftr, _ = extract_features(backbone, data.splits["train800"][0],
                              micro=settings.micro_batcher(meta, "extract", EXTRACT_BATCH))
    head, _ = repetition_head(cfg, job, data, ftr, 0)  # repetition 0's, as the sweep's

    class ReportRung(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step % rung_steps == 0:
                report({"val_acc": evaluate(module, xva, yva),
                        "steps": f.head_steps + trainer.global_step})

    run_finetune(backbone, data.splits, data.num_classes, lr=job.lr, steps=f.steps,
                 head_steps=f.head_steps, batch_size=f.batch_size,
                 seed=derive_seed(cfg.seed, job.model, job.task, job.lr, 0),  # repetition 0's
                 trainable=f.trainable, evaluate_test=False, precision=f.precision,
                 callbacks=[ReportRung()], head=head,
                 micro=settings.micro_batcher(meta, "train", f.batch_size, f.micro_batch,
                                              f.precision))
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
    out = {"pretrain_seconds": meta["pretrain_seconds"]}
    if meta["upstream_acc"] is not None:  # a random-initialisation control has none
        out["upstream_acc"] = meta["upstream_acc"]
    return out


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
    save_checkpoint(backbone, within(zoo_root, name), meta)
    return meta


def _load_upstream(zoo: ZooConfig, families: list[str], data_root: str):
    from lightning_modules.sources import load_source, load_source_mix

    kwargs = dict(root=data_root, image_size=zoo.image_size, seed=zoo.seed,
                  n_train=zoo.source.n_train, n_val=zoo.source.n_val)
    if len(families) == 1:
        return load_source(families[0], **kwargs)
    return load_source_mix(list(families), **kwargs)
