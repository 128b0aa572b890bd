"""A tiny sweep end to end: zoo build and sweep through Ray Tune, runs in MLflow, the report.

2 models x 2 tasks x 2 protocols on the session's local Ray, MLflow's local SQLite store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweeps.cli import main
from tests.tiny import ZOO, sweep, zoo_home

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def sweep_env(tmp_path_factory, ray_session):
    with zoo_home(tmp_path_factory.mktemp("e2e"), tiny=sweep("tiny")) as root:
        yield root


def _client(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'home' / 'mlflow.db'}")


def _pair_runs(root: Path, experiment: str):
    client = _client(root)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("pair_key")], runs


def test_zoo_build_writes_safetensors_and_metadata_and_skips_when_built(sweep_env, capsys):
    for name in ("tiny-shapes", "tiny-random"):
        meta = json.loads((sweep_env / "home" / "zoo" / name / "meta.json").read_text())
        assert (sweep_env / "home" / "zoo" / name / "model.safetensors").is_file()
        assert {"arch", "upstream_size", "upstream_acc", "params", "feature_dim",
                "source_classes"} <= set(meta)
    assert meta["upstream_size"] == 0 and meta["upstream_acc"] is None  # the random control
    assert main(["zoo", "build", str(sweep_env / "zoo.yaml")]) == 0
    assert "all 2 models built" in capsys.readouterr().err


def test_validate_passes_once_the_zoo_is_built_and_writes_nothing(sweep_env, capsys):
    before = sorted((sweep_env / "home").rglob("*"))
    assert main(["validate", str(sweep_env / "tiny.yaml")]) == 0
    assert "ok: sweep 'tiny', 2 models x 2 tasks = 4 pairs, 16 trials" in capsys.readouterr().out
    assert sorted((sweep_env / "home").rglob("*")) == before


def test_sweep_logs_one_finished_run_per_key_and_reruns_nothing(sweep_env, capsys):
    reports = sweep_env / "reports"
    assert main(["run", str(sweep_env / "tiny.yaml"), "--reports-dir", str(reports)]) == 0
    pairs, runs = _pair_runs(sweep_env, "tiny")
    keys = sorted(r.data.tags["pair_key"] for r in pairs)
    assert len(keys) == 8 and len(set(keys)) == 8  # 2 models x 2 tasks x {probe, finetune}
    assert all(r.info.status == "FINISHED" for r in pairs)
    probe = next(r for r in pairs if r.data.tags["pair_key"] == "tiny-shapes|digits|probe")
    assert probe.info.run_name == "tiny-shapes@digits:probe"
    proxies = {"linear", "knn", "logme", "leep", "nce", "hscore", "hscore_lw", "transrate",
               "early_stop"}
    assert {f"proxy/{p}" for p in proxies} | {"time/features"} <= set(probe.data.metrics)
    assert {f"time/proxy/{p}" for p in proxies} <= set(probe.data.metrics)
    random_probe = next(r for r in pairs if r.data.tags["pair_key"] == "tiny-random|digits|probe")
    assert "proxy/leep" not in random_probe.data.metrics  # no source classifier, no LEEP
    client = _client(sweep_env)
    assert [a.path for a in client.list_artifacts(probe.info.run_id, "features")] == [
        "features/digits.npz"]
    assert probe.data.tags["group"] == "natural" and probe.data.tags["protocol_hash"]
    ft = next(r for r in pairs if r.data.tags["pair_key"] == "tiny-random|sprite_location|finetune")
    assert ft.data.metrics["finetune_test_acc"] == ft.data.metrics["test/acc"]
    assert len(runs) == len(pairs) + 1  # no child runs: only the report run besides the pairs
    # each learning rate's run (1 repetition): its accuracies and its loss curve, stepped
    for lr in ("0.01", "0.001"):
        assert {f"lr_{lr}/rep0/val_acc", f"lr_{lr}/rep0/test_acc"} <= set(ft.data.metrics)
        loss = client.get_metric_history(ft.info.run_id, f"lr_{lr}/rep0/curve/train_loss")
        assert len(loss) >= 2 and sorted(m.step for m in loss) == [m.step for m in loss]
    assert sorted(a.path for a in client.list_artifacts(ft.info.run_id, "curves")) == [
        "curves/tiny-random@sprite_location.json"]
    assert ft.data.tags["artifacts"] == ("predictions/tiny-random@sprite_location.npz,"
                                         "curves/tiny-random@sprite_location.json")
    assert 0.0 <= ft.data.metrics["test/acc"] <= 1.0 and "val/acc" in ft.data.metrics
    assert json.loads(ft.data.params["finetune/settings"])["profile"] == "test-tiny"
    capsys.readouterr()  # the first run's output: the second run's is read below

    # Second run: everything is finished, nothing runs again, still one run per key.
    assert main(["run", str(sweep_env / "tiny.yaml"), "--reports-dir", str(reports)]) == 0
    err = capsys.readouterr().err
    assert "8 already finished" in err and "0 to run" in err
    pairs_again, runs_again = _pair_runs(sweep_env, "tiny")
    assert sorted(r.info.run_id for r in pairs_again) == sorted(r.info.run_id for r in pairs)
    assert len([r for r in runs_again if r.data.tags.get("protocol") == "report"]) == 1


def test_report_contents_files_and_mlflow_artifacts(sweep_env, capsys):
    reports = sweep_env / "reports"
    if not (reports / "tiny" / "regret.json").exists():
        assert main(["run", str(sweep_env / "tiny.yaml"), "--reports-dir", str(reports)]) == 0
    assert main(["report", "--experiment", "tiny", "--reports-dir", str(reports)]) == 0
    out = capsys.readouterr().out
    for f in ("regret.md", "regret.csv", "regret.json", "regret.png"):
        assert (reports / "tiny" / f).stat().st_size > 0
    report = json.loads((reports / "tiny" / "regret.json").read_text())
    assert sorted(report["tasks"]) == ["digits", "sprite_location"]
    assert {"task_agnostic", "proxy/linear", "proxy/knn", "hybrid:proxy/linear", "per_task_best",
            "task_agnostic_oracle", "task_agnostic_oracle_loto", "nearest_task"} <= set(
        report["strategies"])
    # every new measure: absolute regret, deltas, Appendix G, both tau conventions, the nearest
    # task of each task (leave-one-task-out: the other one)
    assert {"absolute", "deltas", "log_odds_deltas", "appendix_g",
            "weighted_tau_scipy_default", "proxy_coverage"} <= set(report)
    assert report["nearest_task"]["nearest"] == {"digits": "sprite_location",
                                                 "sprite_location": "digits"}
    assert set(report["appendix_g"]["all"]["digits"]) >= {"task_agnostic_oracle", "proxy/linear",
                                                          "task_agnostic"}
    assert (reports / "tiny" / "appendix_g.md").read_text().count("| digits |") >= 1
    assert sorted(report["strategies"]["task_agnostic"]) == ["1", "2"]  # B up to the pool size
    for by_budget in report["strategies"].values():
        for b in by_budget.values():
            assert all(0.0 <= v <= 1.0 for v in b["per_task"].values())
    assert {"choicenet_v1", "choicenet_v2"} <= set(report["strategies"])
    assert all(report["choicenet"][v]["mse"] is not None for v in ("v1", "v2"))
    assert {"weighted_tau", "pearson", "zero_regret_budget"} <= set(report)
    # task-agnostic ranks by upstream data size: the pre-trained model before the control
    assert report["picks"]["task_agnostic"]["digits"][0] == "tiny-shapes"
    assert "task_agnostic" in out and "digits" in out
    client = _client(sweep_env)
    exp = client.get_experiment_by_name("tiny")
    report_run = next(r for r in client.search_runs([exp.experiment_id])
                      if r.data.tags.get("protocol") == "report")
    names = {a.path for a in client.list_artifacts(report_run.info.run_id, "report")}
    assert {"report/regret.json", "report/regret.png"} <= names


def test_unreadable_checkpoint_stops_before_any_run(sweep_env, tmp_path, capsys, monkeypatch):
    import shutil

    home = tmp_path / "home"
    shutil.copytree(sweep_env / "home" / "zoo", home / "zoo")
    (home / "zoo" / "tiny-shapes" / "model.safetensors").write_bytes(b"\x00garbage")
    monkeypatch.setenv("WHICHMODEL_HOME", str(home))
    (tmp_path / "zoo.yaml").write_text(ZOO)
    (tmp_path / "bad.yaml").write_text(sweep("bad"))
    assert main(["run", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "tiny-shapes/model.safetensors" in err and len(err.splitlines()) == 1
    assert not (home / "mlflow.db").exists()  # no store, no experiment, no run


def lose_one_learning_rate(job, settings, report):
    """The sweep's trial body, except that a fine-tune at lr 0.001 returns a result that lost
    its accuracies on the way (a result that does not arrive)."""
    from sweeps.trials import run_trial

    if job.kind == "finetune" and job.runs == ((0.001, 0),):
        return {"time/finetune": 0.0}
    return run_trial(job, settings, report)


def test_a_pair_whose_results_never_arrive_ends_the_sweep_non_zero_naming_it(
        sweep_env, tmp_path, capsys, monkeypatch):
    import sys

    import ray.cloudpickle as cloudpickle

    from sweeps import driver

    monkeypatch.setattr(driver, "run_trial", lose_one_learning_rate)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        (tmp_path / "zoo.yaml").write_text(ZOO)
        text = sweep("lost", tasks="[digits]").replace("save_features: true", "")
        (tmp_path / "lost.yaml").write_text(text.replace("enabled: true", ""))
        monkeypatch.setenv("WHICHMODEL_HOME", str(sweep_env / "home"))
        rc = main(["run", str(tmp_path / "lost.yaml"), "--no-report"])
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    err = capsys.readouterr().err
    assert rc == 1
    for model in ("tiny-shapes", "tiny-random"):
        assert f"finetune {model}@digits: no result for lr 0.001 rep 0 (the pair was not logged)" in err
    pairs, _ = _pair_runs(sweep_env, "lost")
    assert sorted(r.data.tags["pair_key"] for r in pairs) == [
        "tiny-random|digits|probe", "tiny-shapes|digits|probe"]  # no fine-tune pair half-logged


def test_per_pair_trials_run_every_repetition_with_its_own_seed_and_the_early_stop_proxy(
        sweep_env, tmp_path, capsys, monkeypatch):
    """The quickstart's grouping: one fine-tune trial per pair runs both learning rates x both
    repetitions and the pair's early-stop proxy; each run, with its own seed, logs its curves
    as stepped metrics of the pair run; the budgeted search replays the rung-0 curves."""
    text = sweep("grouped", tasks="[digits]", steps=10).replace(
        "repeats: 1\n", "repeats: 2\n  trials: per_pair\n").replace(
        "save_features: true", "") + "search: {enabled: true, rung_steps: 5, reduction_factor: 2}\n"
    (tmp_path / "zoo.yaml").write_text(ZOO)
    (tmp_path / "grouped.yaml").write_text(text)
    monkeypatch.setenv("WHICHMODEL_HOME", str(sweep_env / "home"))
    assert main(["validate", str(tmp_path / "grouped.yaml")]) == 0
    # 2 probes + 2 fine-tunes (each with 4 runs and the early-stop proxy), no early-stop trials
    assert "2 models x 1 tasks = 2 pairs, 4 trials" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "grouped.yaml"), "--reports-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    pairs, _ = _pair_runs(sweep_env, "grouped")
    assert sorted(r.data.tags["pair_key"] for r in pairs) == sorted(
        f"{m}|digits|{p}" for m in ("tiny-shapes", "tiny-random") for p in ("probe", "finetune"))
    probe = next(r for r in pairs if r.data.tags["pair_key"] == "tiny-shapes|digits|probe")
    assert "proxy/early_stop" in probe.data.metrics and "time/proxy/early_stop" in probe.data.metrics
    client = _client(sweep_env)
    ft = next(r for r in pairs if r.data.tags["pair_key"] == "tiny-shapes|digits|finetune")
    runs_of = [f"lr_{lr}/rep{rep}" for lr in ("0.01", "0.001") for rep in (0, 1)]
    loss = {run: [m.value for m in client.get_metric_history(ft.info.run_id,
                                                              f"{run}/curve/train_loss")]
            for run in runs_of}
    assert all(loss.values())
    # derived seeds: the two repetitions of one learning rate see other batches
    assert loss["lr_0.01/rep0"] != loss["lr_0.01/rep1"]
    # repetition 0 of each learning rate logs the validation accuracy at every rung
    for run in runs_of:
        history = client.get_metric_history(ft.info.run_id, f"{run}/curve/val_acc")
        assert len(history) == (2 if run.endswith("rep0") else 0)
    # every point of every curve is in the curves artifact
    with open(client.download_artifacts(ft.info.run_id, "curves/tiny-shapes@digits.json",
                                        str(tmp_path))) as f:
        curves = json.load(f)
    assert [v for _, v in curves["lr_0.01/rep0/curve/train_loss"]] == loss["lr_0.01/rep0"]
    assert {"rep0/best_lr", "rep1/best_lr", "rep0/test_acc", "rep1/test_acc"} <= set(
        ft.data.metrics)
    reps = sorted([ft.data.metrics["rep0/test_acc"], ft.data.metrics["rep1/test_acc"]])
    assert ft.data.metrics["test/acc"] == pytest.approx(sum(reps) / 2)  # median of two
    # the test predictions of each repetition's selected run: the report resamples them
    assert [a.path for a in client.list_artifacts(ft.info.run_id, "predictions")] == [
        "predictions/tiny-shapes@digits.npz"]
    import numpy as np

    with np.load(client.download_artifacts(ft.info.run_id, "predictions/tiny-shapes@digits.npz",
                                           str(tmp_path))) as npz:
        right = (npz["predictions"] == npz["labels"][None, :]).mean(axis=1)
        assert npz["predictions"].shape[0] == 2
    assert sorted(right) == pytest.approx(reps)
    report = json.loads((tmp_path / "r" / "grouped" / "regret.json").read_text())
    assert report["noise_source"] == {"digits": "examples+repetitions"}
    assert sum(report["p_best"]["digits"].values()) == pytest.approx(1.0)
    assert report["noise_floor"]["digits"] >= 0
    for name in report["strategy_order"]:
        ci = report["ci"][name]["1"]
        assert ci["low"] <= ci["high"]
    assert report["better_than"]["1"]["random"]["task_agnostic"] >= 0
    assert report["budgeted_search"]["replayed"] == 1
    assert "replayed from the exhaustive sweep's validation curves" in out
