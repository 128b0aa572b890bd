"""The fine-tune protocol's pieces: schedule, frozen stage 1, best-by-validation and median."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_modules.backbones import create_backbone
from lightning_modules.training import (
    best_by_validation,
    median_over_repeats,
    run_finetune,
    set_trainable,
    warmup_cosine,
)
from sweeps.tracking.recorder import aggregate_finetune


def test_warmup_then_cosine_schedule():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)


def _splits(n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    def split(n):
        y = np.arange(n) % n_classes
        x = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
        x[..., 0] += (y * 60).astype(np.uint8)[:, None, None]  # class shows in the red channel
        return x, y.astype(np.int64)
    return {"train800": split(96), "val200": split(30), "test": split(30)}


def test_head_only_stage_leaves_every_backbone_tensor_unchanged():
    torch.manual_seed(0)
    b = create_backbone("cnn", width=8)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    run = run_finetune(b, _splits(), 3, lr=1.0, steps=0, head_steps=60, batch_size=32)
    after = b.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert run["val_acc"] > 0.5  # the head alone learned (chance is 1/3)


def test_full_finetune_changes_the_backbone():
    torch.manual_seed(0)
    b = create_backbone("cnn", width=8)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    run_finetune(b, _splits(), 3, lr=0.05, steps=5, head_steps=5, batch_size=32)
    assert any(not torch.equal(before[k], v) for k, v in b.state_dict().items())


def test_surgical_trainable_selects_only_the_chosen_group():
    b = create_backbone("resnet")
    set_trainable(b, "last")
    last = {id(p) for m in b.block_groups()["last"] for p in m.parameters()}
    for p in b.parameters():
        assert p.requires_grad == (id(p) in last)
    with pytest.raises(ValueError, match="trainable must be"):
        set_trainable(b, "middl")


def test_best_by_validation_and_median_on_hand_made_numbers():
    runs = [{"val_acc": 0.7, "test_acc": 0.65}, {"val_acc": 0.8, "test_acc": 0.6},
            {"val_acc": 0.8, "test_acc": 0.9}]
    assert best_by_validation(runs)["test_acc"] == 0.6  # first of the tied best
    assert median_over_repeats([0.5, 0.9, 0.6, 0.7, 0.8]) == 0.7


def test_aggregate_finetune_picks_lr_per_repetition_then_takes_the_median():
    runs = {
        (0.01, 0): {"val_acc": 0.9, "test_acc": 0.80}, (0.01, 1): {"val_acc": 0.5, "test_acc": 0.50},
        (0.01, 2): {"val_acc": 0.7, "test_acc": 0.72},
        (0.001, 0): {"val_acc": 0.6, "test_acc": 0.99}, (0.001, 1): {"val_acc": 0.6, "test_acc": 0.61},
        (0.001, 2): {"val_acc": 0.7, "test_acc": 0.10},
    }
    out = aggregate_finetune(runs)
    # rep0 -> lr 0.01 (0.80); rep1 -> lr 0.001 (0.61); rep2 tie -> smaller lr 0.001 (0.10)
    assert out["test/acc"] == pytest.approx(0.61)
    assert out["val/acc"] == pytest.approx(0.7)
    assert [out[f"rep{i}/best_lr"] for i in range(3)] == [0.01, 0.001, 0.001]


def test_finetune_trains_batchnorm_statistics_and_surgical_mode_keeps_frozen_ones():
    torch.manual_seed(0)
    b = create_backbone("cnn", width=8)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    run_finetune(b, _splits(), 3, lr=0.05, steps=3, head_steps=3, batch_size=32)
    # stage 1's frozen pass leaves eval mode; stage 2 must switch BatchNorm back to training
    assert not torch.equal(before["body.block1.1.running_mean"], b.state_dict()["body.block1.1.running_mean"])

    torch.manual_seed(0)
    b = create_backbone("cnn", width=8)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    run_finetune(b, _splits(), 3, lr=0.05, steps=3, head_steps=3, batch_size=32, trainable="last")
    after = b.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("body.block4.") for k in changed), changed


def test_constant_schedule_keeps_the_learning_rate_and_cosine_decays_it():
    from lightning_modules.training import sgd_with_schedule

    for schedule, last in (("constant", 0.05), ("cosine", None)):
        cfg = sgd_with_schedule([torch.nn.Parameter(torch.zeros(1))], 0.05, 10, momentum=0.9,
                                warmup_steps=0, schedule=schedule)
        opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
        seen = []
        for _ in range(10):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert opt.param_groups[0]["momentum"] == 0.9
        if last is not None:
            assert seen == [pytest.approx(last)] * 10
        else:
            assert seen[0] == pytest.approx(0.05) and seen[-1] < 0.05 * 0.05  # decays to ~0


def test_early_stop_steps_run_at_a_constant_learning_rate_with_its_momentum(monkeypatch):
    """Appendix I: no warm-up, constant learning rate; the momentum the sweep file gives."""
    import lightning_modules.training as training
    from lightning_modules.training import short_finetune

    made = []
    real = training.sgd_with_schedule

    def recording(params, lr, steps, **kw):
        out = real(params, lr, steps, **kw)
        made.append((kw, out["optimizer"]))
        return out

    monkeypatch.setattr(training, "sgd_with_schedule", recording)
    torch.manual_seed(0)
    finetune = short_finetune(create_backbone("cnn", width=8), _splits(), 3, momentum=0.5)
    assert 0.0 <= finetune(lr=0.05, steps=4, batch_size=32, seed=0) <= 1.0
    (kw, opt), = made  # no head stage: one optimizer, stage 2's
    assert kw["schedule"] == "constant" and kw["warmup_steps"] == 0 and kw["momentum"] == 0.5
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # after its 4 steps, undecayed


def test_a_repetitions_head_is_trained_once_and_fine_tuned_at_each_learning_rate(monkeypatch):
    """Sec. 4.3: "(i) add a linear layer ... and train; (ii) fine-tune the obtained model twice,
    considering two learning rates": the trial's runs of one repetition start from one head,
    seeded by the repetition, not the learning rate."""
    import sweeps.trials as trials
    from lightning_modules.training import train_head
    from sweeps.config import SweepConfig
    from sweeps.plan import Job

    cfg = SweepConfig.model_validate({
        "name": "heads", "models": ["m"], "tasks": ["t"],
        "finetune": {"lrs": [0.05, 0.01], "head_steps": 5, "steps": 2, "batch_size": 32,
                     "repeats": 2, "profile": "test"}})
    data = type("Data", (), {"splits": _splits(), "num_classes": 3})()
    torch.manual_seed(0)
    backbone = create_backbone("cnn", width=8)
    starts, trained = [], []
    real_head = trials.repetition_head

    def counting(cfg_, job, data_, ftr, rep):
        trained.append(rep)
        return real_head(cfg_, job, data_, ftr, rep)

    def first_head(backbone_, splits, num_classes, *, head, lr, seed, **kw):
        starts.append((lr, seed, head.weight.detach().clone(), head.bias.detach().clone()))
        return {"val_acc": 0.5, "test_acc": 0.5, "curve": [], "test_pred": np.zeros(30, np.int16),
                "train_eval_s": 0.0}

    class Settings:
        def __init__(self):
            self.cfg = cfg

        def load_model(self, name):
            return backbone, {"arch": "cnn"}

        def load_task(self, name):
            return data

        def micro_batcher(self, meta, kind, effective, *a):
            from lightning_modules.micro_batch import MicroBatcher

            return MicroBatcher(effective)

    monkeypatch.setattr(trials, "repetition_head", counting)
    monkeypatch.setattr("lightning_modules.training.run_finetune", first_head)
    runs = tuple((lr, rep) for rep in (0, 1) for lr in (0.05, 0.01))
    trials.finetune_trial(Job("finetune", "m", "t", runs=runs), Settings())
    assert trained == [0, 1]  # once per repetition
    (_, _, w0a, b0a), (_, _, w0b, b0b), (_, _, w1a, _), _ = starts
    assert torch.equal(w0a, w0b) and torch.equal(b0a, b0b)  # both lrs from repetition 0's head
    assert not torch.equal(w0a, w1a) and w0a.abs().sum() > 0  # another repetition, another head
    # a per_run trial of the same repetition trains the same head (seeded by the repetition)
    ftr = torch.randn(96, backbone.feature_dim)
    job = Job("finetune", "m", "t", runs=((0.01, 0),))
    h1, _ = real_head(cfg, job, data, ftr, 0)
    h2, _ = real_head(cfg, job, data, ftr, 0)
    assert torch.equal(h1.weight, h2.weight)
    assert train_head(None, None, 4, 3, 0.1, 0, 8, 0)[0].weight.abs().sum() == 0  # 0 steps: zero


def test_the_sweep_file_states_the_early_stop_momentum_and_the_shared_heads_learning_rate():
    from sweeps.config import ConfigError, SweepConfig

    base = {"name": "s", "models": ["m"], "tasks": ["t"]}
    cfg = SweepConfig.model_validate({**base, "probe": {"proxies": ["linear", "early_stop"]}})
    assert cfg.probe.early_stop.momentum == 0.9 and cfg.finetune.head_lr == 0.01
    other = SweepConfig.model_validate({**base, "probe": {"proxies": ["linear", "early_stop"],
                                                          "early_stop": {"momentum": 0.0}}})
    assert other.protocol_hash("probe") != cfg.protocol_hash("probe")
    with pytest.raises((ConfigError, ValueError)):
        SweepConfig.model_validate({**base, "probe": {"early_stop": {"momentum": 1.0}}})
