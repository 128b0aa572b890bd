"""ChoiceNet v1/v2/v3 and Task2Vec, fitted for a report, are kept under the home folder keyed
by what they read: the same models, tasks, results and settings reuse the fit, a change of
any one fits again (``sweeps/cache.py``, ``sweeps/learned.py``)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.tiny import ZOO, sweep

pytestmark = pytest.mark.slow
TASKS = ("digits", "sprite_location")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny zoo and two tasks, built with the plain functions (no Ray)."""
    from lightning_modules.offline import build_suite
    from sweeps.paths import default_paths
    from sweeps.plan import plan_sweep
    from sweeps.trials import build_model
    from sweeps.zoo_config import load_zoo_config

    root = tmp_path_factory.mktemp("learned")
    (root / "zoo.yaml").write_text(ZOO)
    (root / "s.yaml").write_text(sweep("learned", tasks=f"[{', '.join(TASKS)}]").replace(
        "report: {max_budget: 3}", "report: {max_budget: 2, choicenet: {steps: 30}, "
                                   "nearest_task: {head_steps: 20, max_examples: 200}}"))
    paths = default_paths(root / "home")
    zoo = load_zoo_config(root / "zoo.yaml")
    for model in zoo.models:
        build_model(zoo, model.name, paths.zoo_root, paths.data_root)
    build_suite(paths.data_root, list(TASKS), image_size=32, seed=0)
    return plan_sweep(root / "s.yaml"), paths


def _records(shift: float = 0.0) -> pd.DataFrame:
    rows = []
    for i, model in enumerate(("tiny-shapes", "tiny-random")):
        for j, task in enumerate(TASKS):
            rows.append((model, task, "finetune_test_acc", 0.6 - 0.2 * i + 0.05 * j + shift))
            rows.append((model, task, "proxy/knn", 0.5 - 0.1 * i + 0.02 * j))
    return pd.DataFrame(rows, columns=["model", "task", "metric", "value"])


def test_learned_fits_are_reused_for_the_same_inputs_and_refitted_for_new_results(
        built, capsys):
    from sweeps.learned import learned_predictions

    plan, paths = built
    first = learned_predictions(_records(), plan, paths)
    err = capsys.readouterr().err
    assert "reused" not in err and "ChoiceNet v1/v2/v3 fitted" in err
    again = learned_predictions(_records(), plan, paths)
    err = capsys.readouterr().err
    assert "ChoiceNet v1/v2/v3: the fit of the same models, tasks, results and settings reused" in err
    assert "Task2Vec: the embeddings of 2 tasks reused" in err and "fitted" not in err
    for name, table in first[0].items():
        pd.testing.assert_frame_equal(again[0][name], table)  # the same numbers, to the bit
    pd.testing.assert_frame_equal(again[1]["choicenet_v3"], first[1]["choicenet_v3"])
    assert again[2]["nearest_task"]["nearest"] == first[2]["nearest_task"]["nearest"]
    assert again[2]["choicenet_seconds"] == first[2]["choicenet_seconds"]  # the fit's own
    # other results: ChoiceNet learns again (Task2Vec reads no results: its distances stay)
    learned_predictions(_records(shift=0.1), plan, paths)
    err = capsys.readouterr().err
    assert "ChoiceNet v1/v2/v3 fitted" in err and "Task2Vec: the embeddings of 2 tasks reused" in err
