"""A tiny zoo and sweep shared by the end-to-end tests (2 small CNNs, a few steps each)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ZOO = """
name: tiny-zoo
image_size: 32
source: {n_train: 200, n_val: 50}
training: {steps: 10, batch_size: 32, lr: 0.05}
models:
  - {name: tiny-shapes, arch: cnn, arch_kwargs: {width: 8}, upstream: [shapes]}
  - {name: tiny-random, arch: cnn, arch_kwargs: {width: 8}, objective: none}
"""

SWEEP = """
name: {name}
zoo: zoo.yaml
models: all
tasks: {tasks}
probe:
  proxies: [linear, knn, logme, leep, nce, hscore, hscore_lw, transrate, early_stop]
  linear: {{lrs: [0.1, 0.01], steps: 50, repeats: 2, batch_size: 64}}
  early_stop: {{lrs: [0.01, 0.001], steps: 3, repeats: 1, batch_size: 32}}
  save_features: true
finetune:
  profile: test-tiny
  lrs: [0.01, 0.001]
  head_steps: 5
  steps: {steps}
  batch_size: 32
  repeats: 1
resources: {{probe: {{cpus: 1}}, finetune: {{cpus: 1}}}}
report: {{max_budget: 3}}
"""


def sweep(name: str, tasks: str = "[digits, sprite_location]", steps: int = 5) -> str:
    return SWEEP.format(name=name, tasks=tasks, steps=steps)


@contextmanager
def zoo_home(root: Path, zoo: str = ZOO, **sweeps: str) -> Iterator[Path]:
    """``root`` with the zoo file, the named sweep files, the zoo built into ``root/home`` and
    ``WHICHMODEL_HOME`` pointing there (tracking at its local store) until the block ends."""
    import pytest

    from sweeps.cli import main

    (root / "zoo.yaml").write_text(zoo)
    for name, text in sweeps.items():
        (root / f"{name}.yaml").write_text(text)
    mp = pytest.MonkeyPatch()
    mp.setenv("WHICHMODEL_HOME", str(root / "home"))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        assert main(["zoo", "build", str(root / "zoo.yaml")]) == 0
        yield root
    finally:
        mp.undo()
