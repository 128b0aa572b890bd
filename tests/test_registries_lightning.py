"""Contracts of the registries of lightning_modules: every registered task, every architecture.

Parametrized over the registries themselves (timm's ``tests/test_models.py`` style), so a task or
an architecture registered tomorrow is tested here with no new test code. VTAB-1k tasks load tiny
fakes written in each dataset's real layout (tests/task_fakes.py); the offline suite is built
once per session at 32 px.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from lightning_modules.backbones import ARCHITECTURES, create_backbone, load_checkpoint, save_checkpoint
from lightning_modules.task_data import N_TRAIN, N_VAL, SPLITS, DatasetError
from lightning_modules.tasks import get_task, imagefolder_task, list_tasks
from tests.task_fakes import SIZE, make_folder, offline_suite_root, write_vtab_data
from whichmodel.registry import UnknownNameError

TASKS = list_tasks()


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture(scope="module")
def offline_root(tmp_path_factory):
    return offline_suite_root(tmp_path_factory)


def test_the_registry_holds_the_offline_suite_and_the_19_vtab1k_tasks():
    assert len(list_tasks(kind="offline")) == 10 and len(list_tasks(kind="vtab")) == 19
    assert TASKS == sorted(TASKS) and list_tasks(kind="imagefolder") == []
    for spec in TASKS:
        task = get_task(spec)
        assert task.spec == spec and spec.endswith(task.info.name)
        assert task.kind in ("offline", "vtab") and task.summary
    with pytest.raises(UnknownNameError) as err:
        get_task("vtab:imagenet")
    assert all(spec in str(err.value) for spec in TASKS)
    with pytest.raises(ValueError, match="kinds"):
        list_tasks(kind="hub")


@pytest.mark.parametrize("spec", TASKS)
def test_every_task_yields_the_split_sizes_it_declares(spec, tmp_path, offline_root):
    task = get_task(spec)
    if task.kind == "offline":
        root, size, n_train, n_val = offline_root, 32, N_TRAIN, N_VAL
    else:
        fake = write_vtab_data(task.info.name, tmp_path / "data")
        root, size, n_train, n_val = fake.root, SIZE, fake.n_train, fake.n_val
    before = _files(root)
    task.check(root)  # the data is there
    assert _files(root) == before  # and check wrote nothing
    data = task.load(root, image_size=size, n_train=n_train, n_val=n_val)
    info = data.info
    assert (info.name, info.group, info.num_classes) == (task.info.name, task.info.group,
                                                         task.info.num_classes)
    assert list(data.splits) == list(SPLITS)
    if task.kind == "offline":
        assert info.test_size == task.info.test_size
    for split, n in zip(SPLITS, (n_train, n_val, info.test_size)):
        x, y = data.splits[split]
        assert x.shape == (n, size, size, 3) and x.dtype == np.uint8, split
        assert y.shape == (n,) and y.dtype == np.int64, split
        assert 0 <= y.min() and y.max() < info.num_classes, split


@pytest.mark.parametrize("spec", list_tasks(kind="vtab"))
def test_a_cache_built_from_the_data_satisfies_check_once_the_data_is_gone(spec, tmp_path):
    task = get_task(spec)
    fake = write_vtab_data(task.info.name, tmp_path / "data")
    task.load(fake.root, image_size=SIZE, n_train=fake.n_train, n_val=fake.n_val)
    for p in fake.root.iterdir():
        if p.name != "cache":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    task.check(fake.root)


@pytest.mark.parametrize("spec", TASKS)
def test_check_names_missing_data_as_load_would_and_writes_nothing(spec, tmp_path):
    task = get_task(spec)
    empty, absent = tmp_path / "empty", tmp_path / "absent"
    empty.mkdir()
    if task.kind == "offline":  # built from the packages' own data: nothing to miss
        task.check(absent)
        assert not absent.exists()
        return
    for root in (empty, absent):
        with pytest.raises(DatasetError) as checked:
            task.check(root)
        assert str(root) in str(checked.value)
        with pytest.raises(DatasetError) as loaded:
            task.load(root, image_size=SIZE)
        assert str(checked.value) == str(loaded.value)
        assert _files(root) == [] and (root == empty or not root.exists())
    if task.loader != "imagefolder":  # torchvision may fetch it: fine, and still nothing written
        task.check(absent, download=True)
        assert not absent.exists()


def test_imagefolder_check_gives_the_layout_errors_of_load_without_decoding(tmp_path,
                                                                           monkeypatch):
    from PIL import Image

    def no_open(*args, **kwargs):
        raise AssertionError("check opened an image")

    good = tmp_path / "good"
    make_folder(good, {"train": {"a": 3, "b": 3}, "val": {"a": 1}, "test": {"b": 1}})
    half = tmp_path / "half"
    make_folder(half, {"train": {"a": 2}})
    extra = tmp_path / "extra"
    make_folder(extra, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "zebra": 1}})
    single = tmp_path / "single"
    make_folder(single, {"train": {"a": 2}, "test": {"a": 1}})
    empty_class = tmp_path / "empty-class"
    make_folder(empty_class, {"train": {"a": 2}, "test": {"a": 1}})
    (empty_class / "train" / "b").mkdir()
    monkeypatch.setattr(Image, "open", no_open)
    before = _files(tmp_path)
    imagefolder_task("good", good, "natural").check()
    for path, where in ((tmp_path / "absent", tmp_path / "absent"), (half, half),
                        (extra, extra / "test" / "zebra"), (single, single / "train"),
                        (empty_class, empty_class / "train" / "b")):
        task = imagefolder_task("t", path, "natural")
        with pytest.raises(DatasetError) as checked:
            task.check(tmp_path / "data-root")
        assert str(where) in str(checked.value)
        with pytest.raises(DatasetError) as loaded:
            task.load(tmp_path / "data-root", image_size=SIZE, n_train=1, n_val=1)
        assert str(checked.value) == str(loaded.value)
    assert _files(tmp_path) == before


# ---------------------------------------------------------------- architectures


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_every_architecture_gives_features_block_groups_and_an_exact_checkpoint(arch, tmp_path):
    backbone = create_backbone(arch, source_classes=3).eval()
    x = backbone.preprocess(torch.randint(0, 256, (4, 24, 24, 3), dtype=torch.uint8))
    with torch.no_grad():
        features = backbone.features(x)
    assert features.shape == (4, backbone.feature_dim)
    groups = backbone.block_groups()
    assert list(groups) == ["first", "middle", "last"] and all(groups.values())
    save_checkpoint(backbone, tmp_path / "m", {"arch": arch, "arch_kwargs": {},
                                               "source_classes": 3})
    assert _files(tmp_path / "m") == ["meta.json", "model.safetensors"]  # no temporary files
    loaded, meta = load_checkpoint(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded.features(x), features)
    assert meta["arch"] == arch


def test_an_unknown_architecture_lists_the_registered_ones():
    with pytest.raises(UnknownNameError) as err:
        create_backbone("vit")
    assert all(name in str(err.value) for name in ARCHITECTURES.names())
