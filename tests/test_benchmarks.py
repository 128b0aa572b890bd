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
    assert out["device_tflops"] == pytest.approx(  # the cost estimate's convention: 3 x forward
        out["finetune_images_per_s"] * 3 * out["gflops_per_image"]["forward"] / 1e3)
    checks = out["checks"]
    assert checks["conv_weight_channels_last"] is True
    assert checks["features_on"] == "cpu" and checks["features_dtype"] == "torch.float32"
    assert checks["precision"] == "bf16-mixed"
    assert checks["activation_dtype_under_autocast"] == "torch.bfloat16"


@pytest.mark.slow
def test_memory_benchmark_meets_its_targets_on_the_cpu(capsys):
    from benchmarks.memory import main

    assert main([]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["accumulation_grad_max_abs_diff"] <= 1e-5
    assert out["memory_estimate_rel_error"] <= 0.25
    assert len(out["models"]) == 2 and all(m["measured_gib"] > 0 for m in out["models"].values())


@pytest.mark.slow
def test_gpu_catalog_benchmark_runs_tiny_on_the_cpu_one_json_line_per_model(capsys):
    from benchmarks.gpu import main

    assert main(["--catalog", "--tiny", "--models", "mobilenetv2_100.ra_in1k", "--steps", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    row, summary = lines[-2], lines[-1]
    assert row["model"] == "mobilenetv2_100.ra_in1k" and row["micro_batch"] == 8
    assert row["extract_images_per_s"] > 0 and row["finetune_images_per_s"] > 0
    assert row["estimated_peak_gib"] > 0 and row["peak_memory_gib"] is None  # no GPU here
    assert summary["summary"] and summary["device"] == "cpu" and summary["models"] == 1


def test_cluster_sim_utilisation_counts_held_gpus_while_trials_were_queued():
    from benchmarks.cluster_sim import utilisation
    from sweeps.plan import Job

    def trial(kind, start, end):
        return Job(kind, "m", "t"), {"started_at": start, "ended_at": end}

    gpus = {"probe": 0.25, "finetune": 1.0}
    # 2 GPUs: both held from t=1 (the start-up) to t=10, the last start; one idle from 10
    trials = [trial("finetune", 0, 6), trial("finetune", 1, 10), trial("finetune", 6, 12),
              trial("finetune", 10, 11)]
    out = utilisation(trials, gpus, total_gpus=2)
    assert out["sim_startup_s"] == 1 and out["sim_gpu_utilisation"] == pytest.approx(1.0)
    assert out["sim_gpu_utilisation_with_startup"] == pytest.approx(19 / 20)
    assert out["sim_slot_refill_s"]["median"] == 0  # each end met a start at once


def test_cluster_sim_trial_results_are_what_the_recorder_expects():
    from benchmarks.cluster_sim import SimSettings, sim_trial
    from sweeps.plan import Job
    from sweeps.tracking.recorder import _missing_metrics
    from sweeps.tune_runner import job_key

    jobs = [Job("probe", "m", "t"), Job("early_stop", "m", "t", early_stop=True),
            Job("finetune", "m", "t", runs=((0.01, 0),))]
    settings = SimSettings({job_key(j): 0.0 for j in jobs}, ("linear", "early_stop"), {"t": 5},
                           {"t": 3}, 4)
    for job in jobs:
        metrics = sim_trial(job, settings)
        assert _missing_metrics(job, metrics) == [] and metrics["ended_at"] >= metrics["started_at"]
    assert len(json.loads(metrics["test_predictions"])["lr_0.01/rep0"]) == 5


def test_cluster_sim_durations_are_the_cost_models_seconds_compressed_into_the_ideal_schedule():
    from benchmarks.cluster_sim import TRIAL_FIXED_S, choose, durations
    from benchmarks.study_cost import CONFIG, RATE_TFLOPS
    from sweeps.cost import job_seconds
    from sweeps.device_rate import Rate
    from sweeps.plan import expand_jobs, plan_sweep
    from sweeps.tune_runner import job_key

    plan = plan_sweep(CONFIG)
    jobs = expand_jobs(plan.cfg, choose(plan, quick=False, models=2, tasks=1))
    sleeps, compression = durations(plan, jobs, minutes=1.0, gpus=4, seed=0, floor_s=0.0)
    device_s = job_seconds(plan, jobs, Rate(RATE_TFLOPS, "assumed"))
    r = plan.cfg.resources
    gpus = {j.describe(): r.probe.gpus if j.kind == "probe" else r.finetune.gpus for j in jobs}
    ideal = sum((TRIAL_FIXED_S + device_s[j.describe()]) * gpus[j.describe()] for j in jobs)
    assert compression == pytest.approx(ideal / 4 / 60)
    # each sleep is its projected seconds / the compression x a log-normal factor (sigma 0.1)
    for j in jobs:
        ratio = sleeps[job_key(j)] * compression / (TRIAL_FIXED_S + device_s[j.describe()])
        assert 0.6 < ratio < 1.6
    assert durations(plan, jobs, 1.0, 4, 0, 0.0)[0] == sleeps  # seeded
    assert min(durations(plan, jobs, 1.0, 4, 0, 100.0)[0].values()) == 100.0  # the floor


def test_study_cost_projection_is_the_cost_model_validate_prints():
    from benchmarks.study_cost import CONFIG, projection
    from sweeps.cost import estimate_plan
    from sweeps.device_rate import Rate
    from sweeps.plan import plan_sweep

    out = projection(CONFIG, rate_tflops=50.0)
    cost = estimate_plan(plan_sweep(CONFIG), Rate(50.0, "assumed"))
    assert out["study_gpu_hours"] == pytest.approx(cost.total_s / 3600)
    assert sum(r["gpu_hours"] for r in out["models"].values()) == pytest.approx(cost.total_s / 3600)
    assert out["models"]["nasnetalarge.tf_in1k"]["input_size"] == 331


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
