"""The benchmarks' own code paths, at tiny sizes (their figures are measured by running them,
not here): the GPU benchmark runs on the CPU in CI."""

from __future__ import annotations

import json
import math

import pytest


@pytest.mark.slow
def test_gpu_benchmark_runs_tiny_on_the_cpu_through_the_bf16_channels_last_paths(capsys):
    from benchmarks.gpu import main

    assert main(["--tiny"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["tiny"] is True and out["device"] == "cpu" and out["image_size"] == 32
    for key in ("extract_images_per_s", "finetune_images_per_s", "extract_fraction_of_peak",
                "finetune_fraction_of_peak", "projected_gpu_hours", "matmul_tflops"):
        assert isinstance(out[key], float) and math.isfinite(out[key]) and out[key] > 0, key
    # ResNet-50 at 32 px: about 4.1 GMACs at 224 px scaled by (32/224)^2, x2 for FLOPs
    assert out["gflops_per_image"]["forward"] == pytest.approx(8.2 * (32 / 224) ** 2, rel=0.1)
    assert 2.5 < out["gflops_per_image"]["train_step"] / out["gflops_per_image"]["forward"] < 3.5
    assert out["peak_source"] == "bf16 matmul measured here"
    assert out["projection"]["images"] == 46 * 19 * 10 * 2500 * 512
    assert out["projected_gpu_hours"] == pytest.approx(
        out["projection"]["images"] / out["finetune_images_per_s"] / 3600)
    checks = out["checks"]
    assert checks["conv_weight_channels_last"] is True
    assert checks["features_on"] == "cpu" and checks["features_dtype"] == "torch.float32"
    assert checks["precision"] == "bf16-mixed"
    assert checks["activation_dtype_under_autocast"] == "torch.bfloat16"


@pytest.mark.slow
@pytest.mark.cluster
def test_tracking_benchmark_runs_tiny_against_its_own_server_stack(capsys):
    """4 models x 2 tasks through the recorder to a fresh local stack, the skip check, the report
    twice (the second reused), the runs table in headless Chromium."""
    from benchmarks.tracking import main

    assert main(["--tiny"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["tracking_tiny"] is True and out["tracking_pairs"] == 16
    assert out["tracking_requests_per_pair"] <= 6  # create, one batch, inputs, uploads, finish
    for key in ("tracking_log_s_per_pair", "tracking_skip_check_s", "tracking_report_s",
                "tracking_report_again_s", "tracking_ui_table_s"):
        assert isinstance(out[key], float) and out[key] > 0, key
    assert out["tracking_report_again_stderr_lines"] == 1  # the one line saying it is reused
    assert out["tracking_report_stderr_lines"] <= 20
