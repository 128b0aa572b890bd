"""selection.rank_features: ranking models from features in hand (no Ray, no MLflow)."""

from __future__ import annotations

import numpy as np
import pytest

from selection.learners import ensemble_table, standardise_within_task
from selection.rank_features import holdout_split, rank_features


def _features(seed: int = 0, n: int = 200, classes: int = 4):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n // classes)
    means = rng.normal(size=(classes, 16))
    good = means[y] * 2.0 + rng.normal(size=(n, 16))   # separable
    poor = means[y] * 0.2 + rng.normal(size=(n, 16))   # barely
    noise = rng.normal(size=(n, 16))                   # not at all
    return {"poor": poor, "good": good, "noise": noise}, y


def test_a_separable_model_ranks_first_by_every_feature_proxy():
    feats, y = _features()
    for strategy in ("proxy/linear", "knn", "proxy/logme", "proxy/hscore", "ensemble:all"):
        out = rank_features(feats, y, strategy=strategy)
        assert out["ranking"] == ["good", "poor", "noise"], strategy


def test_the_ensemble_is_the_mean_of_the_proxies_z_scores_over_the_models():
    import pandas as pd

    feats, y = _features(1)
    out = rank_features(feats, y, strategy="ensemble:knn+logme")
    tables = [pd.DataFrame({"t": [out["proxies"][m][p] for m in feats]}, index=list(feats))
              for p in ("proxy/knn", "proxy/logme")]
    expected = ensemble_table(tables)["t"]
    assert standardise_within_task(tables[0]).shape == (3, 1)
    for m in feats:
        assert out["scores"][m] == pytest.approx(expected[m])


def test_the_held_out_split_is_stratified_and_seeded():
    _, y = _features()
    train, held = holdout_split(y, seed=3)
    assert len(set(train) & set(held)) == 0 and len(train) + len(held) == len(y)
    assert all((y[held] == c).sum() == 10 for c in range(4))
    assert np.array_equal(held, holdout_split(y, seed=3)[1])
    assert not np.array_equal(held, holdout_split(y, seed=4)[1])


def test_bad_input_names_the_model_and_the_fix():
    feats, y = _features()
    with pytest.raises(ValueError, match=r"features\['good'\]: shape \(10, 16\)"):
        rank_features({**feats, "good": feats["good"][:10]}, y)
    with pytest.raises(ValueError, match="unknown proxy 'nope'"):
        rank_features(feats, y, strategy="proxy/nope")
    with pytest.raises(ValueError, match="no proxy.*'proxy/nope'"):
        rank_features(feats, y, strategy="ensemble:knn+nope")
    with pytest.raises(ValueError, match="pass both or neither"):
        rank_features(feats, y, val_features=feats)
    with pytest.raises(ValueError, match="class 9 has 1 example"):
        rank_features(feats, np.r_[y[:-1], 9])
