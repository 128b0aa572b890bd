"""The shipped sweep files for the paper's setting: VTAB-1k and the Renggli et al. 2022 pools."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeps.cli import main
from sweeps.config import load_catalog

CONFIGS = Path(__file__).resolve().parents[1] / "sweeps" / "configs"
CATALOG = CONFIGS / "pools" / "renggli2022.yaml"


def test_validate_accepts_the_vtab1k_sweep_with_all_19_tasks_and_the_paper_pools(capsys):
    # The file alone, as 'submit' checks it: the weights and data live on the cluster.
    assert main(["validate", "--file-only", str(CONFIGS / "vtab1k.yaml")]) == 0
    out = capsys.readouterr().out
    catalog = load_catalog(CATALOG)
    assert f"{len(catalog.models)} models x 19 tasks" in out
    for pool in ("All", "ResNet-50", "Dim2048", "Expert", "ImNetAccuracies"):
        assert f"{pool} (" in out


def test_vtab1k_lists_every_vtab_task_and_marks_the_ones_without_a_torchvision_loader():
    from lightning_modules.tasks import get_task, list_tasks
    from sweeps.plan import plan_sweep

    plan = plan_sweep(CONFIGS / "vtab1k.yaml")
    assert sorted(f"vtab:{t}" for t in plan.tasks) == list_tasks(kind="vtab")
    text = (CONFIGS / "vtab1k.yaml").read_text()
    for task in plan.tasks:
        line = next(li for li in text.splitlines() if f"vtab:{task} " in li + " ")
        loader = get_task(f"vtab:{task}").loader
        if loader == "imagefolder":
            assert "imagefolder" in line, f"{task} has no torchvision loader but is not marked"
        else:
            assert "torchvision" in line


def test_catalog_specs_are_real_timm_pretrained_tags():
    import timm

    known = set(timm.list_pretrained())
    catalog = load_catalog(CATALOG)
    assert len(catalog.models) >= 20
    for m in catalog.models:
        assert m.spec.startswith("timm:")
        assert m.spec[len("timm:"):] in known, m.spec
    mapped = {v for v in catalog.mapping.values() if v}
    assert mapped <= {m.name for m in catalog.models}
    assert any(v is None for v in catalog.mapping.values())  # "no public equivalent" is said


@pytest.mark.slow
def test_catalog_metadata_matches_the_architectures_and_pools_follow_their_definitions():
    """feature_dim from timm (built on the meta device: no weights), Dim2048 = every 2048-d model,
    ResNet-50 = ResNet-50 architectures only, ImNetAccuracies = models with an ImageNet top-1."""
    import timm
    import torch

    catalog = load_catalog(CATALOG)
    dims = {}
    for m in catalog.models:
        with torch.device("meta"):
            model = timm.create_model(m.spec[len("timm:"):], pretrained=False)
        dims[m.name] = model.num_features
        assert m.meta["feature_dim"] == model.num_features, m.name
    pools = catalog.pools
    assert set(pools["Dim2048"]) == {n for n, d in dims.items() if d == 2048}
    assert set(pools["All"]) == set(dims)
    assert all("50" in n and "resnet" in n for n in pools["ResNet-50"])
    by_name = {m.name: m for m in catalog.models}
    assert set(pools["ImNetAccuracies"]) == {n for n, m in by_name.items()
                                            if "imagenet_acc" in m.meta}
    for m in catalog.models:
        if "imagenet_acc" in m.meta:
            assert 0.5 < m.meta["imagenet_acc"] < 1.0


def test_catalog_pool_naming_a_model_it_does_not_define_is_refused(tmp_path):
    from sweeps.config import ConfigError

    bad = tmp_path / "c.yaml"
    bad.write_text("models: [{name: a, spec: 'timm:resnet18'}]\npools: {p: [a, b]}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: key 'pools\.p\[1\]': model 'b'"):
        load_catalog(bad)
