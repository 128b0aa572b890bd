"""The model zoo whichmodel builds itself: pre-training trials on Ray Tune.

    whichmodel zoo build sweeps/configs/zoo.yaml

One trial per model of the zoo file (Lightning, :mod:`lightning_modules.training`): generalists
trained on a mix of all source families, one expert per family, a rotation-prediction
self-supervised model, and random-initialisation controls (saved without a trial). A model whose
``meta.json`` carries the same recipe hash is not built again.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps.config import ConfigError, ZooConfig
from sweeps.paths import Paths


# Bump when the architectures or the pre-training code change what a recipe produces.
ZOO_FORMAT = 2


def recipe_hash(zoo: ZooConfig, name: str) -> str:
    recipe = {"format": ZOO_FORMAT, **zoo.recipe(name)}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def is_built(zoo: ZooConfig, name: str, paths: Paths) -> bool:
    meta_path = paths.zoo_root / name / "meta.json"
    weights = paths.zoo_root / name / "model.safetensors"
    if not (meta_path.is_file() and weights.is_file()):
        return False
    try:
        return json.loads(meta_path.read_text()).get("recipe_hash") == recipe_hash(zoo, name)
    except (OSError, ValueError):
        return False


def check_families(zoo: ZooConfig, source: str = "zoo file") -> None:
    from lightning_modules.tasks import list_source_families

    known = list_source_families()
    for i, m in enumerate(zoo.models):
        for fam in m.upstream:
            if fam not in known:
                raise ConfigError(f"{source}: models[{i}].upstream: unknown source family {fam!r};"
                                  f" known: {', '.join(known)}")


@dataclass(frozen=True)
class _ZooSettings:
    zoo: ZooConfig
    zoo_root: str
    data_root: str


def _load_upstream(zoo: ZooConfig, families: list[str], data_root: str):
    from lightning_modules.tasks import load_source, load_source_mix

    kwargs = dict(root=data_root, image_size=zoo.image_size, seed=zoo.seed,
                  n_train=zoo.source.n_train, n_val=zoo.source.n_val)
    if len(families) == 1:
        return load_source(families[0], **kwargs)
    return load_source_mix(list(families), **kwargs)


def build_model(zoo: ZooConfig, name: str, zoo_root: str | Path, data_root: str | Path) -> dict:
    """Pre-train one zoo model and save it; returns its metadata. Also the Tune trial body."""
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
    import torch

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
        "source_class_names": class_names, "recipe_hash": recipe_hash(zoo, name),
        "pretrain_seconds": round(seconds, 2),
    }
    save_checkpoint(backbone, Path(zoo_root) / name, meta)
    return meta


def _zoo_trial(job: dict, settings: _ZooSettings) -> dict:
    meta = build_model(settings.zoo, job["model"], settings.zoo_root, settings.data_root)
    return {"upstream_acc": meta["upstream_acc"] or 0.0, "pretrain_seconds": meta["pretrain_seconds"]}


class _ZooSink:
    """Counts finished pre-training trials (the checkpoints are written by the trials)."""

    def __init__(self, total: int):
        self.total, self.failures, self._progress = total, [], None
        _ = self.progress  # elapsed and estimates count from the start of the build

    def __getstate__(self):
        return {**self.__dict__, "_progress": None}

    @property
    def progress(self):
        from sweeps.tune_runner import Progress

        if self._progress is None:
            self._progress = Progress({"pretrain": self.total})
        return self._progress

    def on_result(self, job: dict, metrics: dict) -> None:
        self.progress.update("pretrain")

    def on_error(self, job: dict, error: str) -> None:
        self.failures.append(job["model"])
        self.progress.update("pretrain", failed=True)


def build_zoo(zoo: ZooConfig, paths: Paths, only: list[str] | None = None,
              force: bool = False, stream=None) -> list[str]:
    """Build the zoo's missing models (all of ``only``, or the whole zoo); returns their names."""
    from lightning_modules.tasks import load_source
    from sweeps.tune_runner import TrialResources, init_ray, run_jobs

    stream = stream or sys.stderr
    check_families(zoo)
    names = only or [m.name for m in zoo.models]
    todo = [n for n in names if force or not is_built(zoo, n, paths)]
    if not todo:
        print(f"[whichmodel] zoo: all {len(names)} models built in {paths.zoo_root}", file=stream)
        return []
    # Source families are rendered once here, not by concurrent trials.
    families = sorted({f for n in todo for f in zoo.model(n).upstream})
    for fam in families:
        load_source(fam, paths.data_root, image_size=zoo.image_size, seed=zoo.seed,
                    n_train=zoo.source.n_train, n_val=zoo.source.n_val)
    controls = [n for n in todo if zoo.model(n).objective == "none"]
    for n in controls:
        build_model(zoo, n, paths.zoo_root, paths.data_root)
    trained = [n for n in todo if n not in controls]
    sink = _ZooSink(len(trained))
    if trained:
        init_ray()
        settings = _ZooSettings(zoo, str(paths.zoo_root), str(paths.data_root))
        run_jobs(_zoo_trial, [{"kind": "pretrain", "model": n} for n in trained], settings,
                 name=f"zoo-{zoo.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                 storage_path=paths.tune_root, sink=sink,
                 resources=TrialResources({"pretrain": (zoo.cpus_per_trial, 0)}))
    failures = sink.failures
    if failures:
        raise RuntimeError(f"zoo build: {len(failures)} model(s) failed: {', '.join(failures)}; "
                           f"see the Ray Tune logs under {paths.tune_root}")
    print(f"[whichmodel] zoo: built {len(todo)} model(s) in {paths.zoo_root}", file=stream)
    return todo
