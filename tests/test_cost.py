"""The cost of a sweep before it runs (sweeps/cost.py), ``validate``'s cost lines and JSON, the
progress line's compute, and ``recommend --compute-budget``'s choice of B and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweeps.cli import main
from sweeps.plan import pair_key, plan_sweep
from whichmodel.durations import format_duration, parse_duration
from whichmodel.errors import WhichModelError

ZOO = """
name: tiny-zoo
image_size: 32
models:
  - {name: small, arch: cnn, arch_kwargs: {width: 8}, upstream: [shapes]}
  - {name: control, arch: cnn, arch_kwargs: {width: 8}, objective: none}
"""

# digits: 800 train, 200 val, 797 test, 10 classes; a device of 1e-6 TFLOP/s = 1 MFLOP/s, so
# the seconds are the FLOPs / 1e6
SWEEP = """
name: cost
zoo: zoo.yaml
models: all
tasks: [digits]
probe:
  proxies: [knn, early_stop]
  early_stop: {{lrs: [0.01, 0.001], steps: 3, repeats: 2, batch_size: 16}}
finetune:
  lrs: [0.01]
  head_steps: 5
  steps: 4
  batch_size: 16
  repeats: 2
  trials: {trials}
resources: {{device_tflops: {rate}}}
"""

# block1 3->8 channels at 16x16, block2 8->16 at 8x8, block3 16->32 at 4x4, block4 32->32 at
# 2x2; 3x3 kernels; 2 FLOPs per multiply-add (torch's counter); no bias, BN and ReLU not counted
HAND_FLOPS = (2 * 3 * 9 * 8 * 16 * 16 + 2 * 8 * 9 * 16 * 8 * 8 + 2 * 16 * 9 * 32 * 4 * 4
              + 2 * 32 * 9 * 32 * 2 * 2)


def _sweep(tmp_path: Path, trials: str = "per_run", rate: str = "1.0e-6") -> Path:
    (tmp_path / "zoo.yaml").write_text(ZOO)
    path = tmp_path / "cost.yaml"
    path.write_text(SWEEP.format(trials=trials, rate=rate))
    return path


def test_flops_of_a_small_cnn_are_the_hand_computed_convolutions():
    from lightning_modules.backbones import build_cnn
    from sweeps.cost import forward_flops

    shape = forward_flops(build_cnn(width=8, input_size=32))
    assert HAND_FLOPS == 479_232
    assert shape.flops == HAND_FLOPS and shape.feature_dim == 32 and shape.input_size == 32


def test_the_cost_of_a_tiny_plan_is_its_trials_arithmetic(tmp_path):
    from sweeps.cost import estimate_plan
    from sweeps.device_rate import rate_of

    plan = plan_sweep(_sweep(tmp_path))
    rate = rate_of(plan.cfg, tmp_path)
    assert rate.tflops == 1e-6
    cost = estimate_plan(plan, rate)
    f, d, c = HAND_FLOPS, 32, 10
    n, v, test = 800, 200, 797
    probe = f * (n + v + test) + 2 * v * n * d  # one frozen pass; 1-NN's distances
    # its own trial: the train and val passes, then 2 lrs x 2 repetitions of 3 steps of 16
    early = f * (n + v) + 4 * (3 * f * 3 * 16 + f * v)
    # per repetition: val and test passes, the head stage's train pass and 5 head steps of 16,
    # 4 training steps of 16 (a training image: 3 forward passes)
    run = f * (v + test) + f * n + 6 * 5 * 16 * d * c + 3 * f * 4 * 16
    assert cost.trials == {"probe": 2, "early_stop": 2, "finetune": 4}
    for model in ("small", "control"):
        row = cost.by_model[model]
        assert row["probe"] == pytest.approx(probe / 1e6)
        assert row["early_stop"] == pytest.approx(early / 1e6)
        assert row["finetune"] == pytest.approx(2 * run / 1e6)
    assert cost.total_s == pytest.approx(2 * (probe + early + 2 * run) / 1e6)
    assert cost.gflops_per_image == {"small": HAND_FLOPS / 1e9, "control": HAND_FLOPS / 1e9}

    # a measured rate also has the framework's seconds per optimizer step and per fit: a run
    # fits its 5 head steps and its 4 training steps; the early-stop proxy 4 fits of 3 steps
    from sweeps.device_rate import Rate

    slow = estimate_plan(plan, Rate(1e-6, "a test", step_s=0.1, fit_s=1.0)).by_model["small"]
    assert slow["finetune"] == pytest.approx(2 * run / 1e6 + 2 * (9 * 0.1 + 2 * 1.0))
    assert slow["early_stop"] == pytest.approx(early / 1e6 + 4 * (3 * 0.1 + 1.0))
    assert slow["probe"] == pytest.approx(probe / 1e6)

    # per_pair: one trial runs both repetitions (the head stage's train pass once) and the
    # early-stop proxy on the train features it already has
    grouped = estimate_plan(plan_sweep(_sweep(tmp_path, "per_pair")), rate)
    assert grouped.trials == {"probe": 2, "finetune": 2}
    assert grouped.by_model["small"]["finetune"] == pytest.approx((2 * run - f * n) / 1e6)
    assert grouped.by_model["small"]["early_stop"] == pytest.approx((early - f * n) / 1e6)


def test_a_key_finished_in_mlflow_is_not_costed_again(tmp_path, home):
    from sweeps.cost import estimate_plan, finished_keys
    from sweeps.device_rate import rate_of
    from sweeps.paths import default_paths
    from sweeps.tracking.client import Tracker, pair_record

    plan = plan_sweep(_sweep(tmp_path))
    uri = default_paths().tracking_uri()
    assert finished_keys(plan, uri) == set() and not home.exists()  # no store: none, none made
    tracker = Tracker(uri, "cost")
    tracker.record_pair(pair_record("small", "digits", "finetune",
                                    plan.cfg.protocol_hash("finetune"), {}, {},
                                    {"test/acc": 0.5, "time/finetune": 3.0}))
    finished = finished_keys(plan, uri)
    assert finished == {pair_key("small", "digits", "finetune")}
    full = estimate_plan(plan, rate_of(plan.cfg, home))
    left = estimate_plan(plan, rate_of(plan.cfg, home), finished)
    assert left.finished == 1 and left.keys == 4
    assert left.trials == {"probe": 2, "early_stop": 2, "finetune": 2}
    assert left.by_model["small"]["finetune"] == 0.0
    assert left.by_model["control"] == full.by_model["control"]
    assert left.total_s == pytest.approx(full.total_s - full.by_model["small"]["finetune"])


def test_estimate_against_the_seconds_finished_runs_logged(tmp_path, home):
    from sweeps.cost import estimate_plan, estimate_vs_measured
    from sweeps.device_rate import Rate
    from sweeps.paths import default_paths
    from sweeps.tracking.client import Tracker, pair_record

    plan = plan_sweep(_sweep(tmp_path))
    uri = default_paths().tracking_uri()
    tracker = Tracker(uri, "cost")
    logged = {"probe": {"time/features": 2.0, "time/proxy/knn": 1.0, "time/proxy/early_stop": 4.0,
                        "time/trial": 99.0, "proxy/knn": 0.5},
              "finetune": {"time/finetune": 10.0, "test/acc": 0.5}}
    for protocol, metrics in logged.items():  # small's two keys; control has none
        tracker.record_pair(pair_record("small", "digits", protocol,
                                        plan.cfg.protocol_hash(protocol), {}, {}, metrics))
    rate = Rate(1e-6, "a test")
    out = estimate_vs_measured(plan, rate, uri)
    assert (out["keys"], out["of"]) == (2, 4)
    assert out["measured_s"] == {"probe": 3.0, "early_stop": 4.0, "finetune": 10.0, "all": 17.0}
    estimated = estimate_plan(plan, rate).by_model["small"]
    assert out["estimated_s"]["finetune"] == pytest.approx(estimated["finetune"])
    assert out["ratio"] == pytest.approx(sum(estimated.values()) / 17.0)
    assert out["ratio_by_part"]["early_stop"] == pytest.approx(estimated["early_stop"] / 4.0)


def test_validate_prints_the_cost_money_and_json_offline(tmp_path, capsys, home):
    path = _sweep(tmp_path, rate="100")
    assert main(["validate", str(path), "--file-only", "--price-per-gpu-hour", "2.5"]) == 0
    out = capsys.readouterr().out
    assert "trials to run: probe 2, early_stop 2, finetune 4" in out
    assert "MLflow not asked (--file-only)" in out and "small" in out and "control" in out
    assert "device-hours (CPU" in out and "per GPU-hour: $" in out
    assert main(["validate", str(path), "--file-only", "--json", "--gpus", "4"]) == 0
    cost = json.loads(capsys.readouterr().out)["cost"]
    assert cost["device_tflops"] == 100.0 and cost["finished_keys"] is None
    assert cost["trials"] == {"probe": 2, "early_stop": 2, "finetune": 4}
    assert cost["total_s"]["all"] == pytest.approx(sum(m["total_s"] for m in cost["models"].values()))
    assert cost["models"]["small"]["gflops_per_image"] == HAND_FLOPS / 1e9
    assert not home.exists()  # validate writes nothing


def test_measured_rate_without_its_file_is_one_line_naming_the_file(tmp_path, capsys, home):
    from sweeps.device_rate import Rate, rate_of, write_rate

    path = _sweep(tmp_path, rate="measured")
    assert main(["validate", str(path), "--file-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "device_rate.json" in err and "benchmarks.gpu" in err
    write_rate(home, Rate(12.5, "a test", step_s=0.01, fit_s=0.5), "a test device")
    rate = rate_of(plan_sweep(path).cfg, home)
    assert (rate.tflops, rate.step_s, rate.fit_s) == (12.5, 0.01, 0.5)
    assert "a test device" in rate.source


def test_durations_read_2h_90m_3600s_and_refuse_others():
    assert parse_duration("2h") == 7200 and parse_duration("90m") == 5400
    assert parse_duration("3600s") == 3600 and parse_duration("1h30m") == 5400
    assert parse_duration("1.5h") == 5400 and parse_duration("45") == 45
    for bad in ("2 hours", "h", "0s", "-5m", "2h2x"):
        with pytest.raises(WhichModelError, match="--compute-budget"):
            parse_duration(bad)
    assert [format_duration(s) for s in (None, 4.24, 45, 185, 7800, 822 * 3600)] == [
        "-", "4.2s", "45s", "3m05s", "2h10m", "822 h"]


def test_compute_budget_picks_the_largest_b_of_the_costliest_fine_tunes_that_fit():
    from sweeps.recommend.budget import choose_budget

    tunes = {"a": 10.0, "b": 20.0, "c": 40.0}
    # the probes (30) and the costliest fine-tunes first: 30 + 40 + 20 + 10
    assert choose_budget(100, 30, tunes, True) == (3, 100.0)
    assert choose_budget(89, 30, tunes, True) == (1, 70.0)
    assert choose_budget(90, 30, tunes, True) == (2, 90.0)
    assert choose_budget(60, 30, tunes, False) == (2, 60.0)  # a strategy that reads no probe
    assert choose_budget(60, 30, {**tunes, "c": 0.0}, True) == (3, 60.0)  # c finished: free
    with pytest.raises(WhichModelError) as err:
        choose_budget(69, 30, tunes, True)
    assert "too small for one fine-tune" in str(err.value) and "1m10s" in str(err.value)


def test_calibration_is_the_logged_seconds_over_the_estimate_per_protocol():
    import pandas as pd

    from sweeps.recommend.budget import calibration

    records = pd.DataFrame([("a", "t", "time/features", 2.0), ("a", "t", "time/proxy/knn", 1.0),
                            ("a", "t", "time/finetune", 30.0), ("b", "t", "time/finetune", 10.0),
                            ("a", "t", "finetune_test_acc", 0.5)],
                           columns=["model", "task", "metric", "value"])
    est = {("a", "probe"): 1.0, ("a", "finetune"): 5.0, ("b", "finetune"): 5.0}
    out = calibration(records, None, lambda m, t, p: est.get((m, p)))
    assert out == {"probe": {"factor": 3.0, "runs": 1}, "finetune": {"factor": 4.0, "runs": 2}}
    assert calibration(None, None, lambda *a: 1.0)["finetune"] == {"factor": 1.0, "runs": 0}


def test_compute_budget_too_small_is_one_line_exit_2_nothing_run(tmp_path, capsys, home):
    from tests.test_hub_e2e import write_digits_imagefolder

    path = _sweep(tmp_path, rate="1.0e-9")  # estimates of hours: 2h is too small
    folder = tmp_path / "mytask"
    write_digits_imagefolder(folder)
    args = ["recommend", "--task", str(folder), "--config", str(path), "--strategy", "proxy/knn"]
    assert main([*args, "--compute-budget", "2h"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--compute-budget 2h00m: too small for one fine-tune" in err
    assert "give at least" in err
    # no store, no run (the task's images were decoded and cached first: recommend reads a new
    # task's data before anything else, so a bad image fails before any decision)
    assert not (home / "mlflow.db").exists() and not (home / "tune").exists()
    for ok in ("90m", "3600s"):  # read, then refused for their size alone
        assert main([*args, "--compute-budget", ok]) == 2
        assert "too small for one fine-tune" in capsys.readouterr().err
    assert main([*args, "--compute-budget", "2 hours"]) == 2
    assert "write a duration such as 2h" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # one of --budget and --compute-budget
        main([*args, "--compute-budget", "2h", "--budget", "2"])
    assert stop.value.code == 2
    assert not (home / "mlflow.db").exists() and not (home / "tune").exists()


def test_progress_line_adds_compute_spent_and_left_corrected_by_finished_trials(capsys):
    from sweeps.progress import Progress, compute_seconds

    assert compute_seconds({"time/features": 1.0, "time/proxy/knn": 0.5, "time/trial": 9.0,
                            "proxy/knn": 0.7}) == 1.5
    assert compute_seconds({"val/acc": 0.5}) is None
    estimates = {"probe a@t": 1.0, "probe b@t": 1.0, "finetune a@t (lr=0.01/rep0)": 10.0,
                 "finetune b@t (lr=0.01/rep0)": 10.0}
    p = Progress({"probe": 2, "finetune": 2}, every_s=0.0, estimates=estimates)
    assert p.compute_left() is None  # nothing in yet
    p.update("probe", job="probe a@t", seconds=3.0)  # probes take 3x their estimate
    # left: a probe at 3x, and the fine-tunes at the only factor known yet (3x)
    assert p.compute_left() == pytest.approx(3.0 + 3 * 20.0)
    p.update("finetune", job="finetune a@t (lr=0.01/rep0)", seconds=5.0)  # fine-tunes 0.5x
    assert p.compute_left() == pytest.approx(3.0 + 5.0)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "compute 8.0s, ~8.0s left" in line


def test_a_trial_fits_one_head_per_repetition_shared_by_its_learning_rates():
    from sweeps.config import SweepConfig
    from sweeps.cost import ModelShape, TaskShape, finetune_work

    cfg = SweepConfig.model_validate({
        "name": "c", "models": ["m"], "tasks": ["t"],
        "finetune": {"lrs": [0.01, 0.001], "head_steps": 5, "steps": 7, "repeats": 2}})
    m, t = ModelShape(1e9, 64, 224), TaskShape(800, 200, 1000, 10)
    per_pair = finetune_work(cfg, m, t, [(0.01, 0), (0.001, 0), (0.01, 1), (0.001, 1)])
    assert per_pair.fits == 2 + 4 and per_pair.steps == 2 * 5 + 4 * 7  # 2 heads, 4 fine-tunes
    per_run = finetune_work(cfg, m, t, [(0.001, 1)])  # a trial of its own trains its head
    assert per_run.fits == 2 and per_run.steps == 5 + 7
