"""Tests for the offline task suite (lightning_modules.offline) and source families
(lightning_modules.sources)."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_modules import offline
from lightning_modules.offline import build_suite, task_cache_path
from lightning_modules.sources import list_source_families, load_source, load_source_mix
from lightning_modules.task_data import GROUPS, SPLITS
from lightning_modules.tasks import get_task, list_tasks
from tests.task_fakes import offline_suite_root
from whichmodel.registry import UnknownNameError

ALL = list_tasks(kind="offline")
N_SRC_TRAIN, N_SRC_VAL = 160, 48


def _keys(x: np.ndarray) -> set[bytes]:
    return {img.tobytes() for img in x}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return offline_suite_root(tmp_path_factory)


@pytest.fixture(scope="module")
def suite(root):
    paths = build_suite(root)
    assert [p.name for p in paths] == [f"{n}-32px-seed0.npz" for n in ALL]
    assert all(p.is_file() for p in paths)
    return {name: get_task(name).load(root) for name in ALL}


# ---------------------------------------------------------------- registry


def test_groups_have_three_tasks_each():
    assert sorted(ALL) == ALL and len(ALL) >= 9
    for group in GROUPS:
        names = list_tasks(kind="offline", group=group)
        assert len(names) >= 3, group
        assert all(get_task(n).info.group == group for n in names)
    assert sorted(sum((list_tasks(kind="offline", group=g) for g in GROUPS), [])) == ALL


def test_unknown_task_error_lists_known_names(root):
    with pytest.raises(UnknownNameError) as err:
        get_task("imagenet")
    message = str(err.value)
    assert isinstance(err.value, KeyError)
    assert "imagenet" in message and all(n in message for n in ALL)
    assert not message.startswith(("'", '"'))  # reads as a sentence, not a repr'd key
    with pytest.raises(UnknownNameError):
        get_task("nope").load(root)
    with pytest.raises(UnknownNameError):
        build_suite(root, ["nope"])
    with pytest.raises(UnknownNameError, match="shapes"):
        load_source("nope", root)
    with pytest.raises(ValueError):
        list_tasks(group="medical")


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("name", ALL)
def test_split_sizes_shapes_labels(suite, name):
    data, info = suite[name], get_task(name).info
    assert (data.name, data.group, data.num_classes) == (name, info.group, info.num_classes)
    assert info.description and info.num_classes >= 2
    sizes = {"train800": 800, "val200": 200, "test": info.test_size}
    assert set(data.splits) == set(sizes)
    for split, n in sizes.items():
        x, y = data.splits[split]
        assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8, split
        assert y.shape == (n,) and y.dtype == np.int64, split
        assert y.min() >= 0 and y.max() < info.num_classes, split
    assert set(data.train[1].tolist()) == set(range(info.num_classes))
    assert info.test_size >= 500 or info.note
    assert data.train is data.splits["train800"] and data.test is data.splits["test"]


@pytest.mark.parametrize("name", ALL)
def test_splits_are_disjoint(suite, name):
    data = suite[name]
    train, val, test = (_keys(data.splits[s][0]) for s in SPLITS)
    assert len(train) == 800 and len(val) == 200  # no duplicate inside a split either
    assert not train & val
    assert not test & (train | val)


def test_patch_regions_are_spatially_disjoint():
    rng = np.random.default_rng(0)
    train_blocks, test_blocks = offline._block_split(rng, (512, 512), 128)
    assert len(train_blocks) + len(test_blocks) == 16 and len(test_blocks) == 5

    def covered(blocks, patch=48):
        mask = np.zeros((512, 512), bool)
        for y, x in offline._positions(rng, blocks, patch, 300):
            assert any(b[0] <= y and y + patch <= b[2] and b[1] <= x and x + patch <= b[3]
                       for b in blocks)
            mask[y:y + patch, x:x + patch] = True
        return mask

    assert not (covered(train_blocks) & covered(test_blocks)).any()


# ---------------------------------------------------------------- determinism and cache


def test_same_seed_same_arrays_other_seed_different(suite, tmp_path):
    other_seed_differs = []
    for name in ALL:
        again = get_task(name).build(32, 0)
        for split in SPLITS:
            for a, b in zip(suite[name].splits[split], again[split]):
                np.testing.assert_array_equal(a, b, err_msg=f"{name}/{split}")
        other = get_task(name).load(tmp_path, seed=1)
        other_seed_differs.append(not np.array_equal(other.train[0], suite[name].train[0]))
    assert all(other_seed_differs)
    assert (tmp_path / "tasks" / "count-32px-seed1.npz").is_file()


def test_cache_is_reused(suite, root, monkeypatch):
    path = task_cache_path(root, "faces")
    mtime = path.stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(offline.OfflineTask, "build", no_build)
    data = get_task("faces").load(root)
    np.testing.assert_array_equal(data.test[0], suite["faces"].test[0])
    assert path.stat().st_mtime_ns == mtime
    assert not [p for p in path.parent.iterdir() if p.suffix != ".npz"]  # no temp files left


def test_stale_or_corrupt_cache_is_rebuilt(suite, tmp_path):
    path = task_cache_path(tmp_path, "sprite_location")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a zip")
    data = get_task("sprite_location").load(tmp_path)
    np.testing.assert_array_equal(data.train[0], suite["sprite_location"].train[0])


@pytest.mark.parametrize("name", ["sprite_orientation", "ihc_dab", "faces"])
def test_image_size_is_honoured(suite, root, name):
    small = get_task(name).load(root, image_size=24)
    assert task_cache_path(root, name, 24).is_file()
    for split in SPLITS:
        x, y = small.splits[split]
        assert x.shape[1:] == (24, 24, 3) and x.dtype == np.uint8
        # same content, only resampled: labels agree with the 32-px build
        np.testing.assert_array_equal(y, suite[name].splits[split][1])


# ---------------------------------------------------------------- source families


@pytest.fixture(scope="module")
def sources(root):
    return {f: load_source(f, root, n_train=N_SRC_TRAIN, n_val=N_SRC_VAL)
            for f in list_source_families()}


def test_source_families(sources):
    assert len(sources) >= 3 and {"shapes", "glyphs", "textures"} <= set(sources)
    for family, data in sources.items():
        c = data.num_classes
        assert c == len(data.class_names) >= 5 and data.family == family
        for (x, y), n in ((data.train, N_SRC_TRAIN), (data.val, N_SRC_VAL)):
            assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8
            assert y.dtype == np.int64 and set(y.tolist()) == set(range(c))
        assert not _keys(data.train[0]) & _keys(data.val[0]), family
    glyphs = sources["glyphs"].class_names
    assert all(g.isalpha() for g in glyphs)  # letters, not digits


def test_source_cache_slices_and_is_deterministic(sources, root, tmp_path):
    shorter = load_source("shapes", root, n_train=50, n_val=10)
    np.testing.assert_array_equal(shorter.train[0], sources["shapes"].train[0][:50])
    fresh = load_source("shapes", tmp_path, n_train=50, n_val=10)
    np.testing.assert_array_equal(fresh.train[0], shorter.train[0])
    np.testing.assert_array_equal(fresh.val[1], shorter.val[1])
    other = load_source("shapes", tmp_path, seed=1, n_train=50, n_val=10)
    assert not np.array_equal(other.train[0], fresh.train[0])
    small = load_source("textures", tmp_path, image_size=24, n_train=20, n_val=5)
    assert small.train[0].shape == (20, 24, 24, 3)


def test_source_mix_offsets(sources, root):
    families = ["shapes", "glyphs", "textures"]
    mix = load_source_mix(families, root, n_train=N_SRC_TRAIN, n_val=N_SRC_VAL)
    parts = [sources[f] for f in families]
    assert mix.class_names == [f"{p.family}/{c}" for p in parts for c in p.class_names]
    offsets = np.cumsum([0] + [p.num_classes for p in parts[:-1]])
    expected = {}
    for part, offset in zip(parts, offsets):
        for split in (part.train, part.val):
            expected.update({img.tobytes(): int(lab) + offset for img, lab in zip(*split)})
    for x, y in (mix.train, mix.val):
        assert [expected[img.tobytes()] for img in x] == y.tolist()
    assert len(mix.train[1]) == 3 * N_SRC_TRAIN and len(mix.val[1]) == 3 * N_SRC_VAL
    assert set(mix.train[1].tolist()) == set(range(len(mix.class_names)))
