"""ChoiceNet v1's low-rank model reduction and v3 (lightning_modules/choicenet_v3.py), which
learns the order of models within a task from the v2 embeddings, proxies and metadata."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lightning_modules.choicenet import ChoiceNetV1
from lightning_modules.choicenet_v3 import ChoiceNetV3, fit_predict_v3, metadata_features
from selection.report.compute import compute_report
from selection.report.learned import study_claim
from tests.test_choicenet import STEPS, synthetic


def test_v1_reduces_the_model_embedding_to_the_rank_before_the_concatenation():
    net = ChoiceNetV1(model_dim=55, task_dim=256, rank=4)
    assert tuple(net.model_proj.weight.shape) == (4, 55) and net.model_proj.bias is None
    assert net.head[0].in_features == 4 + 256


def test_v3_outputs_a_real_score_per_pair():
    torch.manual_seed(0)
    net = ChoiceNetV3(7, 3, 2, rank=4).eval()
    out = net(torch.randn(5, 7), torch.randn(5, 3), torch.randn(5, 2))
    assert out.shape == (5,)


def _proxies(targets: pd.DataFrame, seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    return {"proxy/a": targets + 0.02 * rng.normal(size=targets.shape)}


def test_v3_never_sees_the_held_out_tasks_targets_and_is_deterministic():
    model_emb, task_emb, targets = synthetic()
    proxies = _proxies(targets)
    before = fit_predict_v3(model_emb, task_emb, targets, proxies, steps=STEPS, seed=3)
    perturbed = targets.copy()
    perturbed["t2"] = 1.0 - perturbed["t2"]
    after = fit_predict_v3(model_emb, task_emb, perturbed, proxies, steps=STEPS, seed=3)
    pd.testing.assert_series_equal(before["t2"], after["t2"])
    assert not np.allclose(before.drop(columns="t2"), after.drop(columns="t2"))


def test_v3_ranks_an_unseen_tasks_models_as_their_accuracy_does():
    model_emb, task_emb, targets = synthetic(n_models=8, n_tasks=4, seed=2)
    pred = fit_predict_v3(model_emb, task_emb, targets, _proxies(targets), steps=200,
                          dropout=0.0)
    for task in targets.columns:
        assert np.corrcoef(pred[task], targets[task])[0, 1] > 0.8


def test_metadata_features_are_log_standardised_and_zero_where_unknown():
    meta = pd.DataFrame({"params": [1e6, 1e7, np.nan], "upstream_size": [0, 1e5, 1e6]},
                        index=["a", "b", "c"])
    f = metadata_features(["a", "b", "c"], meta)
    assert f.shape == (3, 2) and f[2, 0] == 0.0
    assert f[0, 0] < f[1, 0] and abs(f[:2, 0].mean()) < 1e-12


def test_report_ranks_by_v3_without_an_mse_and_states_the_studys_claim():
    model_emb, task_emb, targets = synthetic(n_models=6, n_tasks=3)
    rows = [(m, t, "finetune_test_acc", targets.loc[m, t]) for m in targets.index
            for t in targets.columns]
    records = pd.DataFrame(rows, columns=["model", "task", "metric", "value"])
    v3 = fit_predict_v3(model_emb, task_emb, targets, {}, steps=STEPS)
    v1 = targets.clip(0, 1) * 0.5
    v2 = targets.clip(0, 1) * 0.9
    report = compute_report(records, predictions={"choicenet_v1": v1, "choicenet_v2": v2},
                            rankings={"choicenet_v3": v3}, noise_draws=500)
    assert "choicenet_v3" in report["strategy_order"]
    assert report["choicenet"]["v3"]["mse"] is None and report["choicenet"]["v3"]["n_pairs"] == 18
    # v1 = 0.5 t and v2 = 0.9 t: MSE 0.25 E[t^2] and 0.01 E[t^2], a 96% reduction
    claim = study_claim(report["choicenet"])
    assert claim["v1_mse"] == pytest.approx(0.25 * float((targets.clip(0, 1) ** 2).mean().mean()))
    assert claim["reduction"] == pytest.approx(0.96)
    assert claim["reproduced"] is True and claim["same_direction"] is True
    # and the other way round: v2 worse than v1 is neither
    worse = study_claim({"v1": {"mse": 0.01}, "v2": {"mse": 0.05}})
    assert worse["reproduced"] is False and worse["same_direction"] is False
