"""The report's compute (selection/report/costs.py): what each strategy spent, from records with
known seconds, the Pareto frontier, and how the figure, the HTML table and the terminal show it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from selection.report.compute import compute_report
from selection.report.costs import add_fit_seconds, add_search_compute, expected_finetune, frontier

ACC = {"t1": {"a": 0.9, "b": 0.8, "c": 0.7}, "t2": {"a": 0.5, "b": 0.6, "c": 0.4}}
LINEAR = {"t1": {"a": 0.5, "b": 0.6, "c": 0.1}, "t2": {"a": 0.3, "b": 0.2, "c": 0.9}}
TUNE_S = {"a": 10.0, "b": 20.0, "c": 30.0}  # each model's fine-tune seconds, on both tasks


def records(times: bool = True) -> pd.DataFrame:
    rows = [(m, t, "finetune_test_acc", v) for t, d in ACC.items() for m, v in d.items()]
    rows += [(m, t, "proxy/linear", v) for t, d in LINEAR.items() for m, v in d.items()]
    if times:
        rows += [(m, t, "time/features", 1.0) for t in ACC for m in TUNE_S]
        rows += [(m, t, "time/proxy/linear", 0.5) for t in ACC for m in TUNE_S]
        rows += [(m, t, "time/finetune", TUNE_S[m]) for t in ACC for m in TUNE_S]
    return pd.DataFrame(rows, columns=["model", "task", "metric", "value"])


@pytest.fixture
def report() -> dict:
    # task-agnostic ranks b (ImageNet 0.8), a (0.7), then c (none)
    meta = pd.DataFrame({"model": ["a", "b", "c"], "imagenet_acc": [0.7, 0.8, np.nan]})
    return compute_report(records(), meta.set_index("model"), max_budget=2)


def spent(report, name, b):
    block = report["compute"][name][str(b)]
    return block["decision_s"], block["finetune_s"], block["total_s"]


def test_compute_of_each_strategy_from_records_with_known_seconds(report):
    # proxy/linear pays the pool's probes on both tasks: 2 x 3 x (1 s features + 0.5 s proxy);
    # its picks: b on t1, c on t2 (20 + 30); at B = 2 also a on both (+ 2 x 10)
    assert spent(report, "proxy/linear", 1) == (9.0, 50.0, 59.0)
    assert spent(report, "proxy/linear", 2) == (9.0, 70.0, 79.0)
    # the hybrid: task-agnostic's b first, then the proxy's order (a on t1, c on t2)
    assert spent(report, "hybrid:proxy/linear", 2) == (9.0, 80.0, 89.0)
    assert spent(report, "task_agnostic", 1) == (0.0, 40.0, 40.0)  # b on both, no probes
    # random: each model with probability B/3, the mean of 10, 20, 30 per pick
    assert spent(report, "random", 1) == (0.0, pytest.approx(40.0), pytest.approx(40.0))
    assert spent(report, "random", 2) == (0.0, pytest.approx(80.0), pytest.approx(80.0))
    # the exhaustive search (and the oracle that reads every result) fine-tunes everything
    assert spent(report, "per_task_best", 1) == (120.0, 0.0, 120.0)
    assert spent(report, "task_agnostic_oracle", 2) == (120.0, 0.0, 120.0)
    # the records learner reads every proxy's probes (its fit: only with timings)
    assert spent(report, "choicenet_records", 1)[0] == 9.0
    assert report["compute_finetune_s"]["t2"] == TUNE_S
    json.dumps(report, allow_nan=False)  # the JSON stays strict


def test_frontier_of_the_report_is_the_cheapest_for_each_regret(report):
    front = [(p["strategy"], p["budget"], p["total_s"]) for p in report["compute_frontier"]]
    # the leave-one-task-out oracle picks a and b for 30 s (regret 0.35); task-agnostic reaches
    # 0.25 for 40 s and zero regret at B = 2 for 60 s: the exhaustive search (120 s) is beaten
    assert front == [("task_agnostic_oracle_loto", 1, 30.0), ("task_agnostic", 1, 40.0),
                     ("task_agnostic", 2, 60.0)]


def test_frontier_where_one_strategy_dominates_is_that_strategy_alone():
    table = {"strategies": {"cheap": {"1": {"mean": 0.0}}, "dear": {"1": {"mean": 0.1}},
                            "per_task_best": {"1": {"mean": 0.0}}},
             "compute": {"cheap": {"1": {"decision_s": 1.0, "finetune_s": 9.0, "total_s": 10.0}},
                         "dear": {"1": {"decision_s": 5.0, "finetune_s": 15.0, "total_s": 20.0}},
                         "per_task_best": {"1": {"decision_s": 99.0, "finetune_s": 0.0,
                                                 "total_s": 99.0}}}}
    assert [p["strategy"] for p in frontier(table)] == ["cheap"]
    # where nothing cheaper reaches zero regret, the exhaustive search closes the frontier
    table["strategies"]["cheap"]["1"]["mean"] = 0.2
    assert [p["strategy"] for p in frontier(table)] == ["cheap", "dear", "per_task_best"]
    table["compute"]["dear"]["1"]["total_s"] = None  # unknown compute: not a point
    assert [p["strategy"] for p in frontier(table)] == ["cheap", "per_task_best"]


def test_expected_fine_tune_of_a_cut_tie_group_is_its_share():
    tuned = {"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0}
    ranking = [(1.0, [["a"], ["b", "c", "d"]])]
    assert expected_finetune(ranking, 1, tuned) == 10.0
    assert expected_finetune(ranking, 2, tuned) == pytest.approx(10.0 + 90.0 / 3)
    assert expected_finetune(ranking, 9, tuned) == 100.0  # beyond the pool: all of it
    mixture = [(0.5, [["a"], ["b"]]), (0.5, [["b"], ["a"]])]
    assert expected_finetune(mixture, 1, tuned) == 15.0
    assert expected_finetune(ranking, 2, {**tuned, "d": None}) is None  # unknown, never 0


def test_records_without_seconds_give_no_compute_and_a_note_figure(tmp_path):
    from selection.report.files import write_report
    from selection.report.leaderboard import format_leaderboard
    from selection.report.plots import png_size

    report = compute_report(records(times=False), max_budget=2)
    assert report["compute"] == {} and report["compute_frontier"] == []
    assert "compute frontier" not in format_leaderboard(report)
    paths = write_report(report, tmp_path)
    assert png_size(paths["png_compute"].read_bytes())[0] <= 2000
    assert "Compute: what each strategy spent" not in paths["html"].read_text()


def test_fits_and_the_search_join_the_compute_and_move_the_frontier(report):
    add_fit_seconds(report, {"choicenet_records": 2.0})
    assert spent(report, "choicenet_records", 2)[0] == 11.0
    # the search: on t1 a third of the exhaustive steps, on t2 all; its searched runs are a half
    # of each pair's fine-tune seconds; then its pick's fine-tune (a: 10, b: 20)
    report["budgeted_search"] = {"mean_relative_regret": 0.0}
    add_search_compute(report, {"t1": {"pick": "a", "steps": 1, "exhaustive_steps": 3},
                                "t2": {"pick": "b", "steps": 3, "exhaustive_steps": 3}}, 0.5)
    assert report["compute"]["search/asha"]["1"] == {
        "decision_s": pytest.approx(60 / 3 * 0.5 + 60 * 0.5), "finetune_s": 30.0,
        "total_s": pytest.approx(70.0)}
    assert "search/asha" not in [p["strategy"] for p in report["compute_frontier"]]  # 70 > 60


def test_the_figure_the_html_table_and_the_terminal_name_the_frontier(report, tmp_path):
    from selection.report.files import write_report
    from selection.report.leaderboard import format_leaderboard
    from selection.report.plots import png_size

    paths = write_report(report, tmp_path)
    width, _ = png_size(paths["png_compute"].read_bytes())
    assert paths["png_compute"].name == "regret_compute.png" and width <= 2000
    page = paths["html"].read_text()
    assert "Compute: what each strategy spent" in page and "regret_compute.png" in page
    assert "Compute: what each strategy spent" in paths["md"].read_text()
    text = format_leaderboard(report)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    start = next(i for i, line in enumerate(lines) if line.startswith("compute frontier"))
    frontier_text = " ".join(lines[start:start + 3])
    assert "task_agnostic_oracle_loto B=1 30s 0.350" in frontier_text
    assert "task_agnostic B=2 1m00s 0.000" in frontier_text
    # the cheapest probe against fine-tuning every model: 9 s of 120 s
    assert "probing the pool for proxy/linear took 9.0s: 1/13 of fine-tuning every model" in text
