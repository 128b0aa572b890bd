"""LightningModules that train: upstream pre-training of the zoo, and the fine-tune protocol.

Fine-tune protocol (DESIGN.md, Renggli et al. 2022; CS330 "linear head first"):
stage 1 trains a new zero-initialised linear head on the frozen backbone; stage 2 fine-tunes the
whole network with SGD (momentum 0.9), linear warm-up then cosine decay. Stage 1 runs on features
computed once by a frozen forward pass: with the backbone frozen and in eval mode this is the same
optimisation as pushing images through it at every step, at a fraction of the cost.

Small tasks live as tensors on the training device; no DataLoader worker processes (VTAB-1k tasks
are 1,000 images, worker start-up would cost more than the epoch).
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.backbones import Backbone, extract_features


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up to 1 over ``warmup_steps``, then cosine to 0."""
    if total_steps <= 0:
        return 1.0
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def default_warmup(total_steps: int) -> int:
    """Warm-up length: 5% of the steps (BiT's hyper-rule uses a short fixed warm-up too)."""
    return max(0, int(round(0.05 * total_steps)))


def make_trainer(max_steps: int, accelerator: str = "auto") -> pl.Trainer:
    """A quiet Trainer: no logger, checkpoints or progress bar (results go to MLflow from the driver)."""
    precision = "bf16-mixed" if accelerator in ("auto", "gpu") and torch.cuda.is_available() else "32-true"
    return pl.Trainer(max_steps=max_steps, accelerator=accelerator, devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, precision=precision,
                      limit_val_batches=0)


def _loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=min(batch_size, len(x)), shuffle=True,
                      generator=gen, num_workers=0, drop_last=len(x) > batch_size)


def _sgd(params, lr: float, steps: int, momentum: float = 0.9, weight_decay: float = 0.0):
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    warm = default_warmup(steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, warm))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# --------------------------------------------------------------------------- pre-training
class PretrainModule(pl.LightningModule):
    """Upstream training of a zoo model: supervised on source labels, or rotation prediction.

    ``objective="rotation"`` is the self-supervised pretext task of Gidaris et al. (2018): every
    image is rotated by k * 90 degrees and the source head predicts k.
    """

    def __init__(self, backbone: Backbone, objective: str, lr: float, steps: int,
                 weight_decay: float = 5e-4):
        super().__init__()
        if objective not in ("supervised", "rotation"):
            raise ValueError(f"unknown pre-training objective {objective!r}")
        self.backbone, self.objective = backbone, objective
        self.lr, self.steps, self.weight_decay = lr, steps, weight_decay

    def _inputs(self, images: torch.Tensor, labels: torch.Tensor):
        x = self.backbone.preprocess(images)
        if self.objective == "rotation":
            k = torch.randint(0, 4, (len(x),), device=x.device)
            x = x.clone()
            for quarter in (1, 2, 3):
                mask = k == quarter
                x[mask] = torch.rot90(x[mask], quarter, dims=(2, 3))
            labels = k
        return x, labels

    def training_step(self, batch, batch_idx):
        x, y = self._inputs(*batch)
        x = _random_shift(x)
        loss = F.cross_entropy(self.backbone.source_logits(x), y)
        return loss

    def configure_optimizers(self):
        return _sgd(self.parameters(), self.lr, self.steps, weight_decay=self.weight_decay)


def _random_shift(x: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (reflect padding), the standard small-image augmentation."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx, dy = np.random.randint(0, 2 * pad + 1, size=2)
    return padded[:, :, dy:dy + h, dx:dx + w]


@torch.no_grad()
def source_accuracy(backbone: Backbone, images: np.ndarray, labels: np.ndarray,
                    objective: str = "supervised") -> float:
    """Held-out upstream accuracy (for rotation: accuracy of predicting the rotation)."""
    backbone.eval()
    images_t = torch.as_tensor(images)
    correct = total = 0
    for start in range(0, len(images_t), 512):
        x = backbone.preprocess(images_t[start:start + 512])
        y = torch.as_tensor(labels[start:start + 512])
        if objective == "rotation":
            for k in range(4):
                pred = backbone.source_logits(torch.rot90(x, k, dims=(2, 3))).argmax(1)
                correct += int((pred == k).sum())
                total += len(x)
        else:
            correct += int((backbone.source_logits(x).argmax(1) == y).sum())
            total += len(x)
    return correct / max(1, total)


def run_pretrain(backbone: Backbone, train: tuple[np.ndarray, np.ndarray], objective: str,
                 steps: int, batch_size: int, lr: float, seed: int = 0) -> float:
    """Train ``backbone`` (and its source head) upstream; returns the wall seconds."""
    pl.seed_everything(seed, workers=False, verbose=False)
    np.random.seed(seed)
    module = PretrainModule(backbone, objective, lr, steps)
    x, y = torch.as_tensor(train[0]), torch.as_tensor(train[1])
    start = time.perf_counter()
    make_trainer(steps).fit(module, _loader(x, y, batch_size, seed))
    backbone.eval()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- fine-tuning
class LinearHeadModule(pl.LightningModule):
    """Stage 1: a zero-initialised linear head on frozen features."""

    def __init__(self, feature_dim: int, num_classes: int, lr: float, steps: int):
        super().__init__()
        self.head = nn.Linear(feature_dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.lr, self.steps = lr, steps

    def training_step(self, batch, batch_idx):
        f, y = batch
        return F.cross_entropy(self.head(f), y)

    def configure_optimizers(self):
        return _sgd(self.parameters(), self.lr, self.steps)


class FineTuneModule(pl.LightningModule):
    """Stage 2: the whole network (or one surgical block group) and the head, trained together."""

    def __init__(self, backbone: Backbone, head: nn.Linear, lr: float, steps: int,
                 trainable: str = "all"):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.lr, self.steps = lr, steps
        set_trainable(backbone, trainable)

    def training_step(self, batch, batch_idx):
        images, y = batch
        logits = self.head(self.backbone.features(self.backbone.preprocess(images)))
        return F.cross_entropy(logits, y)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return _sgd(params, self.lr, self.steps)


def set_trainable(backbone: Backbone, trainable: str) -> None:
    """``all``, ``head`` (nothing in the backbone) or one block group: ``first|middle|last``."""
    groups = backbone.block_groups()
    if trainable not in ("all", "head", *groups):
        raise ValueError(f"trainable must be all, head or one of {sorted(groups)}; got {trainable!r}")
    for p in backbone.parameters():
        p.requires_grad = trainable == "all"
    if trainable in groups:
        for module in groups[trainable]:
            for p in module.parameters():
                p.requires_grad = True
    if backbone.source_head is not None:
        for p in backbone.source_head.parameters():
            p.requires_grad = False


@torch.no_grad()
def _accuracy(features: torch.Tensor, labels: np.ndarray, head: nn.Module) -> float:
    pred = head(features).argmax(1).cpu().numpy()
    return float((pred == np.asarray(labels)).mean())


def run_finetune(backbone: Backbone, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                 num_classes: int, lr: float, steps: int, head_steps: int, batch_size: int,
                 seed: int = 0, head_lr: float | None = None, trainable: str = "all",
                 ) -> dict[str, Any]:
    """One fine-tune run at one learning rate: head on frozen features, then the network.

    Returns validation and test accuracy (the caller picks the learning rate by validation)
    and the seconds spent.
    """
    pl.seed_everything(seed, workers=False, verbose=False)
    start = time.perf_counter()
    (xtr, ytr), (xva, yva), (xte, yte) = splits["train800"], splits["val200"], splits["test"]
    ytr_t = torch.as_tensor(ytr)

    # Stage 1: head on the frozen backbone, from one forward pass.
    ftr, _ = extract_features(backbone, xtr, device="cpu")
    head_module = LinearHeadModule(backbone.feature_dim, num_classes, head_lr or lr, head_steps)
    if head_steps > 0:
        make_trainer(head_steps, accelerator="cpu").fit(
            head_module, _loader(ftr, ytr_t, batch_size, seed))
    head = head_module.head

    # Stage 2: full (or surgical) fine-tune.
    if steps > 0 and trainable != "head":
        module = FineTuneModule(backbone, head, lr, steps, trainable)
        make_trainer(steps).fit(module, _loader(torch.as_tensor(xtr), ytr_t, batch_size, seed))
        backbone, head = module.backbone, module.head
    backbone.eval()
    head = head.cpu().eval()
    fva, _ = extract_features(backbone, xva)
    fte, _ = extract_features(backbone, xte)
    return {"val_acc": _accuracy(fva.cpu(), yva, head), "test_acc": _accuracy(fte.cpu(), yte, head),
            "seconds": time.perf_counter() - start}


def best_by_validation(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """The run with the highest validation accuracy; ties go to the earlier run (list order)."""
    if not runs:
        raise ValueError("no fine-tune runs to choose from")
    best = runs[0]
    for run in runs[1:]:
        if run["val_acc"] > best["val_acc"]:
            best = run
    return best


def median_over_repeats(values: Sequence[float]) -> float:
    if not len(values):
        raise ValueError("no repetitions to take the median of")
    return float(np.median(np.asarray(values, dtype=np.float64)))
