"""Strategy registry and rankings (selection.strategies)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from selection import strategies as strategies_module
from selection.strategies import (
    ScoreStrategy,
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


def test_list_strategies_order():
    assert list_strategies(["proxy/knn", "proxy/linear"]) == [
        "task_agnostic", "proxy/knn", "proxy/linear", "hybrid:proxy/knn", "hybrid:proxy/linear",
        "oracle", "random",
    ]
    assert list_strategies([]) == ["task_agnostic", "oracle", "random"]
    assert list_strategies(["proxy/knn"], predicted=["choicenet_v1", "choicenet_v2"]) == [
        "task_agnostic", "proxy/knn", "hybrid:proxy/knn", "choicenet_v1", "choicenet_v2", "oracle", "random",
    ]


def test_task_agnostic_is_lexicographic_with_missing_last(scores, metadata):
    s = create_strategy("task_agnostic", scores, metadata)
    # imagenet_acc: a = c = 0.80 (tie -> upstream_size: c 2e6 > a 1e6), d 0.70, b missing -> last
    assert s.rank("t1", MODELS) == ["c", "a", "d", "b"]
    assert s.rank("t2", MODELS) == s.rank("t1", MODELS)  # the same pick for every task


def test_task_agnostic_accepts_metadata_with_model_column(scores, metadata):
    s = create_strategy("task_agnostic", scores, metadata.reset_index())
    assert s.rank("t1", MODELS) == ["c", "a", "d", "b"]


def test_task_agnostic_without_metadata_ranks_by_name(scores):
    assert create_strategy("task_agnostic", scores, None).rank("t1", ["d", "b", "a"]) == ["a", "b", "d"]
    no_keys = pd.DataFrame({"model": ["b", "a"], "family": ["x", "y"]})
    assert create_strategy("task_agnostic", scores, no_keys).rank("t1", ["b", "a"]) == ["a", "b"]


def test_task_agnostic_ranks_models_missing_from_metadata_last(scores, metadata):
    s = create_strategy("task_agnostic", scores, metadata.drop(index="c"))
    assert s.rank("t1", MODELS) == ["a", "d", "b", "c"]  # b: upstream/params known; c: nothing


def test_proxy_ties_broken_by_model_name(scores):
    s = create_strategy("proxy/knn", scores, None)
    assert s.rank("t1", ["d", "c", "b", "a"]) == ["a", "b", "c", "d"]
    assert s.rank("t2", MODELS) == ["d", "c", "b", "a"]


def test_missing_proxy_values_rank_last(scores):
    s = create_strategy("proxy/linear", scores, None)
    assert s.rank("t1", MODELS) == ["c", "a", "b", "d"]  # a/b tie by name, d missing
    assert s.rank("t2", MODELS) == ["d", "b", "c", "a"]  # a missing
    assert s.rank("t_unknown", ["b", "a"]) == ["a", "b"]  # no column: all missing, by name


def test_ranking_only_covers_models_given(scores):
    s = create_strategy("proxy/linear", scores, None)
    assert s.rank("t1", ["a", "d"]) == ["a", "d"]
    assert s.rank("t1", []) == []


def test_hybrid_is_task_agnostic_top1_then_proxy(scores, metadata):
    hybrid = create_strategy("hybrid:proxy/linear", scores, metadata)
    assert hybrid.name == "hybrid:proxy/linear"
    assert hybrid.rank("t1", MODELS) == ["c", "a", "b", "d"]  # c is also the proxy's top
    assert hybrid.rank("t2", MODELS) == ["c", "d", "b", "a"]


def test_hybrid_at_budget_1_equals_task_agnostic(scores, metadata):
    hybrid = create_strategy("hybrid:proxy/knn", scores, metadata)
    agnostic = create_strategy("task_agnostic", scores, metadata)
    for task in ("t1", "t2"):
        assert hybrid.rank(task, MODELS)[:1] == agnostic.rank(task, MODELS)[:1]


def test_oracle_ranks_by_finetune_test_acc(scores):
    s = create_strategy("oracle", scores, None)
    assert s.rank("t1", MODELS) == ["b", "c", "a", "d"]
    assert s.rank("t2", MODELS) == ["c", "a", "d", "b"]


def test_random_is_marked_expected_and_has_no_ranking(scores):
    s = create_strategy("random", scores, None)
    assert s.expected is True
    assert create_strategy("oracle", scores, None).expected is False
    with pytest.raises(TypeError, match="expected_random_regret"):
        s.rank("t1", MODELS)


def test_unknown_strategy_lists_known_names(scores):
    with pytest.raises(KeyError) as info:
        create_strategy("proxy/logme", scores, None)
    message = str(info.value)
    assert isinstance(info.value, UnknownStrategyError)
    assert "proxy/logme" in message and "proxy/linear" in message and "hybrid:proxy/knn" in message
    with pytest.raises(KeyError, match="known strategies"):
        create_strategy("hybrid:proxy/logme", scores, None)


def test_oracle_without_ground_truth_says_what_is_missing():
    with pytest.raises(KeyError, match="finetune_test_acc"):
        create_strategy("oracle", {}, None)


def test_register_strategy_adds_a_named_factory(scores):
    register_strategy("choicenet", lambda ctx: ScoreStrategy("choicenet", ctx.scores["proxy/knn"]))
    try:
        assert list_strategies(["proxy/knn"])[-3:] == ["choicenet", "oracle", "random"]
        assert create_strategy("choicenet", scores, None).rank("t2", MODELS) == ["d", "c", "b", "a"]
    finally:
        strategies_module.STRATEGIES.unregister("choicenet")
    with pytest.raises(ValueError, match="reserved"):
        register_strategy("oracle", lambda ctx: None)


def test_choicenet_strategies_rank_by_predicted_accuracy(scores):
    predicted = table({"t1": {"a": 0.61, "b": 0.7, "c": 0.61, "d": NAN}})
    s = create_strategy("choicenet_v1", {**scores, "choicenet_v1": predicted}, None)
    assert s.name == "choicenet_v1" and s.expected is False
    assert s.rank("t1", MODELS) == ["b", "a", "c", "d"]  # a/c tie by name, d has no prediction
    assert s.rank("t2", ["c", "a"]) == ["a", "c"]  # no predictions for the task: by name


def test_choicenet_strategy_without_predictions_says_how_to_get_them(scores):
    with pytest.raises(KeyError, match="predictions=") as info:
        create_strategy("choicenet_v2", scores, None)
    assert "predict_choicenet" in str(info.value)


def test_predicted_table_names_cannot_shadow_built_in_strategies():
    for bad in ("oracle", "proxy/knn", "hybrid:x", "finetune_test_acc", "", " v1"):
        with pytest.raises(ValueError):
            strategies_module.check_predicted_name(bad)
    assert strategies_module.check_predicted_name("choicenet_v1") == "choicenet_v1"


def test_score_ranking_handles_negative_scores_and_models_absent_from_the_table(scores):
    logme = table({"t1": {"a": -3.5, "b": -1.0, "c": -1.0, "d": -7.0}})
    s = create_strategy("proxy/logme", {**scores, "proxy/logme": logme}, None)
    assert s.rank("t1", ["zz", "d", "c", "b", "a"]) == ["b", "c", "a", "d", "zz"]
