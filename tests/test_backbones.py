"""The backbone contract, for every registered architecture and every zoo model's architecture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_modules.backbones import (
    ARCHITECTURES,
    CheckpointError,
    create_backbone,
    extract_features,
    load_checkpoint,
    save_checkpoint,
)
from sweeps.zoo_config import load_zoo_config

ZOO = load_zoo_config(Path(__file__).parents[1] / "sweeps" / "configs" / "zoo.yaml")


def _meta(arch: str, source_classes: int) -> dict:
    return {"arch": arch, "arch_kwargs": {"input_size": 32}, "source_classes": source_classes}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_contract_features_preprocessing_and_source_head(arch):
    b = create_backbone(arch, source_classes=7).eval()
    images = torch.randint(0, 256, (5, 40, 40, 3), dtype=torch.uint8)
    x = b.preprocess(images)
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32  # resized to input_size
    assert set(b.preprocessing) >= {"input_size", "mean", "std"}
    f = b.features(x)
    assert f.shape == (5, b.feature_dim)
    assert b.source_logits(x).shape == (5, 7)
    assert create_backbone(arch).source_head is None


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_block_groups_are_disjoint_and_ordered(arch):
    b = create_backbone(arch)
    groups = b.block_groups()
    assert list(groups) == ["first", "middle", "last"]
    ids = [id(p) for mods in groups.values() for m in mods for p in m.parameters()]
    assert len(ids) == len(set(ids)) and ids


@pytest.mark.parametrize("model", [m.name for m in ZOO.models])
def test_every_zoo_model_architecture_satisfies_the_contract(model):
    m = ZOO.model(model)
    b = create_backbone(m.arch, source_classes=3, input_size=ZOO.image_size, **m.arch_kwargs)
    feats, probs = extract_features(b, np.zeros((3, 32, 32, 3), np.uint8), with_source_probs=True)
    assert feats.shape == (3, b.feature_dim)
    assert torch.allclose(probs.sum(1), torch.ones(3))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_checkpoint_roundtrip_is_exact(tmp_path, arch):
    b = create_backbone(arch, source_classes=4).eval()
    save_checkpoint(b, tmp_path / "m", _meta(arch, 4))
    loaded, meta = load_checkpoint(tmp_path / "m")
    x = b.preprocess(torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8))
    assert torch.equal(b.features(x), loaded.features(x))
    assert meta["arch"] == arch


def test_corrupt_checkpoint_error_names_the_file(tmp_path):
    b = create_backbone("cnn")
    save_checkpoint(b, tmp_path / "m", _meta("cnn", 0))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"m/model\.safetensors: unreadable checkpoint"):
        load_checkpoint(tmp_path / "m")


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    save_checkpoint(create_backbone("cnn"), tmp_path / "m", _meta("resnet", 0))
    with pytest.raises(CheckpointError, match="does not fit architecture 'resnet'"):
        load_checkpoint(tmp_path / "m")


def test_unreadable_metadata_names_the_file(tmp_path):
    save_checkpoint(create_backbone("cnn"), tmp_path / "m", _meta("cnn", 0))
    (tmp_path / "m" / "meta.json").write_text("{oops")
    with pytest.raises(CheckpointError, match=r"m/meta\.json: unreadable metadata"):
        load_checkpoint(tmp_path / "m")


def test_zoo_pretrains_the_costliest_models_first_by_counted_flops():
    from lightning_modules.backbones import create_backbone, forward_flops
    from sweeps.zoo import longest_first, pretrain_cost
    from sweeps.zoo_config import ZooConfig

    zoo = ZooConfig.model_validate({
        "name": "z", "image_size": 32, "training": {"steps": 10, "batch_size": 8, "lr": 0.1},
        "models": [{"name": "small", "arch": "cnn", "arch_kwargs": {"width": 8}, "upstream": ["shapes"]},
                   {"name": "big", "arch": "resnet", "upstream": ["shapes"]},
                   {"name": "long-small", "arch": "cnn", "arch_kwargs": {"width": 8},
                    "upstream": ["shapes"], "training": {"steps": 40, "batch_size": 8, "lr": 0.1}}]})
    cnn = forward_flops(create_backbone("cnn", width=8), 32)
    assert cnn > 0 and forward_flops(create_backbone("resnet"), 32) > 4 * cnn
    assert pretrain_cost(zoo, "long-small") == 4 * pretrain_cost(zoo, "small") == 4 * cnn * 80
    assert longest_first(zoo, ["small", "long-small", "big"]) == ["big", "long-small", "small"]
