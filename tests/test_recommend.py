"""``whichmodel recommend`` end to end on a tiny zoo and an ImageFolder task the test writes; its
bad input; and the features entry point against the probe trial."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweeps.cli import main
from tests.test_hub_e2e import write_digits_imagefolder
from tests.tiny import ZOO, sweep, zoo_home

pytestmark = pytest.mark.slow

THREE = ZOO.rstrip() + "\n  - {name: tiny-glyphs, arch: cnn, arch_kwargs: {width: 8}, upstream: [glyphs]}\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory, ray_session):
    with zoo_home(tmp_path_factory.mktemp("recommend"), THREE,
                  rec=sweep("rec", tasks="[digits]")) as root:
        write_digits_imagefolder(root / "myfolder")
        yield root


def _runs(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'home' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("rec")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def _recommend(root: Path, *extra: str) -> dict:
    out = root / "decision.json"
    rc = main(["recommend", "--task", str(root / "myfolder"), "--config", str(root / "rec.yaml"),
               "--format", "json", "--output", str(out), *extra])
    assert rc == 0
    return json.loads(out.read_text())


def test_recommend_probes_the_pool_fine_tunes_the_top_two_and_logs_the_decision(env, capsys):
    d = _recommend(env, "--budget", "2")
    assert d["strategy"] == "hybrid:proxy/linear" and d["task"] == "myfolder"
    assert sorted(d["pool"]) == ["tiny-glyphs", "tiny-random", "tiny-shapes"]
    ranking = [r["model"] for r in d["ranking"]]
    assert sorted(ranking) == sorted(d["pool"]) and d["picks"] == ranking[:2]
    # the hybrid: task-agnostic's first (upstream data; the random control has none), then the
    # linear proxy's order of the rest
    assert ranking[0] != "tiny-random"
    rest = [r["proxies"]["proxy/linear"] for r in d["ranking"][1:]]
    assert rest == sorted(rest, reverse=True)
    assert set(d["finetuned"]) == set(d["picks"])
    best = max(d["picks"], key=lambda m: d["finetuned"][m]["val_acc"])
    assert d["winner"]["model"] == best
    assert d["winner"]["test_acc"] == d["finetuned"][best]["test_acc"]
    cost = d["cost"]
    assert cost["probe_s"] > 0 and cost["finetune_s"] > 0
    assert cost["exhaustive_finetune_s_estimate"] > cost["finetune_s"]
    client, runs = _runs(env)
    keys = sorted(r.data.tags["pair_key"] for r in runs if r.data.tags.get("pair_key"))
    assert keys == sorted([f"{m}|myfolder|probe" for m in d["pool"]]
                          + [f"{m}|myfolder|finetune" for m in d["picks"]])
    decision_run = next(r for r in runs if r.info.run_name == "recommend:myfolder")
    assert decision_run.info.run_id == d["run_id"]
    assert [a.path for a in client.list_artifacts(d["run_id"], "recommend")] == [
        "recommend/decision.json", "recommend/decision.txt"]
    text = capsys.readouterr().out
    assert f"winner: {best}" in text and max(len(line) for line in text.splitlines()) <= 100

    # a second call runs no probe and no fine-tune again: MLflow has them under the same keys
    again = _recommend(env, "--budget", "2")
    assert again["reused"] == {"probe": 3, "finetune": 2}
    assert again["picks"] == d["picks"] and again["winner"] == d["winner"]
    assert "3 already finished in MLflow" in capsys.readouterr().err
    _, runs_after = _runs(env)
    assert len([r for r in runs_after if r.data.tags.get("pair_key")]) == len(keys)

    # a budget above the pool: the whole pool is picked, and the answer says so
    whole = _recommend(env, "--budget", "5", "--no-finetune")
    assert sorted(whole["picks"]) == sorted(d["pool"]) and "whole pool" in whole["note"]
    assert whole["finetuned"] == {} and whole["winner"] is None

    # --from-report: the usable strategy with the lowest mean regret at B in the latest report
    assert main(["report", "--experiment", "rec", "--reports-dir", str(env / "reports")]) == 0
    report = json.loads((env / "reports" / "rec" / "regret.json").read_text())
    chosen = _recommend(env, "--budget", "1", "--no-finetune", "--from-report", "rec")
    means = {n: report["strategies"][n]["1"]["mean"] for n in report["strategies"]
             if n not in ("per_task_best", "task_agnostic_oracle")}
    assert chosen["strategy_source"]["mean_regret"] == min(means.values())
    assert means[chosen["strategy"]] == min(means.values())


def test_compute_budget_chooses_b_prints_the_plan_first_and_says_what_it_spent(env, capsys):
    d = _recommend(env, "--compute-budget", "1h", "--strategy", "proxy/knn")
    err = capsys.readouterr().err
    plan_line = next(line for line in err.splitlines() if "compute budget 1h00m on myfolder" in line)
    assert err.index(plan_line) < err.index("recommend-myfolder-probe")  # before anything runs
    assert f"B = {d['budget']}" in plan_line and 1 <= d["budget"] <= 3
    assert d["compute_budget_s"] == 3600 and 0 <= d["estimated_s"] <= 3600
    assert d["spent_s"] is not None and d["spent_s"] >= 0 and len(d["picks"]) == d["budget"]
    assert set(d["compute"]["finetune_s"]) == set(d["pool"]) and d["compute"]["needs_probes"]
    # a strategy that reads no probe of the task runs none
    agnostic = _recommend(env, "--compute-budget", "1h", "--strategy", "task_agnostic",
                          "--no-finetune")
    assert agnostic["compute"]["needs_probes"] is False and agnostic["reused"]["probe"] == 0
    assert "no probes (the strategy does not read them)" in capsys.readouterr().err


def test_features_entry_point_gives_the_probe_trials_scores(env):
    """rank_features on a model's own forward pass gives the scores its probe trial logged."""
    from lightning_modules.backbones import extract_features
    from selection.rank_features import rank_features
    from sweeps.driver import trial_settings
    from sweeps.paths import default_paths
    from sweeps.plan import Job, plan_sweep
    from sweeps.trials import probe_trial
    from whichmodel.seeds import derive_seed

    plan = plan_sweep(env / "rec.yaml")
    settings = trial_settings(plan, default_paths())
    cfg = plan.cfg
    proxies = [p for p in cfg.probe.proxies if p != "early_stop"]
    feats, val, seeds, logged, probs = {}, {}, {}, {}, {}
    for model in ("tiny-shapes", "tiny-glyphs"):
        logged[model] = probe_trial(Job("probe", model, "digits"), settings)
        backbone, _ = settings.load_model(model)
        data = settings.load_task("digits")
        feats[model], probs[model] = extract_features(backbone, data.splits["train800"][0],
                                                      with_source_probs=True)
        val[model], _ = extract_features(backbone, data.splits["val200"][0])
        seeds[model] = derive_seed(cfg.seed, model, "digits", "probe")
    for proxy in proxies:
        out = rank_features(feats, data.splits["train800"][1], strategy=f"proxy/{proxy}",
                            val_features=val, val_labels=data.splits["val200"][1],
                            settings=cfg.probe.proxy_settings(0), seed=seeds, source_probs=probs)
        for model in feats:
            assert out["proxies"][model][f"proxy/{proxy}"] == pytest.approx(
                logged[model][f"proxy/{proxy}"], rel=1e-9, abs=1e-12), (proxy, model)
    both = rank_features(feats, data.splits["train800"][1], strategy="ensemble:knn+logme",
                         val_features=val, val_labels=data.splits["val200"][1])
    assert set(both["ranking"]) == set(feats) and all(np.isfinite(list(both["scores"].values())))


def _bad(root: Path, home: Path, capsys, *args: str) -> str:
    rc = main(["--home", str(home), "recommend", "--config", str(root / "rec.yaml"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert not (home / "mlflow.db").exists()  # nothing written to MLflow
    return err


def test_bad_input_is_one_line_exit_2_and_nothing_in_mlflow(tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "zoo.yaml").write_text(THREE)
    (tmp_path / "rec.yaml").write_text(sweep("rec", tasks="[digits]"))
    home = tmp_path / "home"
    folder = tmp_path / "good"
    write_digits_imagefolder(folder)
    assert "no offline task of that name and no folder" in _bad(
        tmp_path, home, capsys, "--task", str(tmp_path / "nowhere"), "--budget", "1")
    one = tmp_path / "single" / "train" / "only"
    one.mkdir(parents=True)
    (tmp_path / "single" / "test" / "only").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(one / "a.png")
    assert "single class folder" in _bad(tmp_path, home, capsys, "--task",
                                         str(tmp_path / "single"), "--budget", "1")
    (tmp_path / "good" / "train" / "empty").mkdir()
    assert "has no images" in _bad(tmp_path, home, capsys, "--task", str(folder), "--budget", "1")
    (tmp_path / "good" / "train" / "empty").rmdir()
    assert "known: all" in _bad(tmp_path, home, capsys, "--task", str(folder), "--budget", "1",
                                "--pool", "nope")
    err = _bad(tmp_path, home, capsys, "--task", str(folder), "--budget", "1", "--strategy", "nope")
    assert "usable" in err and "hybrid:proxy/linear" in err
    err = _bad(tmp_path, home, capsys, "--task", str(folder), "--budget", "1", "--strategy",
               "per_task_best")
    assert "reads this task's fine-tune results" in err
    assert "integer of 1 or more" in _bad(tmp_path, home, capsys, "--task", str(folder),
                                          "--budget", "0")
    assert "has none" in _bad(tmp_path, home, capsys, "--task", str(folder), "--budget", "1",
                              "--strategy", "choicenet_records")
    for learned in ("choicenet_v3", "nearest_task"):
        assert "has none" in _bad(tmp_path, home, capsys, "--task", str(folder), "--budget", "1",
                                  "--strategy", learned)
    # --catalog: its models and pools replace the config's
    catalog = Path(__file__).resolve().parents[1] / "sweeps" / "configs" / "pools" / "renggli2022.yaml"
    err = _bad(tmp_path, home, capsys, "--task", str(folder), "--budget", "1", "--catalog",
               str(catalog), "--pool", "nope")
    assert "renggli2022.yaml" in err and "known: All, ResNet-50" in err
    assert "no such catalog file" in _bad(tmp_path, home, capsys, "--task", str(folder),
                                          "--budget", "1", "--catalog", str(tmp_path / "no.yaml"))


def test_learned_strategies_rank_a_new_task_from_the_other_tasks_results_only(env, capsys):
    """ChoiceNet v3 and the nearest task, trained on a sweep's other task (digits), rank the new
    ImageFolder task; its own fine-tune results never reach the learned table, the other task's
    do."""
    from dataclasses import replace

    from selection.records import GROUND_TRUTH
    from sweeps.learned import learned_table
    from sweeps.paths import default_paths
    from sweeps.plan import plan_sweep
    from sweeps.recommend.decide import resolve_task
    from sweeps.tracking.client import Tracker

    (env / "learn.yaml").write_text(sweep("learn", tasks="[digits]"))
    assert main(["run", str(env / "learn.yaml")]) == 0
    plan = plan_sweep(env / "learn.yaml")
    paths = default_paths()
    hashes = {p: plan.cfg.protocol_hash(p) for p in ("probe", "finetune")}
    tracker = Tracker(paths.tracking_uri(None), "learn")
    records, metadata, _ = tracker.records(hashes)
    truth = records[(records["task"] == "digits") & (records["metric"] == GROUND_TRUTH)]
    digits = truth.groupby("model")["value"].median().to_dict()
    assert sorted(digits) == sorted(plan.models)

    def run(strategy: str) -> dict:
        out = env / f"{strategy}.json"
        assert main(["recommend", "--task", str(env / "myfolder"), "--config", str(env / "learn.yaml"),
                     "--budget", "1", "--no-finetune", "--strategy", strategy, "--format", "json",
                     "--output", str(out)]) == 0
        return json.loads(out.read_text())

    # the nearest task of the new one is the only other task: its fine-tune accuracies, in order
    near = run("nearest_task")
    assert {r["model"]: r["score"] for r in near["ranking"]} == pytest.approx(digits)
    assert [r["model"] for r in near["ranking"]] == sorted(digits, key=lambda m: -digits[m])
    assert "nearest task of myfolder by Task2Vec: digits" in capsys.readouterr().err
    v3 = run("choicenet_v3")
    assert sorted(r["model"] for r in v3["ranking"]) == sorted(plan.models)
    assert all(np.isfinite(r["score"]) for r in v3["ranking"]) and v3["picks"] == [
        v3["ranking"][0]["model"]]

    # leakage: fine-tune results of the new task itself change nothing; the other task's do
    name, ref = resolve_task(str(env / "myfolder"), "natural")
    sub = replace(plan, task_refs={**plan.task_refs, name: ref})
    own = records[records["metric"].str.startswith("finetune_")].query("task == 'digits'").assign(
        task=name, value=lambda d: 1.0 - d["value"])
    moved = records.assign(value=lambda d: d["value"].where(
        (d["metric"] != GROUND_TRUTH) | (d["task"] != "digits"), 1.0 - d["value"]))

    def table(recs):
        return learned_table("choicenet_v3", sub, paths, name, ref, recs, metadata, stream=None)

    base = table(records)
    pd.testing.assert_frame_equal(table(pd.concat([records, own], ignore_index=True)), base)
    assert not np.allclose(table(moved)[name].to_numpy(), base[name].to_numpy())
