"""ChoiceNet (lightning_modules.choicenet): architecture-independent embeddings, leave-one-task-out
training that never sees the held-out task, and its predictions as report strategies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lightning_modules.backbones import create_backbone
from lightning_modules.choicenet import (
    V1_MODEL_DIM,
    V1_TASK_DIM,
    ChoiceNetEmbeddings,
    ChoiceNetV1,
    ChoiceNetV2,
    compute_embeddings,
    fit_predict_leave_one_task_out,
    last_conv,
    model_embedding_v1,
    model_embedding_v2,
    predict_choicenet,
    task_embedding_v1,
    task_embedding_v2,
)
from selection.records import targets_from_records
from selection.report.compute import compute_report

STEPS = 60  # tiny: the tests check plumbing and leakage, not accuracy


@pytest.fixture(scope="module")
def backbones():
    torch.manual_seed(0)
    return {"cnn": create_backbone("cnn"), "resnet": create_backbone("resnet"),
            "cnn-narrow": create_backbone("cnn", width=8)}


@pytest.fixture(scope="module")
def probe():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8), np.arange(48) % 6


@pytest.fixture(scope="module")
def task_images():
    """Three tasks: different resolutions and class counts (3, 12, 5)."""
    rng = np.random.default_rng(1)
    sizes, classes = {"a": 24, "b": 32, "c": 32}, {"a": 3, "b": 12, "c": 5}
    return {t: (rng.integers(0, 256, (36, s, s, 3), dtype=np.uint8), np.arange(36) % classes[t])
            for t, s in sizes.items()}


def synthetic(n_models=6, n_tasks=3, seed=0):
    """Embeddings and targets where accuracy = model quality + task offset (both in the embeddings)."""
    rng = np.random.default_rng(seed)
    models = [f"m{i}" for i in range(n_models)]
    tasks = [f"t{j}" for j in range(n_tasks)]
    quality, offset = rng.uniform(-1, 1, n_models), rng.uniform(-1, 1, n_tasks)
    model_emb = {m: np.concatenate([[q], rng.normal(size=5)]) for m, q in zip(models, quality)}
    task_emb = {t: np.concatenate([[o], rng.normal(size=7)]) for t, o in zip(tasks, offset)}
    acc = 1 / (1 + np.exp(-(quality[:, None] + 0.5 * offset[None, :])))
    return model_emb, task_emb, pd.DataFrame(acc, index=models, columns=tasks)


# ---------------------------------------------------------------------------------------------
# embeddings


@pytest.fixture(scope="module")
def embeddings(backbones, probe, task_images):
    return compute_embeddings(backbones, task_images, *probe, probe_backbone=backbones["cnn"])


def test_v1_model_embedding_has_fixed_length_across_architectures(embeddings, backbones):
    embs = embeddings.model["v1"]
    assert {e.shape for e in embs.values()} == {(V1_MODEL_DIM,)}
    np.testing.assert_array_equal(embs["resnet"], model_embedding_v1(backbones["resnet"]))
    assert all(np.all(np.isfinite(e)) for e in embs.values())
    assert not np.allclose(embs["cnn"], embs["resnet"])


def test_v1_reads_the_last_spatial_conv_not_a_1x1_shortcut(backbones):
    conv = last_conv(backbones["resnet"])
    assert conv.kernel_size == (3, 3)
    assert conv is backbones["resnet"].body.model.layer4[0].conv2


def test_v2_model_embedding_has_fixed_length_across_architectures(embeddings, backbones, probe):
    embs = embeddings.model["v2"]
    np.testing.assert_allclose(embs["cnn"], model_embedding_v2(backbones["cnn"], *probe), rtol=1e-5)
    c = 6
    assert {e.shape for e in embs.values()} == {(c * (c - 1) // 2 + c,)}
    sims = embs["cnn"][: c * (c - 1) // 2]
    assert np.all(np.abs(sims) <= 1 + 1e-6)  # cosine similarities


def test_v1_task_embedding_is_pca_256_for_every_task(embeddings, task_images):
    embs = embeddings.task["v1"]
    assert set(embs) == {"a", "b", "c"}
    np.testing.assert_allclose(embs["b"], task_embedding_v1({t: x for t, (x, _) in task_images.items()})["b"])
    assert {e.shape for e in embs.values()} == {(V1_TASK_DIM,)}
    # 108 images give at most 107 components: the rest is zero padding
    assert np.all(embs["a"][107:] == 0) and np.any(embs["a"][:107] != 0)


def test_v2_task_embedding_keeps_10_classes_of_the_fixed_probe_model(backbones, task_images):
    probe_model = backbones["cnn"]
    x, y = task_images["b"]  # 12 classes: 10 kept
    emb = task_embedding_v2(probe_model, x, y)
    assert emb.shape == (10 * probe_model.feature_dim,)
    x, y = task_images["a"]  # 3 classes: 7 zero rows
    emb = task_embedding_v2(probe_model, x, y).reshape(10, -1)
    assert np.all(emb[3:] == 0) and np.all(np.any(emb[:3] != 0, axis=1))
    rows = np.abs(emb[:3]).mean(axis=1)
    assert np.all(np.diff(rows) <= 0)  # ordered by mean |activation|


def test_compute_embeddings_gathers_both_versions(embeddings, backbones, task_images):
    emb = embeddings
    for v in ("v1", "v2"):
        assert set(emb.model[v]) == set(backbones) and set(emb.task[v]) == set(task_images)
        assert len({e.shape for e in emb.model[v].values()}) == 1
        assert len({e.shape for e in emb.task[v].values()}) == 1


# ---------------------------------------------------------------------------------------------
# nets and leave-one-task-out


def test_nets_output_probabilities():
    torch.manual_seed(0)
    m, t = torch.randn(5, 7) * 100, torch.randn(5, 3) * 100
    for net in (ChoiceNetV1(7, 3), ChoiceNetV2(7, 3, rank=4)):
        out = net.eval()(m, t)
        assert out.shape == (5,) and torch.all((out >= 0) & (out <= 1))
    assert isinstance(ChoiceNetV2(7, 3).model_proj, torch.nn.Linear)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_leave_one_task_out_never_sees_the_held_out_targets(version):
    model_emb, task_emb, targets = synthetic()
    before = fit_predict_leave_one_task_out(version, model_emb, task_emb, targets, steps=STEPS, seed=3)
    perturbed = targets.copy()
    perturbed["t2"] = 1.0 - perturbed["t2"]
    perturbed.loc["m0", "t2"] = np.nan
    after = fit_predict_leave_one_task_out(version, model_emb, task_emb, perturbed, steps=STEPS, seed=3)
    pd.testing.assert_series_equal(before["t2"], after["t2"])  # bit for bit: also deterministic
    # the other tasks' nets did train on t2: they change (so the check above can fail)
    assert not np.allclose(before.drop(columns="t2"), after.drop(columns="t2"))


def test_predictions_are_probabilities_for_every_embedded_model(tmp_path):
    model_emb, task_emb, targets = synthetic()
    pred = fit_predict_leave_one_task_out("v1", model_emb, task_emb, targets, steps=STEPS)
    assert list(pred.index) == sorted(model_emb) and list(pred.columns) == sorted(task_emb)
    assert np.all(np.isfinite(pred.to_numpy()))
    assert np.all((pred.to_numpy() >= 0) & (pred.to_numpy() <= 1))


def test_missing_pairs_models_without_embeddings_and_new_tasks():
    model_emb, task_emb, targets = synthetic()
    targets = targets.copy()
    targets.loc["m1", ["t0", "t1"]] = np.nan   # missing pairs
    targets.loc["ghost"] = 0.5                 # results but no embedding: not predicted
    task_emb = {**task_emb, "new": np.zeros(8)}  # embedding but no results: predicted from all
    pred = fit_predict_leave_one_task_out("v2", model_emb, task_emb, targets, steps=STEPS, rank=4)
    assert "ghost" not in pred.index and "new" in pred.columns
    assert np.all(np.isfinite(pred.to_numpy()))  # m1's missing pairs are predicted too


def test_leave_one_task_out_learns_model_quality():
    model_emb, task_emb, targets = synthetic(n_models=8, n_tasks=3, seed=2)
    pred = fit_predict_leave_one_task_out("v1", model_emb, task_emb, targets, steps=200, dropout=0.0)
    for task in targets.columns:  # ranks the models of an unseen task as their quality does
        assert np.corrcoef(pred[task], targets[task])[0, 1] > 0.8


def test_inputs_are_checked():
    model_emb, task_emb, targets = synthetic()
    with pytest.raises(ValueError, match="unknown ChoiceNet version"):
        fit_predict_leave_one_task_out("v3", model_emb, task_emb, targets)
    with pytest.raises(ValueError, match="differ in length"):
        fit_predict_leave_one_task_out("v1", {**model_emb, "odd": np.zeros(3)}, task_emb, targets)
    with pytest.raises(ValueError, match="divide percentages by 100"):
        fit_predict_leave_one_task_out("v1", model_emb, task_emb, targets * 100)


def prediction_mse(predictions: pd.DataFrame, targets: pd.DataFrame) -> float | None:
    """The oracle: mean squared error over the pairs where both tables have a finite value."""
    p, y = predictions.align(targets, join="inner")
    p, y = p.to_numpy(dtype=float), y.to_numpy(dtype=float)
    known = np.isfinite(p) & np.isfinite(y)
    return float(np.mean((p[known] - y[known]) ** 2)) if known.any() else None


def test_prediction_mse_over_known_pairs_only():
    pred = pd.DataFrame({"t1": [0.5, 0.9], "t2": [0.2, 0.4]}, index=["a", "b"])
    targets = pd.DataFrame({"t1": [0.7, np.nan], "t2": [0.2, 0.8]}, index=["a", "b"])
    assert prediction_mse(pred, targets) == pytest.approx((0.2 ** 2 + 0 + 0.4 ** 2) / 3)


# ---------------------------------------------------------------------------------------------
# into the report


def test_report_takes_choicenet_predictions_as_strategies_with_mse():
    model_emb, task_emb, targets = synthetic()
    targets.loc["m5", "t2"] = np.nan
    records = targets.stack().dropna().rename("value").reset_index()
    records.columns = ["model", "task", "value"]
    records.insert(2, "metric", "finetune_test_acc")
    pd.testing.assert_frame_equal(targets_from_records(records), targets.rename_axis(index="model", columns="task"),
                                  check_exact=False)
    emb = ChoiceNetEmbeddings(model={"v1": model_emb, "v2": model_emb}, task={"v1": task_emb, "v2": task_emb})
    predictions = predict_choicenet(emb, targets_from_records(records), steps=STEPS, rank=4)
    assert set(predictions) == {"choicenet_v1", "choicenet_v2"}

    report = compute_report(records, predictions=predictions)
    assert report["strategy_order"] == ["task_agnostic", "task_agnostic_oracle",
                                        "task_agnostic_oracle_loto", "choicenet_v1", "choicenet_v2",
                                        "per_task_best", "random"]
    for version in ("v1", "v2"):
        block = report["choicenet"][version]
        assert block["n_pairs"] == targets.notna().sum().sum()
        assert block["mse"] == pytest.approx(prediction_mse(predictions[f"choicenet_{version}"], targets))
        column = predictions[f"choicenet_{version}"]["t0"]
        ranked = sorted(column.index, key=lambda m: (-column[m], m))[0]
        assert report["picks"][f"choicenet_{version}"]["t0"][0] == ranked
