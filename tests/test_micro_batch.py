"""The effective batch in micro-batches: accumulated gradients equal the whole batch's, an
out-of-memory error halves the micro-batch and the run goes on from the same step, and the size
that worked is remembered per (architecture, input size, precision, device)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_modules.backbones import Backbone, _prep
from lightning_modules.micro_batch import (
    MicroBatchCache,
    MicroBatcher,
    accumulate_gradients,
    cache_key,
    halvings,
    is_out_of_memory,
)
from lightning_modules.training import FineTuneModule, run_finetune


class OutOfMemoryAbove(nn.Module):
    """Raises the device's out-of-memory error for batches larger than ``limit``, as a GPU does
    when a micro-batch does not fit; counts the batch sizes it saw."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.seen = limit, []

    def forward(self, x):
        self.seen.append(len(x))
        if len(x) > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(x)} images")
        return x


def small_backbone(batchnorm: bool, limit: int | None = None, seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 8, 3, 2, 1)]
    layers += [nn.BatchNorm2d(8)] if batchnorm else [nn.GroupNorm(2, 8)]
    layers += [nn.ReLU()] + ([OutOfMemoryAbove(limit)] if limit is not None else [])
    layers += [nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Backbone(nn.Sequential(*layers), 16, _prep(16), {"first": [], "middle": [], "last": []})


def splits(n=32, seed=0):
    rng = np.random.default_rng(seed)

    def split(k):
        y = np.arange(k) % 3
        x = rng.integers(0, 255, (k, 16, 16, 3)).astype(np.uint8)
        return x, y.astype(np.int64)
    return {"train800": split(n), "val200": split(12), "test": split(12)}


def test_halvings_and_out_of_memory_errors_are_recognised():
    assert halvings(512) == [512, 256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert halvings(6) == [6, 3, 1]
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_gradients_of_4_micro_batches_of_8_equal_those_of_one_batch_of_32():
    backbone = small_backbone(batchnorm=False)
    module = FineTuneModule(backbone, nn.Linear(16, 3), lr=0.1, steps=1)
    module.set_modes()
    x = torch.as_tensor(splits()["train800"][0])
    y = torch.as_tensor(splits()["train800"][1])
    grads = {}
    for size in (32, 8):
        module.zero_grad(set_to_none=True)
        loss = accumulate_gradients(module.micro_batch_loss, x, y, size, lambda t: t.backward())
        grads[size] = ([p.grad.clone() for p in module.parameters() if p.requires_grad], loss)
    diff = max(float((a - b).abs().max()) for a, b in zip(grads[32][0], grads[8][0]))
    assert diff <= 1e-5
    assert float(grads[32][1]) == pytest.approx(float(grads[8][1]), abs=1e-6)


def test_a_fine_tune_in_micro_batches_matches_the_whole_batch_without_batchnorm():
    runs = {}
    for fixed in (None, 8):
        backbone = small_backbone(batchnorm=False)
        micro = MicroBatcher(32, fixed=fixed)
        runs[fixed] = run_finetune(backbone, splits(), 3, lr=0.05, steps=3, head_steps=2,
                                   batch_size=32, micro=micro, curve_every=1)
        runs[fixed]["state"] = backbone.state_dict()
    assert runs[8]["micro_batch"] == 8 and runs[None]["micro_batch"] == 32
    assert [s for s, _ in runs[8]["curve"]] == [0, 1, 2]
    for k, v in runs[None]["state"].items():
        assert torch.allclose(v, runs[8]["state"][k], atol=1e-5), k


def test_out_of_memory_in_a_step_halves_the_micro_batch_and_keeps_the_number_of_steps():
    # batches above 4 do not "fit": 16 -> 8 -> 4 on the first step, then 4 for the others
    backbone = small_backbone(batchnorm=True, limit=4)
    micro = MicroBatcher(16)
    run = run_finetune(backbone, splits(), 3, lr=0.05, steps=5, head_steps=0, batch_size=16,
                       micro=micro, curve_every=1)
    assert run["micro_batch"] == 4 and micro.shrinks == 2
    assert [s for s, _ in run["curve"]] == [0, 1, 2, 3, 4]  # 5 optimizer steps, none lost
    # the same step again from the same state: equal to a run at micro-batch 4 from the start,
    # BatchNorm's running statistics included (the failed attempts' updates were undone)
    twin = small_backbone(batchnorm=True, limit=4)
    run_finetune(twin, splits(), 3, lr=0.05, steps=5, head_steps=0, batch_size=16,
                 micro=MicroBatcher(16, fixed=4), curve_every=1)
    for k, v in twin.state_dict().items():
        assert torch.equal(v, backbone.state_dict()[k]), k


def test_out_of_memory_at_micro_batch_1_is_raised_not_retried_forever():
    backbone = small_backbone(batchnorm=False, limit=0)
    with pytest.raises(torch.OutOfMemoryError):
        run_finetune(backbone, splits(), 3, lr=0.05, steps=2, head_steps=0, batch_size=8,
                     micro=MicroBatcher(8))


def test_the_size_that_worked_is_cached_per_architecture_size_precision_and_device(tmp_path):
    cache = MicroBatchCache(tmp_path / "micro_batch.json")
    key = cache_key("train", "timm:resnet50", 224, "bf16-mixed", "NVIDIA H100 80GB HBM3")
    backbone = small_backbone(batchnorm=False, limit=4)
    run_finetune(backbone, splits(), 3, lr=0.05, steps=2, head_steps=0, batch_size=16,
                 micro=MicroBatcher(16, cache=cache, key=key))
    assert cache.get(key) == 4
    assert MicroBatcher(16, cache=cache, key=key).size == 4  # the next trial starts there
    other = cache_key("train", "timm:resnet50", 224, "bf16-mixed", "NVIDIA A100-SXM4-40GB")
    assert MicroBatcher(16, cache=cache, key=other).size == 16
    assert MicroBatcher(16, fixed=2, cache=cache, key=key).size == 2  # a fixed size wins


def test_runs_log_the_micro_batch_and_say_batchnorm_normalised_per_micro_batch():
    from sweeps.tracking.recorder import aggregate_finetune, micro_batch_params

    runs = {(0.01, 0): {"val_acc": 0.5, "test_acc": 0.5, "curve": [], "micro_batch": 128},
            (0.001, 0): {"val_acc": 0.5, "test_acc": 0.5, "curve": [], "micro_batch": 256}}
    assert micro_batch_params("finetune", runs, 512) == {
        "finetune/micro_batch": 128,
        "finetune/batchnorm_statistics": "per micro-batch of 128 (effective batch 512)"}
    logged = aggregate_finetune(runs)  # each run's own, as a metric of the pair run
    assert (logged["lr_0.01/rep0/micro_batch"], logged["lr_0.001/rep0/micro_batch"]) == (128, 256)
    assert micro_batch_params("probe", {"early_stop_micro_batch": 512}, 512) == {
        "probe/early_stop/micro_batch": 512,
        "probe/early_stop/batchnorm_statistics": "per batch of 512"}
    assert micro_batch_params("finetune", {(0.01, 0): {"val_acc": 0.5}}, 512) == {}
