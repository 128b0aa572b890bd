"""Records validation (selection.records) and the regret report (selection.report.compute)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, weightedtau

from selection.pools import models_in_pool, pool_tags, resolve_pool
from selection.records import (
    RecordsError,
    aggregate_records,
    list_proxy_metrics,
    pivot_metric,
    read_models_csv,
    read_records_csv,
    validate_records,
)
from selection.report import plots as report_plots
from selection.report.compute import compute_report
from selection.report.files import write_report
from selection.report.sections import format_markdown
from selection.report.text import format_table

ACC = {  # finetune_test_acc; c has no value on t3 (a missing pair); t4 is all 1.0
    "t1": {"a": 0.9, "b": 0.8, "c": 0.7},
    "t2": {"a": 0.5, "b": 0.6, "c": 0.4},
    "t3": {"a": 0.7, "b": 0.7},
    "t4": {"a": 1.0, "b": 1.0, "c": 1.0},
}
LINEAR = {  # proxy/linear; t5 has proxy scores only (no fine-tune: skipped)
    "t1": {"a": 0.5, "b": 0.6, "c": 0.1},
    "t2": {"a": 0.3, "b": 0.2, "c": 0.9},
    "t3": {"a": 0.1, "b": 0.2, "c": 0.9},
    "t4": {"a": 0.5, "b": 0.5, "c": 0.5},
    "t5": {"a": 0.5, "b": 0.4, "c": 0.3},
}
GROUPS = {"t1": "natural", "t2": "natural", "t3": "structured", "t4": "specialized"}
STRATEGIES = ["task_agnostic", "static:imagenet_acc", "proxy/linear", "hybrid:proxy/linear",
              "task_agnostic_oracle",
              "task_agnostic_oracle_loto", "choicenet_records", "per_task_best", "random"]


def long_records(**metrics: dict[str, dict[str, float]]) -> pd.DataFrame:
    rows = [(m, t, metric.replace("__", "/"), v)
            for metric, by_task in metrics.items() for t, by_model in by_task.items() for m, v in by_model.items()]
    return pd.DataFrame(rows, columns=["model", "task", "metric", "value"])


@pytest.fixture
def records() -> pd.DataFrame:
    return long_records(finetune_test_acc=ACC, proxy__linear=LINEAR)


@pytest.fixture
def metadata() -> pd.DataFrame:
    return pd.DataFrame({
        "model": ["a", "b", "c"],
        "imagenet_acc": [0.7, 0.8, np.nan],
        "pools": [("all", "experts"), ("all",), ("experts",)],
    }).set_index("model")


@pytest.fixture
def report(records, metadata) -> dict:
    return compute_report(records, metadata, task_groups=GROUPS)


def regret(rep, strategy, budget, task, kind="strategies"):
    return rep[kind][strategy][str(budget)]["per_task"][task]


# ---------------------------------------------------------------------------------------------
# records


def test_percent_scale_accuracy_rejected_naming_the_line():
    df = pd.DataFrame({"model": ["a", "b"], "task": ["t", "t"],
                       "metric": ["finetune_test_acc", "finetune_test_acc"], "value": [0.9, 87.5]})
    with pytest.raises(RecordsError) as info:
        validate_records(df, source="my.csv")
    message = str(info.value)
    assert "my.csv" in message and "line 3" in message and "87.5" in message
    assert "accuracies must be fractions in [0, 1]; divide percentages by 100" in message


def test_percent_scale_accuracy_rejected_in_csv_file_naming_path_and_line(tmp_path):
    path = tmp_path / "records.csv"
    path.write_text("model,task,metric,value\na,t,proxy/linear,12.0\na,t,val/acc,0.5\nb,t,finetune_val_acc,87.5\n")
    with pytest.raises(RecordsError) as info:
        read_records_csv(path)
    message = str(info.value)
    assert str(path) in message and "line 4" in message and "'87.5'" in message
    assert "divide percentages by 100" in message


def test_accuracy_like_metric_names_are_range_checked():
    df = pd.DataFrame({"model": ["a"], "task": ["t"], "metric": ["val/acc"], "value": [1.5]})
    with pytest.raises(RecordsError, match="line 2"):
        validate_records(df)
    ok = pd.DataFrame({"model": ["a"], "task": ["t"], "metric": ["proxy/logme"], "value": [-3.5]})
    assert validate_records(ok)["value"].tolist() == [-3.5]  # proxies are not accuracies


def test_records_with_non_finite_or_missing_fields_rejected():
    df = pd.DataFrame({"model": ["a", ""], "task": ["t", "t"], "metric": ["proxy/knn"] * 2, "value": [0.5, 0.5]})
    with pytest.raises(RecordsError, match="line 3: model '' is empty"):
        validate_records(df)
    df = pd.DataFrame({"model": ["a"], "task": ["t"], "metric": ["proxy/knn"], "value": [np.nan]})
    with pytest.raises(RecordsError, match="not a finite number"):
        validate_records(df)
    with pytest.raises(RecordsError, match="missing column"):
        validate_records(pd.DataFrame({"model": ["a"], "task": ["t"], "value": [0.5]}))


def test_read_records_csv_reads_and_validates(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("model,task,metric,value\na,t,finetune_test_acc,0.5\n\nb,t,finetune_test_acc,0.25\n")
    df = read_records_csv(path)
    assert df["value"].tolist() == [0.5, 0.25] and df["model"].tolist() == ["a", "b"]


def test_repeated_rows_aggregated_by_median():
    df = pd.DataFrame({"model": ["a"] * 3 + ["b"], "task": ["t"] * 4, "metric": ["finetune_test_acc"] * 4,
                       "value": [0.9, 0.2, 0.95, 0.5]})
    agg = aggregate_records(validate_records(df))
    assert agg.set_index("model")["value"].to_dict() == {"a": 0.9, "b": 0.5}
    report = compute_report(df)
    assert report["finetune_test_acc"]["t"] == {"a": 0.9, "b": 0.5}


def test_pivot_metric_has_nan_for_missing_pairs(records):
    table = pivot_metric(records, "finetune_test_acc")
    assert list(table.index) == ["a", "b", "c"] and "t3" in table.columns
    assert math.isnan(table.at["c", "t3"]) and table.at["b", "t2"] == 0.6
    with pytest.raises(RecordsError, match="proxy/linear"):
        pivot_metric(records, "proxy/lineer")


def test_list_proxy_metrics_sorted(records):
    extra = pd.concat([records, long_records(proxy__knn={"t1": {"a": 0.1}})])
    assert list_proxy_metrics(extra) == ["proxy/knn", "proxy/linear"]


def test_read_models_csv_parses_pools_and_rejects_duplicates(tmp_path):
    path = tmp_path / "models.csv"
    path.write_text("model,imagenet_acc,params,pools\nvit,0.8,86e6,all;experts\nrn50,,25e6,all\n")
    meta = read_models_csv(path)
    assert pool_tags(meta.loc["vit", "pools"]) == ("all", "experts") and math.isnan(meta.loc["rn50", "imagenet_acc"])
    assert meta.loc["rn50", "params"] == 25e6
    assert models_in_pool(meta, "experts") == ["vit"]
    path.write_text("model,imagenet_acc\nvit,0.8\nrn50,0.7\nvit,0.9\n")
    with pytest.raises(RecordsError, match="line 4: duplicate model 'vit' \\(first on line 2\\)"):
        read_models_csv(path)


# ---------------------------------------------------------------------------------------------
# compute_report


def test_report_has_documented_keys_and_default_strategies(report):
    assert {"pool", "models", "tasks", "task_groups", "skipped_tasks", "budgets", "strategies", "log_odds",
            "zero_regret_budget", "picks", "finetune_test_acc", "best_model"} <= set(report)
    assert report["pool"] == "all" and report["models"] == ["a", "b", "c"]
    assert report["tasks"] == ["t1", "t2", "t3", "t4"]
    assert report["skipped_tasks"] == ["t5"]
    assert report["budgets"] == [1, 2, 3]
    assert list(report["strategies"]) == STRATEGIES == report["strategy_order"]
    assert set(report["strategies"]["per_task_best"]) == {"1", "2", "3"}


def test_report_regret_values_hand_computed(report):
    # task_agnostic picks b (highest imagenet_acc) everywhere: t1 (0.9 - 0.8) / (1 - 0.8)
    assert regret(report, "task_agnostic", 1, "t1") == pytest.approx(0.5)
    assert regret(report, "task_agnostic", 1, "t2") == 0.0
    assert regret(report, "task_agnostic", 2, "t1") == 0.0  # b, then a
    # proxy/linear on t2 picks c: (0.6 - 0.4) / (1 - 0.4)
    assert regret(report, "proxy/linear", 1, "t2") == pytest.approx(1 / 3)
    assert regret(report, "task_agnostic", 1, "t1", "log_odds") == pytest.approx(math.log(9) - math.log(4))
    # random: the regret of the expected pick, t1 B=1 s(S) = (0.9 + 0.8 + 0.7) / 3 = 0.8
    assert regret(report, "random", 1, "t1") == pytest.approx(0.5)
    block = report["strategies"]["task_agnostic"]["1"]
    assert block["mean"] == pytest.approx(0.5 / 4)
    assert block["per_group"] == pytest.approx({"natural": 0.25, "structured": 0.0, "specialized": 0.0})


def test_missing_pair_model_not_in_task_pool(report):
    # c has a proxy score on t3 (the highest) but no finetune_test_acc: it is not in t3's pool
    assert set(report["finetune_test_acc"]["t3"]) == {"a", "b"}
    assert report["picks"]["proxy/linear"]["t3"] == ["b", "a"]
    assert regret(report, "proxy/linear", 1, "t3") == 0.0
    # a budget beyond the task's pool picks the whole pool: s(S) = s*
    assert regret(report, "random", 3, "t3") == 0.0


def test_hybrid_at_budget_1_equals_task_agnostic_in_report(report):
    for task in report["tasks"]:
        assert regret(report, "hybrid:proxy/linear", 1, task) == regret(report, "task_agnostic", 1, task)
        assert report["picks"]["hybrid:proxy/linear"][task][0] == report["picks"]["task_agnostic"][task][0]


def test_per_task_best_regret_is_zero_everywhere(report):
    for b in report["budgets"]:
        for kind in ("strategies", "absolute", "log_odds"):
            block = report[kind]["per_task_best"][str(b)]
            assert block["mean"] == 0.0 and set(block["per_task"].values()) == {0.0}
    assert report["zero_regret_budget"]["per_task_best"] == {t: 1 for t in report["tasks"]}
    assert report["best_model"] == {"t1": "a", "t2": "b", "t3": "a", "t4": "a"}  # ties by name


def test_all_one_task_has_zero_regret_for_every_strategy(report):
    for name in STRATEGIES:
        for b in report["budgets"]:
            assert regret(report, name, b, "t4") == 0.0
            assert regret(report, name, b, "t4", "log_odds") == 0.0


def test_zero_regret_budget_none_when_never_zero_in_budgets(records, metadata):
    rep = compute_report(records, metadata, max_budget=1)
    assert rep["budgets"] == [1]
    assert rep["zero_regret_budget"]["proxy/linear"]["t2"] is None
    assert rep["zero_regret_budget"]["proxy/linear"]["t1"] is None
    assert rep["zero_regret_budget"]["task_agnostic"]["t2"] == 1


def test_pool_restriction_changes_pool_and_oracle(records, metadata):
    rep = compute_report(records, metadata, pool="experts", pool_models=["a", "c"])
    assert rep["pool"] == "experts" and rep["models"] == ["a", "c"]
    assert rep["finetune_test_acc"]["t2"] == {"a": 0.5, "c": 0.4}
    assert rep["budgets"] == [1, 2]
    # t2: s* = 0.5 (b is outside the pool); proxy picks c: (0.5 - 0.4) / (1 - 0.4)
    assert regret(rep, "proxy/linear", 1, "t2") == pytest.approx(1 / 6)
    assert rep["picks"]["task_agnostic"]["t1"] == ["a", "c"]
    # the same pool, read from the metadata's pools column
    assert compute_report(records, metadata, pool="experts") == rep


def test_pool_without_any_data_is_an_error(records):
    with pytest.raises(RecordsError, match="check the pool's model names"):
        compute_report(records, pool="tiny", pool_models=["zz"])
    with pytest.raises(RecordsError, match="pools"):
        compute_report(records, pool="experts")  # no metadata to define the pool


def test_selected_strategies_and_unknown_name(records):
    rep = compute_report(records, strategies=["per_task_best", "proxy/linear"])
    assert list(rep["strategies"]) == ["per_task_best", "proxy/linear"]
    with pytest.raises(KeyError, match="known strategies"):
        compute_report(records, strategies=["proxy/logme"])


def test_records_without_ground_truth_rejected():
    with pytest.raises(RecordsError, match="finetune_test_acc"):
        compute_report(long_records(proxy__linear=LINEAR))


def test_report_is_json_serialisable_and_stable(report, records, metadata):
    text = json.dumps(report, sort_keys=True, allow_nan=False)
    assert json.loads(text) == report
    assert compute_report(records, metadata, task_groups=GROUPS) == report


# ---------------------------------------------------------------------------------------------
# formatting and files


def test_format_table_contains_every_strategy_and_task(report):
    text = format_table(report)
    for name in STRATEGIES + report["tasks"] + ["natural", "structured", "mean"]:
        assert name in text
    assert text.count("B = ") == 3
    one = format_table(report, budget=2)
    assert "B = 2" in one and "B = 1" not in one
    with pytest.raises(ValueError, match="budgets reported"):
        format_table(report, budget=7)


def test_format_table_without_groups_has_mean_row(records):
    text = format_table(compute_report(records), budget=1)
    lines = text.splitlines()
    assert lines[1].split()[0] == "task" and any(line.split()[0] == "mean" for line in lines[3:] if line)


def test_format_markdown_has_regret_and_bold_best_accuracy(report):
    md = format_markdown(report)
    assert "## Relative regret, B = 1" in md and "## Relative regret, B = 3" in md
    assert ("| group | task | task_agnostic | static:imagenet_acc | proxy/linear | hybrid:proxy/linear | "
            "task_agnostic_oracle | task_agnostic_oracle_loto | choicenet_records | per_task_best | "
            "random |") in md
    # tasks in the report's grouped order (t1, t2, t4 grouped; then t3), as report.html has them
    assert "| model | t1 | t2 | t4 | t3 |" in md
    assert "| a | **0.9000** | 0.5000 | **1.0000** | **0.7000** |" in md
    assert "| c | 0.7000 | 0.4000 | **1.0000** | - |" in md


def test_write_report_writes_every_file_and_json_round_trips(report, tmp_path):
    paths = write_report(report, tmp_path / "out")
    assert set(paths) == {"html", "md", "csv", "json", "png", "png_b2", "png_heatmap",
                          "png_budget", "png_zero", "png_proxies", "png_compute",
                          "appendix_g_md", "appendix_g_csv"}
    names = ["appendix_g.csv", "appendix_g.md", "proxies.png", "regret.csv", "regret.json",
             "regret.md", "regret.png", "regret_b2.png", "regret_budget.png",
             "regret_compute.png", "regret_heatmap.png", "report.html", "zero_regret.png"]
    assert sorted(p.name for p in paths.values()) == names
    assert sorted(os.listdir(tmp_path / "out")) == names
    for kind in ("png", "png_b2", "png_heatmap", "png_budget", "png_zero", "png_proxies"):
        assert paths[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = json.loads(paths["json"].read_text())
    assert loaded == report
    assert paths["json"].read_text() == json.dumps(report, indent=2, sort_keys=True) + "\n"
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = pd.read_csv(paths["csv"], keep_default_na=False)
    assert list(csv.columns) == ["strategy", "budget", "task", "group", "relative_regret",
                                 "absolute_regret", "log_odds_regret"]
    g = pd.read_csv(paths["appendix_g_csv"])
    assert list(g.columns) == ["pool", "task", "strategy", "budget"]
    assert "task_agnostic_oracle" in set(g.strategy) and "per_task_best" not in set(g.strategy)
    overall = csv[(csv.strategy == "task_agnostic") & (csv.budget == 1) & (csv.task == "mean") & (csv.group == "")]
    assert overall["relative_regret"].tolist() == pytest.approx([0.125])
    row = csv[(csv.strategy == "proxy/linear") & (csv.budget == 1) & (csv.task == "t2")].iloc[0]
    assert row["group"] == "natural" and row["relative_regret"] == pytest.approx(1 / 3)
    assert len(csv) == len(STRATEGIES) * 3 * (4 + 3 + 1)  # tasks + group means + mean


def test_write_report_failure_leaves_no_partial_file(report, tmp_path, monkeypatch):
    def broken_png(_report):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report_plots, "render_png", broken_png)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_report(report, tmp_path)
    assert os.listdir(tmp_path) == []

    monkeypatch.undo()
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("regret.json"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(report, tmp_path)
    assert "regret.json" not in os.listdir(tmp_path)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------
# the measures: JSON keys, rank agreement, zero regret, budgets up to 10, pools, ChoiceNet


def test_json_has_the_documented_shape(report):
    assert {"pool", "tasks", "strategies", "log_odds", "zero_regret_budget", "zero_regret_budget_full",
            "zero_regret_fraction", "weighted_tau", "pearson", "proxy_scores", "choicenet",
            "models_without_results"} <= set(report)
    for kind in ("strategies", "absolute", "log_odds"):
        for name in STRATEGIES:
            for b in ("1", "2", "3"):
                block = report[kind][name][b]
                assert set(block) == {"mean", "per_task", "per_group"}
                assert set(block["per_task"]) == set(report["tasks"])
    assert set(report["weighted_tau"]) == set(report["pearson"]) == {"proxy/linear"}
    assert set(report["weighted_tau"]["proxy/linear"]) == set(report["tasks"])
    # no embeddings, no predictions: the ChoiceNet block is there with null values; the records
    # learner ranks, so it has rank agreement and no MSE
    assert set(report["choicenet"]) == {"v1", "v2", "choicenet_records"}
    learner = report["choicenet"]["choicenet_records"]
    assert learner["mse"] is None and set(learner["weighted_tau"]) == set(report["tasks"])
    assert report["choicenet"]["v1"]["mse"] is None and report["choicenet"]["v2"]["n_pairs"] == 0
    json.dumps(report, allow_nan=False)


def test_weighted_tau_is_scipys_call_and_null_where_undefined(report):
    tau = report["weighted_tau"]["proxy/linear"]
    # models in name order a, b, c; acc first, score second, rank=None
    assert tau["t1"] == pytest.approx(weightedtau([0.9, 0.8, 0.7], [0.5, 0.6, 0.1], rank=None).statistic)
    assert tau["t2"] == pytest.approx(-1.0)  # the proxy reverses the accuracy order exactly
    assert tau["t2"] == pytest.approx(weightedtau([0.5, 0.6, 0.4], [0.3, 0.2, 0.9], rank=None).statistic)
    assert tau["t3"] is None  # a and b tie at 0.7: constant accuracy (c is not in t3's pool)
    assert tau["t4"] is None  # every model scores 1.0


def test_pearson_hand_computed_and_null_where_undefined(report):
    r = report["pearson"]["proxy/linear"]
    # t1: centred acc (0.1, 0, -0.1), centred score (0.1, 0.2, -0.3): 0.04 / sqrt(0.02 * 0.14)
    assert r["t1"] == pytest.approx(0.04 / math.sqrt(0.02 * 0.14))
    assert r["t1"] == pytest.approx(pearsonr([0.9, 0.8, 0.7], [0.5, 0.6, 0.1]).statistic)
    assert r["t2"] == pytest.approx(pearsonr([0.5, 0.6, 0.4], [0.3, 0.2, 0.9]).statistic)
    assert r["t3"] is None and r["t4"] is None


def test_rank_agreement_null_with_fewer_than_two_models():
    recs = long_records(finetune_test_acc={"t": {"a": 0.9}}, proxy__knn={"t": {"a": 0.3, "b": 0.5}})
    rep = compute_report(recs)
    assert rep["weighted_tau"]["proxy/knn"]["t"] is None and rep["pearson"]["proxy/knn"]["t"] is None
    assert rep["proxy_scores"]["proxy/knn"]["t"] == {"a": 0.3}  # b has no fine-tune: not in the pool


def test_zero_regret_fraction_hand_computed(report):
    frac = report["zero_regret_fraction"]
    # B = 1: task_agnostic picks b: misses only t1; proxy/linear misses t1 (b) and t2 (c)
    assert frac["task_agnostic"] == {"1": 0.75, "2": 1.0, "3": 1.0}
    assert frac["proxy/linear"] == {"1": 0.5, "2": 0.75, "3": 1.0}
    # random (Figure 7 is a probability): B/n on t1 and t2 (one best of three), 1 on t3 (a tie
    # of the two) and t4 (all 1.0)
    assert frac["random"] == pytest.approx({"1": (1 / 3 + 1 / 3 + 1 + 1) / 4,
                                            "2": (2 / 3 + 2 / 3 + 1 + 1) / 4, "3": 1.0})
    assert frac["per_task_best"] == {"1": 1.0, "2": 1.0, "3": 1.0}


def test_zero_regret_budget_over_the_whole_pool(records, metadata):
    rep = compute_report(records, metadata, max_budget=1)
    full = rep["zero_regret_budget_full"]
    assert rep["zero_regret_budget"]["proxy/linear"]["t2"] is None  # not within B = 1
    assert full["proxy/linear"]["t2"] == 3  # c (0.4), a (0.5), then b (0.6, the best)
    assert full["proxy/linear"]["t1"] == 2  # b, then a
    assert full["random"] == {"t1": 3, "t2": 3, "t3": 1, "t4": 1}  # n - ties + 1
    assert full["per_task_best"] == {t: 1 for t in rep["tasks"]}


def twelve_models() -> pd.DataFrame:
    models = [f"m{i:02d}" for i in range(12)]
    acc = {"t": {m: 0.50 + 0.03 * i for i, m in enumerate(models)}}  # m11 is best
    knn = {"t": {m: float(i % 5) for i, m in enumerate(models)}}     # m04 and m09 top, then ...
    return long_records(finetune_test_acc=acc, proxy__knn=knn)


def test_budgets_up_to_10():
    rep = compute_report(twelve_models(), max_budget=10)
    assert rep["budgets"] == list(range(1, 11))
    assert set(rep["strategies"]["proxy/knn"]) == {str(b) for b in range(1, 11)}
    # knn ranks scores 4 (m04, m09), 3 (m03, m08), 2 (m02, m07), 1 (m01, m06, m11), 0 ...
    assert rep["picks"]["proxy/knn"]["t"] == ["m04", "m09", "m03", "m08", "m02", "m07", "m01", "m06", "m11", "m00"]
    assert rep["zero_regret_budget"]["proxy/knn"]["t"] == 9
    # B = 8 takes 2 of the tied (m01, m06, m11): the best, m11, with probability 2/3
    assert rep["zero_regret_fraction"]["proxy/knn"]["8"] == pytest.approx(2 / 3)
    assert rep["zero_regret_fraction"]["proxy/knn"]["9"] == 1.0
    # B = 8: the first 6 models and 2 of the tied (m01, m06, m11): m11 is among them with
    # probability 2/3; else the best pick is m09
    s_star, s8 = 0.50 + 0.33, 0.50 + 0.27
    expected = 2 / 3 * s_star + 1 / 3 * s8  # s(S), and the regret is of it
    assert rep["strategies"]["proxy/knn"]["8"]["mean"] == pytest.approx(
        (s_star - expected) / (1 - expected))
    assert rep["strategies"]["random"]["10"]["mean"] > 0  # 10 of 12 can still miss m11
    with pytest.raises(ValueError, match="at most 10"):
        compute_report(twelve_models(), max_budget=11)


def test_budgets_stop_at_the_largest_task_pool(records):
    assert compute_report(records, max_budget=10)["budgets"] == [1, 2, 3]


def test_explicit_named_pools_and_tags(records, metadata):
    by_tag = compute_report(records, metadata, pool="experts")
    explicit = compute_report(records, metadata, pool="experts", pools={"experts": ["c", "a"]})
    assert by_tag == explicit and explicit["models"] == ["a", "c"]
    small = compute_report(records, metadata, pool="small", pools={"small": ["b", "c"], "other": ["a"]})
    assert small["pool"] == "small" and small["models"] == ["b", "c"]
    assert small["finetune_test_acc"]["t3"] == {"b": 0.7}  # c has no t3 result
    # an explicit list wins over a tag of the same name
    assert compute_report(records, metadata, pool="experts", pools={"experts": ["b"]})["models"] == ["b"]
    with pytest.raises(TypeError, match="list of model names"):
        resolve_pool("x", ["a"], pools={"x": "a"})


def test_pool_models_without_results_are_listed(records):
    rep = compute_report(records, pool="mine", pool_models=["a", "zz"])
    assert rep["models"] == ["a", "zz"] and rep["models_without_results"] == ["zz"]


def predictions_v1() -> pd.DataFrame:
    return pd.DataFrame({"t1": {"a": 0.6, "b": 0.9, "c": 0.5}, "t2": {"a": 0.5, "b": 0.4, "c": 0.2}})


def test_choicenet_predictions_become_strategies_with_mse(records, metadata):
    rep = compute_report(records, metadata, predictions={"choicenet_v1": predictions_v1()})
    assert rep["strategy_order"] == ["task_agnostic", "static:imagenet_acc", "proxy/linear",
                                     "hybrid:proxy/linear",
                                     "task_agnostic_oracle", "task_agnostic_oracle_loto",
                                     "choicenet_v1", "choicenet_records", "per_task_best",
                                     "random"]
    # B = 1: t1 picks b (0.9 predicted): (0.9 - 0.8) / 0.2; t2 picks a: (0.6 - 0.5) / 0.5;
    # t3 and t4 have no predictions: one tie group, at zero regret (a and b tie on t3)
    assert regret(rep, "choicenet_v1", 1, "t1") == pytest.approx(0.5)
    assert regret(rep, "choicenet_v1", 1, "t2") == pytest.approx(0.2)
    assert regret(rep, "choicenet_v1", 1, "t3") == 0.0
    block = rep["choicenet"]["v1"]
    assert block["n_pairs"] == 6
    assert block["mse"] == pytest.approx((0.09 + 0.01 + 0.04 + 0.0 + 0.04 + 0.04) / 6)
    assert block["per_task_mse"]["t1"] == pytest.approx(0.14 / 3) and block["per_task_mse"]["t3"] is None
    assert block["weighted_tau"]["t1"] == pytest.approx(
        weightedtau([0.9, 0.8, 0.7], [0.6, 0.9, 0.5], rank=None).statistic)
    assert rep["choicenet"]["v2"]["mse"] is None
    assert "choicenet v1" in format_table(rep) and "## ChoiceNet" in format_markdown(rep)


def test_bad_predictions_rejected(records):
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        compute_report(records, predictions={"choicenet_v1": predictions_v1() * 100})
    with pytest.raises(ValueError, match="built-in"):
        compute_report(records, predictions={"per_task_best": predictions_v1()})
    with pytest.raises(KeyError, match="predictions="):
        compute_report(records, strategies=["choicenet_v2"])


def test_markdown_and_table_report_rank_agreement_and_zero_regret(report):
    md = format_markdown(report)
    assert "## Fraction of tasks at zero regret (Figure 7)" in md
    assert "| task_agnostic | 0.750 | 1.000 | 1.000 |" in md
    assert "weighted Kendall tau" in md and "Pearson" in md
    assert "Appendix G" in md
    text = format_table(report, budget=1)
    assert "rank agreement" in text and "proxy/linear" in text
