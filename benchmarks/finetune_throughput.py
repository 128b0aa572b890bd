"""Phase 1 of :mod:`benchmarks.finetune`: the Lightning fine-tune against the same loop in plain
PyTorch (``lightning_over_raw_throughput``; the key's definition is in that module's docstring).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.harness import log

N_TRAIN, BATCH, NUM_CLASSES, LR = 800, 64, 10, 0.01
STEPS_REPS = {True: (300, 1), False: (300, 3)}  # (steps, best-of repetitions) by --quick


# --------------------------------------------------------------------------- data and models
def _data(n: int = N_TRAIN, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC 32 px images and labels, deterministic per seed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)
    return x, torch.randint(0, NUM_CLASSES, (n,), generator=g)


def _model(arch: str, seed: int = 0):
    from lightning_modules.backbones import create_backbone

    torch.manual_seed(seed)
    backbone = create_backbone(arch)
    return backbone, nn.Linear(backbone.feature_dim, NUM_CLASSES)


class _Stamps:
    """A Lightning callback recording the time of every batch end (made lazily a Callback)."""

    @staticmethod
    def make():
        import pytorch_lightning as pl

        class Stamps(pl.Callback):
            def __init__(self):
                self.t: list[float] = []

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                self.t.append(time.perf_counter())

        return Stamps()


def lightning_fit(arch: str, steps: int, seed: int = 0) -> tuple[float, list[float]]:
    """The project's path: FineTuneModule + make_trainer + fit -> (wall s, batch-end stamps)."""
    from lightning_modules.training import FineTuneModule, batch_loader, make_trainer

    backbone, head = _model(arch, seed)
    x, y = _data(seed=seed)
    loader = batch_loader(x, y, BATCH, seed)
    stamps = _Stamps.make()
    start = time.perf_counter()
    module = FineTuneModule(backbone, head, LR, steps)
    trainer = make_trainer(steps)
    trainer.callbacks.append(stamps)
    trainer.fit(module, loader)
    return time.perf_counter() - start, stamps.t


def raw_fit(arch: str, steps: int, seed: int = 0) -> tuple[float, list[float]]:
    """The same fine-tune as a plain PyTorch loop (same weights, batches, optimizer, schedule)."""
    from lightning_modules.training import batch_loader, set_trainable, sgd_with_schedule

    backbone, head = _model(arch, seed)
    x, y = _data(seed=seed)
    loader = batch_loader(x, y, BATCH, seed)
    start = time.perf_counter()
    set_trainable(backbone, "all")
    params = [p for p in (*backbone.parameters(), *head.parameters()) if p.requires_grad]
    cfg = sgd_with_schedule(params, LR, steps)
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    backbone.train()
    head.train()
    stamps, curve, step = [], [], 0
    while step < steps:
        for images, labels in loader:
            loss = F.cross_entropy(head(backbone.features(backbone.preprocess(images))), labels)
            if step % 10 == 0 or step == steps - 1:  # as FineTuneModule's loss curve
                curve.append((step, float(loss.detach())))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            stamps.append(time.perf_counter())
            if step >= steps:
                break
    return time.perf_counter() - start, stamps


def _median_step(stamps: list[float], skip: int = 10) -> float:
    return float(np.median(np.diff(stamps[skip:])))


# --------------------------------------------------------------------------- phase 1: throughput
def _throughput_arch(arch: str, steps: int, reps: int) -> dict[str, float]:
    raw_fit(arch, 5), lightning_fit(arch, 5)  # warm-up: lazy imports, kernel set-up
    runs: dict[str, list[tuple[float, float]]] = {"raw": [], "lightning": []}
    for rep in range(reps):
        order = ("raw", "lightning") if rep % 2 == 0 else ("lightning", "raw")
        for side in order:
            wall, stamps = (raw_fit if side == "raw" else lightning_fit)(arch, steps)
            runs[side].append((wall, _median_step(stamps)))
    raw_wall, raw_step = min(w for w, _ in runs["raw"]), min(s for _, s in runs["raw"])
    l_wall, l_step = min(w for w, _ in runs["lightning"]), min(s for _, s in runs["lightning"])
    return {"raw_e2e_s": raw_wall, "lightning_e2e_s": l_wall,
            "raw_images_per_s": steps * BATCH / raw_wall,
            "lightning_images_per_s": steps * BATCH / l_wall,
            "raw_step_ms": 1000 * raw_step, "lightning_step_ms": 1000 * l_step,
            "e2e_ratio": raw_wall / l_wall, "steady_ratio": raw_step / l_step}


def phase_throughput(args) -> dict[str, Any]:
    steps, reps = STEPS_REPS[args.quick]
    per_arch = {}
    for arch in ("cnn", "resnet"):
        per_arch[arch] = _throughput_arch(arch, steps, reps)
        log(f"throughput {arch}: "
             f"{json.dumps({k: round(v, 3) for k, v in per_arch[arch].items()})}")
    return {"lightning_over_raw_throughput": min(a["e2e_ratio"] for a in per_arch.values()),
            "lightning_over_raw_steady_state": min(a["steady_ratio"] for a in per_arch.values()),
            "throughput": {"steps": steps, "batch_size": BATCH, "reps": reps,
                           "threads": torch.get_num_threads(),
                           "key": "end-to-end fit wall time, worst architecture", **per_arch}}
