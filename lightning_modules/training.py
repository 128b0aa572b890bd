"""LightningModules that train: upstream pre-training of the zoo, and the fine-tune protocol.

Fine-tune protocol (Renggli et al. 2022, Sec. 4.3; the "linear head first" practice of Kumar et al.
2022, "Fine-Tuning can Distort Pretrained Features"):
stage 1 trains a new zero-initialised linear head on the frozen backbone, one per repetition
(:func:`train_head`); stage 2 fine-tunes a copy of it with the whole network at each learning
rate ("fine-tune the obtained model twice"), SGD (momentum 0.9), linear warm-up then cosine
decay. Stage 1 runs on features
computed once by a frozen forward pass: with the backbone frozen and in eval mode this is the same
optimisation as pushing images through it at every step, at a fraction of the cost.

Small tasks live as tensors on the training device (:class:`DeviceBatches`); no DataLoader worker
processes (VTAB-1k tasks are 1,000 images, worker start-up would cost more than the epoch); bf16
autocast on GPU (``make_trainer``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.backbones import Backbone, extract_features
from lightning_modules.micro_batch import (
    MicroBatcher,
    accumulate_gradients,
    restore_buffers,
    run_with_halving,
    snapshot_buffers,
)


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


def make_trainer(max_steps: int, accelerator: str = "auto",
                 callbacks: list[pl.Callback] | None = None, precision: str = "auto") -> pl.Trainer:
    """A quiet Trainer: no logger, checkpoints or progress bar (results go to MLflow from the driver).

    ``precision="auto"``: bf16 autocast on a GPU, float32 on the CPU.
    """
    if precision == "auto":
        on_gpu = accelerator in ("auto", "gpu") and torch.cuda.is_available()
        precision = "bf16-mixed" if on_gpu else "32-true"
    return pl.Trainer(max_steps=max_steps, accelerator=accelerator, devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, precision=precision,
                      limit_val_batches=0, callbacks=callbacks or [])


class DeviceBatches:
    """Shuffled minibatches of tensors that already sit on the training device.

    An iterable Lightning accepts in place of a DataLoader: no worker processes and no per-item
    collation, one index operation per batch. Each epoch reshuffles with a seeded generator.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
        self.x, self.y = x, y
        self.batch_size = min(batch_size, len(x))
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return max(1, len(self.x) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=self.gen).to(self.x.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def batch_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int,
            device: torch.device | None = None) -> DeviceBatches:
    device = device or _device()
    return DeviceBatches(x.to(device), y.to(device), batch_size, seed)


def sgd_with_schedule(params, lr: float, steps: int, momentum: float = 0.9,
                      weight_decay: float = 0.0, warmup_steps: int | None = None,
                      schedule: str = "cosine"):
    """SGD with ``momentum`` and a per-step schedule: ``cosine`` (linear warm-up over
    ``warmup_steps``, default 5% of the steps, then cosine decay to 0) or ``constant`` (the
    learning rate throughout: the early-stop proxy, Appendix I)."""
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be cosine or constant; got {schedule!r}")
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    warm = default_warmup(steps) if warmup_steps is None else warmup_steps
    multiplier = ((lambda s: 1.0) if schedule == "constant"
                  else (lambda s: warmup_cosine(s, steps, warm)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, multiplier)
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
        self.backbone, self.objective = backbone.to(memory_format=torch.channels_last), objective
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

    def on_train_start(self) -> None:
        self.train()

    def training_step(self, batch, batch_idx):
        x, y = self._inputs(*batch)
        x = _random_shift(x).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(self.backbone.source_logits(x), y)
        return loss

    def configure_optimizers(self):
        return sgd_with_schedule(self.parameters(), self.lr, self.steps, weight_decay=self.weight_decay)


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
    make_trainer(steps).fit(module, batch_loader(x, y, batch_size, seed))
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
        return sgd_with_schedule(self.parameters(), self.lr, self.steps)


class FineTuneModule(pl.LightningModule):
    """Stage 2: the whole network (or one surgical block group) and the head, trained together.

    Each step takes the effective batch and runs it in micro-batches of ``micro.size``,
    accumulating the gradients before one optimizer step; an out-of-memory error halves the
    micro-batch and runs the same step again from the same state (BatchNorm's running
    statistics restored), so a run keeps its number of steps (:mod:`lightning_modules.micro_batch`).
    """

    def __init__(self, backbone: Backbone, head: nn.Linear, lr: float, steps: int,
                 trainable: str = "all", warmup_steps: int | None = None, curve_every: int = 10,
                 micro: MicroBatcher | None = None, schedule: str = "cosine",
                 momentum: float = 0.9):
        super().__init__()
        self.automatic_optimization = False  # micro-batches, then one optimizer step
        self.micro = micro
        # channels-last: the convolutions run ~1.4x faster on the CPU (oneDNN), and it is what
        # GPUs' tensor cores want; the same arithmetic, values in another memory order
        self.backbone = backbone.to(memory_format=torch.channels_last)
        self.head = head
        self.lr, self.steps, self.warmup_steps = lr, steps, warmup_steps
        self.schedule, self.momentum = schedule, momentum
        self.curve_every = curve_every
        self.curve: list[tuple[int, float]] = []  # (step, training loss), for the MLflow pair run
        self.trainable = trainable
        set_trainable(backbone, trainable)

    def set_modes(self) -> None:
        """Training mode for what trains, eval mode for frozen blocks (their BatchNorm statistics
        stay as pre-trained). Lightning keeps submodules' modes as it finds them, and the frozen
        forward pass of stage 1 leaves the backbone in eval mode."""
        self.train()
        if self.trainable != "all":
            self.backbone.eval()
            for module in self.backbone.block_groups().get(self.trainable, []):
                module.train()

    def on_train_start(self) -> None:
        self.set_modes()

    def micro_batch_loss(self, images: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.backbone.preprocess(images).contiguous(memory_format=torch.channels_last)
        return F.cross_entropy(self.head(self.backbone.features(x)), y)

    def training_step(self, batch, batch_idx):
        images, y = batch
        opt, sched = self.optimizers(), self.lr_schedulers()
        if self.micro is None:
            self.micro = MicroBatcher(len(images))
        buffers = snapshot_buffers(self)

        def step(size: int) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            return accumulate_gradients(self.micro_batch_loss, images, y, size, self.manual_backward)

        def undo() -> None:
            opt.zero_grad(set_to_none=True)
            restore_buffers(buffers)

        loss = run_with_halving(step, self.micro, undo)
        opt.step()
        sched.step()
        step_ = self.global_step - 1  # the optimizer step just taken
        if step_ % self.curve_every == 0 or step_ == self.steps - 1:
            self.curve.append((step_, float(loss)))

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return sgd_with_schedule(params, self.lr, self.steps, momentum=self.momentum,
                                 warmup_steps=self.warmup_steps, schedule=self.schedule)


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
def _predict(features: torch.Tensor, head: nn.Module) -> np.ndarray:
    return head(features).argmax(1).cpu().numpy()


def _accuracy(features: torch.Tensor, labels: np.ndarray, head: nn.Module) -> float:
    return float((_predict(features, head) == np.asarray(labels)).mean())


@torch.no_grad()
def evaluate(module: FineTuneModule, images: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of a fine-tune in progress (eval mode for the pass, training modes restored)."""
    device = next(module.parameters()).device
    feats, _ = extract_features(module.backbone, images, device=device)
    acc = _accuracy(feats.to(device), labels, module.head)
    module.set_modes()
    return acc


class StepClock(pl.Callback):
    """Seconds inside training steps (batch start to batch end: forward, backward, optimizer),
    summed; what a fit spends around them (set-up, data loading, teardown) is left out."""

    def __init__(self):
        self.seconds, self._start = 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seconds += time.perf_counter() - self._start


class ValidationCurve(pl.Callback):
    """Validation accuracy every ``every`` steps of stage 2 (the rungs of a budgeted search:
    a search can replay these instead of training again); ``seconds`` spent evaluating."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, every: int, offset: int):
        self.images, self.labels, self.every, self.offset = images, labels, every, offset
        self.points: list[tuple[int, float]] = []
        self.seconds = 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0:
            start = time.perf_counter()
            self.points.append((self.offset + trainer.global_step,
                                evaluate(module, self.images, self.labels)))
            self.seconds += time.perf_counter() - start


def train_head(features: torch.Tensor | None, labels, feature_dim: int, num_classes: int,
               lr: float, steps: int, batch_size: int, seed: int) -> tuple[nn.Linear, float]:
    """Stage 1 of the fine-tune protocol: a zero-initialised linear head trained for ``steps``
    on the frozen backbone's ``features`` of the training images (the head is small enough to
    train on the CPU: the same head on every machine); returns it and the seconds inside the
    training steps. ``steps=0``: the zero head (``features`` may be None)."""
    pl.seed_everything(seed, workers=False, verbose=False)
    module = LinearHeadModule(feature_dim, num_classes, lr, steps)
    if steps <= 0:
        return module.head, 0.0
    clock = StepClock()
    make_trainer(steps, accelerator="cpu", callbacks=[clock]).fit(
        module, batch_loader(features.cpu(), torch.as_tensor(labels), batch_size, seed,
                             torch.device("cpu")))
    return module.head, clock.seconds


def run_finetune(backbone: Backbone, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                 num_classes: int, lr: float, steps: int, head_steps: int, batch_size: int,
                 seed: int = 0, head_lr: float | None = None, trainable: str = "all",
                 warmup_steps: int | None = None, curve_every: int = 10,
                 evaluate_test: bool = True, callbacks: list[pl.Callback] | None = None,
                 precision: str = "auto", train_features: torch.Tensor | None = None,
                 val_every: int = 0, micro: MicroBatcher | None = None,
                 head: nn.Linear | None = None, schedule: str = "cosine",
                 momentum: float = 0.9) -> dict[str, Any]:
    """One fine-tune run at one learning rate: head on frozen features, then the network.

    Returns validation and test accuracy (the caller picks the learning rate by validation),
    the training-loss curve of stage 2 and the seconds spent (``seconds``; ``train_eval_s`` of
    them inside training steps and evaluation, :class:`StepClock`). ``head_steps=0`` leaves the head at zero (the
    early-stop proxy's protocol); ``warmup_steps=0`` drops the warm-up. ``train_features``: the
    frozen backbone's features of the training images when the caller has them already (they
    are the same for every run of a pair). ``val_every``: also the validation accuracy every so
    many stage-2 steps (``val_curve``, steps counted from the head stage's start). ``seed``
    seeds the run's data order and everything random in it. ``micro``: the micro-batch of
    stage 2 (default: the whole batch at once); ``micro_batch`` in the result is the size the
    run ended with (smaller than it started after an out-of-memory error). ``head``: a head
    trained already (:func:`train_head`; the fine-tune protocol trains one per repetition and
    fine-tunes a copy of it at every learning rate, Sec. 4.3): stage 1 is skipped.
    ``schedule``/``momentum``: stage 2's (:func:`sgd_with_schedule`).
    """
    pl.seed_everything(seed, workers=False, verbose=False)
    start = time.perf_counter()
    (xtr, ytr), (xva, yva), (xte, yte) = splits["train800"], splits["val200"], splits["test"]
    ytr_t = torch.as_tensor(ytr)
    inside = 0.0  # seconds in training and evaluation

    # Stage 1: head on the frozen backbone (unless the caller trained it).
    if head is not None:
        head = copy.deepcopy(head)
    else:
        ftr = (train_features if train_features is not None or head_steps == 0
               else extract_features(backbone, xtr)[0])
        head, seconds = train_head(ftr, ytr, backbone.feature_dim, num_classes, head_lr or lr,
                                   head_steps, batch_size, seed)
        inside += seconds

    # Stage 2: full (or surgical) fine-tune.
    curve: list[tuple[int, float]] = []
    val_curve = ValidationCurve(xva, yva, val_every, head_steps) if val_every > 0 else None
    if steps > 0 and trainable != "head":
        module = FineTuneModule(backbone, head, lr, steps, trainable, warmup_steps, curve_every,
                                micro=micro or MicroBatcher(min(batch_size, len(xtr))),
                                schedule=schedule, momentum=momentum)
        clock = StepClock()  # first, so that its batch end comes before the validation's
        make_trainer(steps, callbacks=[clock, *(callbacks or []),
                                       *([val_curve] if val_curve else [])],
                     precision=precision).fit(
            module, batch_loader(torch.as_tensor(xtr), ytr_t, batch_size, seed))
        inside += clock.seconds + (val_curve.seconds if val_curve else 0.0)
        backbone, head, curve = module.backbone, module.head, module.curve
        out_micro = module.micro.size
    t = time.perf_counter()
    backbone.eval()
    head = head.cpu().eval()
    fva, _ = extract_features(backbone, xva)
    out = {"val_acc": _accuracy(fva.cpu(), yva, head), "curve": curve}
    if steps > 0 and trainable != "head":
        out["micro_batch"] = out_micro
    if evaluate_test:
        fte, _ = extract_features(backbone, xte)
        pred = _predict(fte.cpu(), head)
        out["test_acc"] = float((pred == np.asarray(yte)).mean())
        out["test_pred"] = pred.astype(np.int16)  # per test example, for the report's resampling
    inside += time.perf_counter() - t
    if val_curve is not None:
        out["val_curve"] = val_curve.points
    out["seconds"] = time.perf_counter() - start
    out["train_eval_s"] = inside
    return out


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


def short_finetune(backbone: Backbone, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                   num_classes: int, micro_batch: Callable[[int], MicroBatcher] | None = None,
                   precision: str = "auto", momentum: float = 0.9) -> Callable[..., float]:
    """``finetune(lr, steps, batch_size, seed) -> validation accuracy``: a few steps of fine-tuning
    a fresh copy of ``backbone`` from a zero head, no head-only stage, no warm-up, a constant
    learning rate, SGD with ``momentum`` (the training of the early-stop proxy, Appendix I,
    :mod:`selection.proxies.early_stop`). The test split is never touched.
    ``finetune.train_eval_s`` adds up the seconds its runs spent in training steps and
    evaluation. ``micro_batch(batch_size)``: the micro-batcher of its steps (one for all of its
    runs, so a size halved once stays halved); ``finetune.micro_batch`` is the size it ended with."""
    def finetune(lr: float, steps: int, batch_size: int, seed: int) -> float:
        if finetune.micro is None and micro_batch is not None:
            finetune.micro = micro_batch(batch_size)
        run = run_finetune(copy.deepcopy(backbone), splits, num_classes, lr=lr, steps=steps,
                           head_steps=0, batch_size=batch_size, seed=seed, warmup_steps=0,
                           schedule="constant", momentum=momentum, evaluate_test=False,
                           precision=precision, micro=finetune.micro)
        finetune.train_eval_s += run["train_eval_s"]
        finetune.micro_batch = run.get("micro_batch")
        return run["val_acc"]

    finetune.train_eval_s, finetune.micro, finetune.micro_batch = 0.0, None, None
    return finetune
