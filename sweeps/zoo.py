"""The model zoo whichmodel builds itself: pre-training trials on Ray Tune.

    whichmodel zoo build sweeps/configs/zoo.yaml

One trial per model of the zoo file (Lightning, :mod:`lightning_modules.training`): generalists
trained on a mix of all source families, one expert per family, a rotation-prediction
self-supervised model, and random-initialisation controls (saved without a trial). A model whose
``meta.json`` carries the same recipe hash is not built again.
"""

from __future__ import annotations

import json
import sys
import time

from sweeps.config import ConfigError
from sweeps.paths import Paths
from sweeps.plan import Job
from sweeps.zoo_config import ZooConfig


def is_built(zoo: ZooConfig, name: str, paths: Paths) -> bool:
    meta_path = paths.zoo_root / name / "meta.json"
    weights = paths.zoo_root / name / "model.safetensors"
    if not (meta_path.is_file() and weights.is_file()):
        return False
    try:
        return json.loads(meta_path.read_text()).get("recipe_hash") == zoo.recipe_hash(name)
    except (OSError, ValueError):
        return False


def check_families(zoo: ZooConfig, source: str = "zoo file") -> None:
    from lightning_modules.sources import list_source_families

    known = list_source_families()
    for i, m in enumerate(zoo.models):
        for fam in m.upstream:
            if fam not in known:
                raise ConfigError(f"{source}: models[{i}].upstream: unknown source family {fam!r};"
                                  f" known: {', '.join(known)}")


class _ZooSink:
    """Counts finished pre-training trials (the checkpoints are written by the trials)."""

    def __init__(self, total: int):
        self.total, self.failures, self._progress = total, [], None
        _ = self.progress  # elapsed and estimates count from the start of the build

    def __getstate__(self):
        return {**self.__dict__, "_progress": None}

    @property
    def progress(self):
        from sweeps.progress import Progress

        if self._progress is None:
            self._progress = Progress({"pretrain": self.total})
        return self._progress

    def on_result(self, job: Job, metrics: dict) -> None:
        self.progress.update("pretrain")

    def on_error(self, job: Job, error: str) -> None:
        self.failures.append(job.model)
        self.progress.update("pretrain", failed=True)


def pretrain_cost(zoo: ZooConfig, name: str) -> float:
    """A model's pre-training arithmetic: forward FLOPs per image x steps x batch size."""
    from lightning_modules.backbones import create_backbone, forward_flops

    m = zoo.model(name)
    training = m.training or zoo.training
    backbone = create_backbone(m.arch, input_size=zoo.image_size, **m.arch_kwargs)
    return forward_flops(backbone, zoo.image_size) * training.steps * training.batch_size


def longest_first(zoo: ZooConfig, names: list[str]) -> list[str]:
    """The models to pre-train, costliest first (ties in zoo order): with fewer slots than
    models, the long trials start early instead of running alone at the end (the quickstart's
    zoo: the 4 ResNets first, about 30 s less on 2 cores)."""
    return sorted(names, key=lambda n: -pretrain_cost(zoo, n))


def build_zoo(zoo: ZooConfig, paths: Paths, only: list[str] | None = None,
              force: bool = False, stream=None) -> list[str]:
    """Build the zoo's missing models (all of ``only``, or the whole zoo); returns their names."""
    stream = stream or sys.stderr
    check_families(zoo)
    names = only or [m.name for m in zoo.models]
    todo = [n for n in names if force or not is_built(zoo, n, paths)]
    if not todo:
        print(f"[whichmodel] zoo: all {len(names)} models built in {paths.zoo_root}", file=stream)
        return []
    from lightning_modules.sources import load_source  # Ray and the rest: only to build
    from sweeps.trials import ZooTrialSettings, build_model, pretrain_trial
    from sweeps.tune_runner import TrialResources, init_ray, run_jobs
    controls = [n for n in todo if zoo.model(n).objective == "none"]
    trained = longest_first(zoo, [n for n in todo if n not in controls])
    if trained:
        init_ray()  # first: its workers preload torch and Lightning while the sources render
    # Source families are rendered once here, not by concurrent trials.
    families = sorted({f for n in todo for f in zoo.model(n).upstream})
    for fam in families:
        load_source(fam, paths.data_root, image_size=zoo.image_size, seed=zoo.seed,
                    n_train=zoo.source.n_train, n_val=zoo.source.n_val)
    for n in controls:
        build_model(zoo, n, paths.zoo_root, paths.data_root)
    sink = _ZooSink(len(trained))
    if trained:
        settings = ZooTrialSettings(zoo, str(paths.zoo_root), str(paths.data_root))
        run_jobs(pretrain_trial, [Job("pretrain", n) for n in trained], settings,
                 name=f"zoo-{zoo.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                 storage_path=paths.tune_root, sink=sink,
                 resources=TrialResources({"pretrain": (zoo.cpus_per_trial, 0)}))
    failures = sink.failures
    if failures:
        raise RuntimeError(f"zoo build: {len(failures)} model(s) failed: {', '.join(failures)}; "
                           f"see the Ray Tune logs under {paths.tune_root}")
    print(f"[whichmodel] zoo: built {len(todo)} model(s) in {paths.zoo_root}", file=stream)
    return todo
