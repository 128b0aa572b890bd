"""Strategy registry and rankings (selection.strategies): tie groups, the task-agnostic rule with
approximate ties, the two task-agnostic oracles, per-task best, random."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from selection import strategies as strategies_module
from selection.rankings import ScoreStrategy, flat
from selection.strategies import (
    UnknownStrategyError,
    create_strategy,
    list_strategies,
    register_strategy,
)

NAN = np.nan
MODELS = ["a", "b", "c", "d"]


def table(values: dict[str, dict[str, float]]) -> pd.DataFrame:
    """{task: {model: value}} -> pivot table (index model, columns task)."""
    t = pd.DataFrame(values).reindex(MODELS)
    t.index.name, t.columns.name = "model", "task"
    return t


@pytest.fixture
def scores() -> dict[str, pd.DataFrame]:
    return {
        "finetune_test_acc": table({"t1": {"a": 0.70, "b": 0.90, "c": 0.80, "d": 0.60},
                                    "t2": {"a": 0.50, "b": 0.40, "c": 0.55, "d": 0.45}}),
        "proxy/linear": table({"t1": {"a": 0.3, "b": 0.3, "c": 0.9, "d": NAN},
                               "t2": {"a": NAN, "b": 0.2, "c": 0.1, "d": 0.4}}),
        "proxy/knn": table({"t1": {"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.5},
                            "t2": {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}}),
    }


@pytest.fixture
def metadata() -> pd.DataFrame:
    return pd.DataFrame({
        "model": ["a", "b", "c", "d"],
        "imagenet_acc": [0.80, NAN, 0.80, 0.70],
        "upstream_size": [1e6, 1e9, 2e6, 1e9],
        "params": [10, 20, 30, 40],
    }).set_index("model")


def groups(strategy, task, models=MODELS):
    return strategy.rank_groups(task, list(models))


def test_list_strategies_order():
    assert list_strategies(["proxy/knn", "proxy/linear"]) == [
        "task_agnostic", "proxy/knn", "proxy/linear", "hybrid:proxy/knn", "hybrid:proxy/linear",
        "task_agnostic_oracle", "task_agnostic_oracle_loto", "ensemble:all", "choicenet_records",
        "per_task_best", "random",
    ]
    assert list_strategies([]) == ["task_agnostic", "task_agnostic_oracle",
                                   "task_agnostic_oracle_loto", "per_task_best", "random"]
    assert list_strategies(["proxy/knn"], predicted=["choicenet_v1", "nearest_task"])[-5:] == [
        "choicenet_v1", "nearest_task", "choicenet_records", "per_task_best", "random"]


def test_task_agnostic_orders_by_accuracy_then_upstream_size(scores, metadata):
    s = create_strategy("task_agnostic", scores, metadata)
    # imagenet_acc: a = c = 0.80 (a tie: more parameters first, c 30 > a 10), d 0.70; b has no
    # accuracy: after every model that has one, by upstream size
    assert groups(s, "t1") == [["c"], ["a"], ["d"], ["b"]]
    assert groups(s, "t2") == groups(s, "t1")  # the same order for every task
    assert create_strategy("task_agnostic", scores, metadata.reset_index()).rank_groups(
        "t1", MODELS) == [["c"], ["a"], ["d"], ["b"]]


def test_an_approximate_tie_goes_to_more_parameters_unless_the_tolerance_is_zero():
    meta = pd.DataFrame({"imagenet_acc": [0.803, 0.800, 0.790], "params": [20e6, 60e6, 90e6]},
                        index=pd.Index(["small", "big", "third"], name="model"))
    truth = {"finetune_test_acc": table({"t": {}})}
    # 0.3 points apart, the bigger model second by accuracy: reordered by parameters ...
    s = create_strategy("task_agnostic", truth, meta)
    assert flat(s.rank_groups("t", ["small", "big", "third"])) == ["big", "small", "third"]
    # ... within 0.5 points of the group's *first* only (0.790 is 1.3 points below 0.803)
    assert s.rank_groups("t", ["third", "big"]) == [["big"], ["third"]]
    strict = create_strategy("task_agnostic", truth, meta, tie_tolerance=0.0)
    assert flat(strict.rank_groups("t", ["small", "big", "third"])) == ["small", "big", "third"]


def test_task_agnostic_without_metadata_is_one_tie_group(scores):
    s = create_strategy("task_agnostic", scores, None)
    assert groups(s, "t1", ["d", "b", "a"]) == [["a", "b", "d"]]
    no_keys = pd.DataFrame({"model": ["b", "a"], "family": ["x", "y"]})
    assert groups(create_strategy("task_agnostic", scores, no_keys), "t1", ["b", "a"]) == [
        ["a", "b"]]  # no keys at all, parameters unknown: a tie, never the names' order


def test_task_agnostic_ranks_models_missing_from_metadata_last_and_tied(scores, metadata):
    s = create_strategy("task_agnostic", scores, metadata.drop(index=["c", "a"]))
    assert groups(s, "t1") == [["d"], ["b"], ["a", "c"]]


def test_equal_proxy_scores_tie_and_missing_scores_tie_last(scores):
    knn = create_strategy("proxy/knn", scores, None)
    assert groups(knn, "t1", ["d", "c", "b", "a"]) == [["a", "b", "c", "d"]]  # a constant proxy
    assert groups(knn, "t2") == [["d"], ["c"], ["b"], ["a"]]
    linear = create_strategy("proxy/linear", scores, None)
    assert groups(linear, "t1") == [["c"], ["a", "b"], ["d"]]  # a/b tie; d has no score
    assert groups(linear, "t2") == [["d"], ["b"], ["c"], ["a"]]  # a: NaN is no score
    assert groups(linear, "t_unknown", ["b", "a"]) == [["a", "b"]]
    assert groups(linear, "t1", ["a", "d"]) == [["a"], ["d"]] and groups(linear, "t1", []) == []


def test_hybrid_is_task_agnostic_top1_then_proxy(scores, metadata):
    hybrid = create_strategy("hybrid:proxy/linear", scores, metadata)
    assert hybrid.name == "hybrid:proxy/linear"
    assert groups(hybrid, "t1") == [["c"], ["a", "b"], ["d"]]
    assert groups(hybrid, "t2") == [["c"], ["d"], ["b"], ["a"]]
    agnostic = create_strategy("task_agnostic", scores, metadata)
    for task in ("t1", "t2"):
        assert groups(hybrid, task)[0] == groups(agnostic, task)[0]


def test_task_agnostic_oracles_rank_by_mean_accuracy_over_all_or_the_other_tasks():
    truth = table({"t1": {"a": 0.9, "b": 0.5, "c": 0.7, "d": NAN},
                   "t2": {"a": 0.1, "b": 0.6, "c": 0.7, "d": 0.8},
                   "t3": {"a": 0.2, "b": 0.7, "c": 0.1, "d": NAN}})
    scores = {"finetune_test_acc": truth}
    oracle = create_strategy("task_agnostic_oracle", scores)
    # means over all tasks: a 0.4, b 0.6, c 0.5, d 0.8 (its one result)
    assert groups(oracle, "t1") == groups(oracle, "t2") == [["d"], ["b"], ["c"], ["a"]]
    loto = create_strategy("task_agnostic_oracle_loto", scores)
    # without t1: a 0.15, b 0.65, c 0.4, d 0.8; without t2: a 0.55, b 0.6, c 0.4, and d has no
    # other result (ties last)
    assert groups(loto, "t1") == [["d"], ["b"], ["c"], ["a"]]
    assert groups(loto, "t2") == [["b"], ["a"], ["c"], ["d"]]


def test_task_agnostic_oracle_loto_never_reads_the_ranked_task():
    truth = table({"t1": {"a": 0.9, "b": 0.5, "c": 0.7, "d": 0.2},
                   "t2": {"a": 0.1, "b": 0.6, "c": 0.7, "d": 0.8}})
    loto = create_strategy("task_agnostic_oracle_loto", {"finetune_test_acc": truth})
    changed = truth.copy()
    changed["t1"] = [0.0, 1.0, 0.3, 0.99]
    again = create_strategy("task_agnostic_oracle_loto", {"finetune_test_acc": changed})
    assert groups(loto, "t1") == groups(again, "t1") == [["d"], ["c"], ["b"], ["a"]]
    assert groups(loto, "t2") == [["a"], ["c"], ["b"], ["d"]]


def test_per_task_best_ranks_by_finetune_test_acc(scores):
    s = create_strategy("per_task_best", scores, None)
    assert groups(s, "t1") == [["b"], ["c"], ["a"], ["d"]]
    assert groups(s, "t2") == [["c"], ["a"], ["d"], ["b"]]


def test_random_is_the_whole_pool_as_one_tie_group(scores):
    assert groups(create_strategy("random", scores, None), "t1") == [MODELS]


def test_unknown_strategy_lists_known_names(scores):
    with pytest.raises(KeyError) as info:
        create_strategy("proxy/logme", scores, None)
    message = str(info.value)
    assert isinstance(info.value, UnknownStrategyError)
    assert "proxy/logme" in message and "proxy/linear" in message and "hybrid:proxy/knn" in message
    with pytest.raises(KeyError, match="known strategies"):
        create_strategy("hybrid:proxy/logme", scores, None)
    with pytest.raises(KeyError, match="known strategies"):
        create_strategy("oracle", scores, None)  # renamed per_task_best


def test_strategies_without_ground_truth_say_what_is_missing():
    for name in ("per_task_best", "task_agnostic_oracle", "task_agnostic_oracle_loto"):
        with pytest.raises(KeyError, match="finetune_test_acc"):
            create_strategy(name, {}, None)


def test_register_strategy_adds_a_named_factory(scores):
    register_strategy("choicenet", lambda ctx: ScoreStrategy("choicenet", ctx.scores["proxy/knn"]))
    try:
        assert list_strategies(["proxy/knn"])[-3:] == ["choicenet", "per_task_best", "random"]
        assert groups(create_strategy("choicenet", scores, None), "t2") == [
            ["d"], ["c"], ["b"], ["a"]]
    finally:
        strategies_module.STRATEGIES.unregister("choicenet")
    with pytest.raises(ValueError, match="reserved"):
        register_strategy("per_task_best", lambda ctx: None)


def test_only_the_bounds_read_the_tasks_own_results():
    specs = {n: strategies_module.get_strategy_spec(n, ["proxy/knn"], ["choicenet_v1"])
             for n in list_strategies(["proxy/knn"], ["choicenet_v1"])}
    assert {n for n, s in specs.items() if s.uses_task_results} == {"task_agnostic_oracle",
                                                                    "per_task_best"}


def test_predicted_tables_rank_by_predicted_accuracy(scores):
    predicted = table({"t1": {"a": 0.61, "b": 0.7, "c": 0.61, "d": NAN}})
    s = create_strategy("choicenet_v1", {**scores, "choicenet_v1": predicted}, None)
    assert s.name == "choicenet_v1"
    assert groups(s, "t1") == [["b"], ["a", "c"], ["d"]]
    assert groups(s, "t2", ["c", "a"]) == [["a", "c"]]  # no predictions for the task


def test_choicenet_strategy_without_predictions_says_how_to_get_them(scores):
    with pytest.raises(KeyError, match="predictions=") as info:
        create_strategy("choicenet_v2", scores, None)
    assert "predict_choicenet" in str(info.value)


def test_predicted_table_names_cannot_shadow_built_in_strategies():
    for bad in ("per_task_best", "task_agnostic_oracle", "proxy/knn", "hybrid:x",
                "finetune_test_acc", "", " v1"):
        with pytest.raises(ValueError):
            strategies_module.check_predicted_name(bad)
    assert strategies_module.check_predicted_name("choicenet_v1") == "choicenet_v1"


def test_score_ranking_handles_negative_scores_and_models_absent_from_the_table(scores):
    logme = table({"t1": {"a": -3.5, "b": -1.0, "c": -1.0, "d": -7.0}})
    s = create_strategy("proxy/logme", {**scores, "proxy/logme": logme}, None)
    assert groups(s, "t1", ["zz", "d", "c", "b", "a"]) == [["b", "c"], ["a"], ["d"], ["zz"]]


# --------------------------------------------------------------------------------------------
# the paper's definitions (issue 23): ties decided within the pool, exact ties as ties, static
# baselines, a hybrid whose task-agnostic top is tied


def test_task_agnostic_regroups_within_the_pool_being_ranked():
    meta = pd.DataFrame({"imagenet_acc": [0.780, 0.777, 0.774], "params": [10.0, 20.0, 30.0]},
                        index=pd.Index(["a780", "b777", "c774"], name="model"))
    s = create_strategy("task_agnostic", {"finetune_test_acc": table({"t": {}})}, meta)
    # all three: {0.780, 0.777} (within 0.005 of 0.780), then {0.774}; more parameters first
    assert s.rank_groups("t", ["a780", "b777", "c774"]) == [["b777"], ["a780"], ["c774"]]
    # without the group's opener: {0.777, 0.774} is one group, the bigger model first
    assert s.rank_groups("t", ["b777", "c774"]) == [["c774"], ["b777"]]


def test_equal_accuracy_and_parameters_or_unknown_parameters_are_one_tie_group():
    meta = pd.DataFrame({"imagenet_acc": [0.8, 0.8, 0.7, 0.7], "params": [5.0, 5.0, None, None]},
                        index=pd.Index(["x", "y", "p", "q"], name="model"))
    s = create_strategy("task_agnostic", {"finetune_test_acc": table({"t": {}})}, meta)
    assert s.rank_groups("t", ["y", "q", "x", "p"]) == [["x", "y"], ["p", "q"]]


def test_static_params_has_zero_regret_where_bigger_is_better():
    from selection.report.compute import compute_report

    params = {"a": 1e6, "b": 5e6, "c": 2e7}
    acc = {t: {"a": 0.5 + d, "b": 0.6 + d, "c": 0.7 + d} for t, d in (("t1", 0.0), ("t2", 0.1))}
    rows = [(m, t, "finetune_test_acc", v) for t, by in acc.items() for m, v in by.items()]
    records = pd.DataFrame(rows, columns=["model", "task", "metric", "value"])
    meta = pd.DataFrame({"model": list(params), "params": list(params.values()),
                         "imagenet_acc": [0.8, 0.7, 0.6]})
    rep = compute_report(records, meta, noise_draws=200)
    assert "static:params" in rep["strategy_order"] and "static:imagenet_acc" in rep["strategy_order"]
    assert "static:feature_dim" not in rep["strategy_order"]  # the metadata has no such column
    assert all(rep["strategies"]["static:params"][str(b)]["mean"] == 0.0 for b in rep["budgets"])
    assert rep["strategies"]["static:imagenet_acc"]["1"]["mean"] > 0  # smallest model first
    assert rep["static_baseline"]["1"] == "static:params"


def test_a_hybrid_without_task_agnostic_metadata_draws_its_first_pick_uniformly():
    from selection.report.compute import compute_report

    # proxy order a > b > c; accuracies a 0.5, b 0.9, c 0.8
    rows = [(m, "t", "finetune_test_acc", v) for m, v in (("a", 0.5), ("b", 0.9), ("c", 0.8))]
    rows += [(m, "t", "proxy/p", v) for m, v in (("a", 3.0), ("b", 2.0), ("c", 1.0))]
    rep = compute_report(pd.DataFrame(rows, columns=["model", "task", "metric", "value"]),
                         max_budget=2, noise_draws=200)
    hybrid = rep["strategies"]["hybrid:proxy/p"]
    # B = 1: a uniformly random model, as random
    assert hybrid["1"]["per_task"]["t"] == pytest.approx(rep["strategies"]["random"]["1"]["per_task"]["t"])
    # B = 2: first a -> {a, b}, first b -> {b, a}, first c -> {c, a}: s(S) = (0.9 + 0.9 + 0.8) / 3
    expected = (0.9 + 0.9 + 0.8) / 3
    assert hybrid["2"]["per_task"]["t"] == pytest.approx((0.9 - expected) / (1 - expected))
    assert rep["zero_regret_budget_full"]["hybrid:proxy/p"]["t"] == 3  # first c: b comes third


def test_deltas_default_to_the_papers_figures_and_follow_report_deltas():
    from selection.report.compute import compute_report
    from whichmodel.errors import InputError

    rows = [(m, t, "finetune_test_acc", 0.5 + 0.1 * i + 0.01 * j)
            for j, t in enumerate(("t1", "t2")) for i, m in enumerate("abc")]
    rows += [(m, t, f"proxy/{p}", float(k + i)) for k, p in enumerate(("knn", "linear"))
             for t in ("t1", "t2") for i, m in enumerate("abc")]
    records = pd.DataFrame(rows, columns=["model", "task", "metric", "value"])
    meta = pd.DataFrame({"model": list("abc"), "imagenet_acc": [0.7, 0.8, 0.6]})
    rep = compute_report(records, meta, noise_draws=100)
    assert {"proxy/knn vs proxy/linear", "hybrid:proxy/knn vs hybrid:proxy/linear",
            "hybrid:proxy/knn vs proxy/knn", "task_agnostic vs proxy/linear"} <= set(rep["deltas"])
    mine = compute_report(records, meta, noise_draws=100, deltas=["random vs task_agnostic"])
    assert set(mine["deltas"]) == {"random vs task_agnostic"}
    with pytest.raises(InputError, match="no strategy 'proxy/logme'"):
        compute_report(records, meta, noise_draws=100, deltas=["proxy/logme vs proxy/knn"])
    with pytest.raises(InputError, match="'a vs b'"):
        compute_report(records, meta, noise_draws=100, deltas=["proxy/knn versus proxy/linear"])
