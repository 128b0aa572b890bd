"""Memory before launch: the meta-device trace is the real step's, bf16 follows CUDA autocast's
casts, and ``whichmodel validate`` gives each model of a GPU sweep its micro-batch or refuses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_modules.hub import build_architecture
from lightning_modules.memory import (
    GIB,
    StepMemory,
    estimate_step_memory,
    micro_batch_for,
    usable_bytes,
)
from sweeps.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "sweeps" / "configs"


def test_the_meta_device_trace_saves_exactly_what_the_same_step_saves_on_the_cpu():
    with torch.device("meta"):
        meta, _ = build_architecture("timm:resnet18")
    cpu, _ = build_architecture("timm:resnet18")
    assert estimate_step_memory(meta, 64) == estimate_step_memory(cpu, 64)


def test_bf16_mixed_saves_convolution_inputs_in_bfloat16_and_groupnorm_inputs_in_float32():
    with torch.device("meta"):
        bn, _ = build_architecture("timm:resnet18")
    fp32, bf16 = estimate_step_memory(bn, 64, "32-true"), estimate_step_memory(bn, 64, "bf16-mixed")
    assert 0.4 < bf16.saved_per_image / fp32.saved_per_image < 0.6  # BatchNorm runs in bf16 too
    assert bf16.saved_fixed >= fp32.params / 2 * 0.9  # the bf16 copies of the conv weights
    with torch.device("meta"):
        gn, _ = build_architecture("timm:resnetv2_50x1_bit")  # GroupNorm, autocast's fp32 list
    fp32, bf16 = estimate_step_memory(gn, 64, "32-true"), estimate_step_memory(gn, 64, "bf16-mixed")
    assert bf16.saved_per_image > 0.9 * fp32.saved_per_image


def test_the_micro_batch_is_the_largest_halving_of_the_batch_that_fits():
    memory = StepMemory(params=GIB, trainable=GIB, saved_fixed=0, saved_per_image=GIB // 10,
                        largest_per_image=0)  # 3 GiB + 0.1 GiB per image
    assert micro_batch_for(memory, 512, 3 * GIB + 512 * GIB // 10) == 512
    assert micro_batch_for(memory, 512, 10 * GIB) == 64
    assert micro_batch_for(memory, 512, 3 * GIB) is None
    assert usable_bytes(80) == pytest.approx((0.9 * 80 - 0.5) * GIB)


SWEEP = """
name: gpu-small
models: ["timm:resnet18", "timm:resnet152"]
tasks: [digits]
finetune: {{precision: bf16-mixed, batch_size: 512, micro_batch: {micro}}}
resources: {{finetune: {{cpus: 4, gpus: 1}}, gpu_memory_gib: {gib}}}
"""


def test_validate_refuses_a_model_whose_micro_batch_of_1_does_not_fit_the_gpu(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(SWEEP.format(micro="auto", gib=1))
    assert main(["validate", "--file-only", str(tmp_path / "s.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "key 'resources.gpu_memory_gib': 1 model(s) do not fit a 1 GiB GPU even at " \
           "micro-batch 1: resnet152 (~" in err
    assert "resnet18 " not in err  # it fits: 0.4 GiB is usable of 1


def test_validate_json_gives_each_models_peak_per_micro_batch_and_its_micro_batch(tmp_path,
                                                                                   capsys):
    (tmp_path / "s.yaml").write_text(SWEEP.format(micro=64, gib=80))
    assert main(["validate", "--file-only", "--json", str(tmp_path / "s.yaml")]) == 0
    memory = json.loads(capsys.readouterr().out)["memory"]
    for name in ("resnet18", "resnet152"):
        m = memory[name]
        assert sorted(map(int, m["peak_gib"])) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
        assert m["input_size"] == 224 and m["precision"] == "bf16-mixed"
        assert m["micro_batch"] == 64  # fits at 512 on 80 GiB, but the sweep fixes 64
        peaks = [m["peak_gib"][str(b)] for b in sorted(map(int, m["peak_gib"]))]
        assert peaks == sorted(peaks) and peaks[0] < peaks[-1]


@pytest.mark.slow
def test_validate_prints_each_catalog_models_micro_batch_on_an_80_gib_gpu(capsys):
    assert main(["validate", "--file-only", str(CONFIGS / "vtab1k.yaml")]) == 0
    out = capsys.readouterr().out
    assert "micro-batch on a GPU of 80 GiB" in out
    lines = {line.split()[0]: line for line in out.splitlines() if " px: ~" in line}
    assert len(lines) == 24
    assert "-> micro-batch 512 (no accumulation)" in lines["resnet50.tv_in1k"]
    # the 331 px NAS models need gradient accumulation on one 80 GiB GPU
    for name in ("nasnetalarge.tf_in1k", "pnasnet5large.tf_in1k"):
        micro = int(lines[name].split("-> micro-batch ")[1].split()[0])
        assert micro < 512 and "accumulated" in lines[name]
