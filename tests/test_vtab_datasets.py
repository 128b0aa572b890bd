"""VTAB-1k loaders (lightning_modules.vtab) and ImageFolder tasks (lightning_modules.imagefolder)
on tiny fakes written in each dataset's real layout (tests/task_fakes.py: every fake is parsed by
torchvision's own dataset class, and every image's colour encodes its id and label).
"""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from lightning_modules.imagefolder import imagefolder_cache_path
from lightning_modules.task_data import DatasetError, TaskData
from lightning_modules.tasks import get_task, imagefolder_task, list_tasks
from lightning_modules.vtab import vtab_cache_path
from tests.task_fakes import FAKES, SIZE, Fake, decode, fake_cifar100, make_fake, make_folder
from whichmodel.registry import UnknownNameError

VTAB1K = {get_task(spec).info.name: get_task(spec) for spec in list_tasks(kind="vtab")}

WITH_VAL = ["dtd", "oxford_flowers102", "patch_camelyon"]
SINGLE_SPLIT = {"caltech101": lambda n: n - 30, "sun397": lambda n: round(0.2 * n),
                "eurosat": lambda n: round(0.2 * n)}  # expected test images of a class of n


# ---------------------------------------------------------------- registry


def test_registry_lists_the_19_vtab_tasks_with_group_and_classes():
    expected = {
        "natural": {"caltech101": 101, "cifar100": 100, "dtd": 47, "oxford_flowers102": 102,
                    "oxford_iiit_pet": 37, "sun397": 397, "svhn": 10},
        "specialized": {"patch_camelyon": 2, "eurosat": 10, "resisc45": 45,
                        "diabetic_retinopathy": 5},
        "structured": {"clevr_count": 8, "clevr_distance": 6, "dmlab": 6,
                       "dsprites_location": 16, "dsprites_orientation": 16,
                       "kitti_distance": 4, "smallnorb_azimuth": 18, "smallnorb_elevation": 9},
    }
    assert len(VTAB1K) == 19 and len(list_tasks(kind="vtab")) == 19
    for group, tasks in expected.items():
        assert list_tasks(kind="vtab", group=group) == sorted(f"vtab:{t}" for t in tasks)
        for name, classes in tasks.items():
            info = get_task(f"vtab:{name}").info
            assert (info.name, info.group, info.num_classes) == (name, group, classes)
            assert info.description
    with pytest.raises(UnknownNameError, match="caltech101"):
        get_task("vtab:imagenet")
    with pytest.raises(ValueError, match="groups"):
        list_tasks(kind="vtab", group="natrual")


def test_torchvision_backed_and_imagefolder_tasks_with_a_note_saying_why():
    import torchvision.datasets as tvd

    torchvision = {"caltech101": "Caltech101", "cifar100": "CIFAR100", "dtd": "DTD",
                   "oxford_flowers102": "Flowers102", "oxford_iiit_pet": "OxfordIIITPet",
                   "sun397": "SUN397", "svhn": "SVHN", "patch_camelyon": "PCAM",
                   "eurosat": "EuroSAT", "clevr_count": "CLEVRClassification"}
    for name, task in VTAB1K.items():
        if name in torchvision:
            assert task.loader == f"torchvision:{torchvision[name]}"
            assert task.torchvision_class == torchvision[name]
            assert isinstance(getattr(tvd, torchvision[name]), type)
        else:
            assert task.loader == "imagefolder" and task.torchvision_class is None
            assert "No torchvision loader" in task.info.note
            assert f"prepare an ImageFolder at <data_root>/vtab/{name}/" in task.info.note
    assert set(FAKES) == set(torchvision)  # every torchvision loader has a fake below


# ---------------------------------------------------------------- torchvision loaders


def _check_task(fake: Fake, data: TaskData) -> dict[str, list[int]]:
    """Sizes, dtypes, shapes, label range, labels matching the images; returns split -> ids."""
    info = get_task(f"vtab:{fake.task}").info
    official_test = fake.splits.get("test")
    n_test = (len(official_test) if official_test is not None
              else sum(SINGLE_SPLIT[fake.task](n) for n in
                       np.bincount(list(fake.splits["all"].values()))))
    assert data.info.name == fake.task and data.info.group == info.group
    assert data.num_classes == info.num_classes and data.image_size == SIZE
    assert data.info.test_size == n_test
    ids = {}
    for split, n in (("train800", fake.n_train), ("val200", fake.n_val), ("test", n_test)):
        x, y = data.splits[split]
        assert x.shape == (n, SIZE, SIZE, 3) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        assert y.min() >= 0 and y.max() < info.num_classes
        ids[split], labels = decode(x)
        assert labels == y.tolist(), f"{split}: labels do not match the images"
        assert len(set(ids[split])) == n, f"{split}: an image is repeated"
        assert not set(ids[split]) & fake.never
    known = {i: c for split in fake.splits.values() for i, c in split.items()}
    for split_ids, (_, y) in zip(ids.values(), data.splits.values()):
        assert [known[i] for i in split_ids] == y.tolist()
    return ids


@pytest.mark.parametrize("task", sorted(FAKES))
def test_torchvision_loader_gives_vtab1k_splits_from_the_real_layout(task, tmp_path):
    fake = make_fake(task, tmp_path)
    ids = _check_task(fake, fake.load())
    if "all" in fake.splits:  # fixed per-class split, checked in its own test below
        assert not set(ids["test"]) & (set(ids["train800"]) | set(ids["val200"]))
        return
    assert set(ids["train800"]) <= set(fake.splits["train"])
    assert set(ids["val200"]) <= set(fake.splits.get("val", fake.splits["train"]))
    assert not set(ids["train800"]) & set(ids["val200"])
    assert set(ids["test"]) == set(fake.splits["test"])  # the full test split


@pytest.mark.parametrize("task", WITH_VAL)
def test_val200_comes_from_the_official_val_split(task, tmp_path):
    fake = make_fake(task, tmp_path)
    ids = _check_task(fake, fake.load())
    assert set(ids["val200"]) <= set(fake.splits["val"])
    assert set(ids["train800"]) <= set(fake.splits["train"])


@pytest.mark.parametrize("task", sorted(FAKES))
def test_no_test_image_is_in_train800_or_val200(task, tmp_path):
    fake = make_fake(task, tmp_path)
    data = fake.load()
    ids = _check_task(fake, data)
    assert not set(ids["test"]) & (set(ids["train800"]) | set(ids["val200"]))
    seen = {img.tobytes() for split in ("train800", "val200") for img in data.splits[split][0]}
    assert not any(img.tobytes() in seen for img in data.test[0])


@pytest.mark.parametrize("task", sorted(FAKES))
def test_loader_is_deterministic_for_a_seed(task, tmp_path):
    fake = make_fake(task, tmp_path)
    a = fake.load(cache_root=tmp_path / "cache-a")
    b = fake.load(cache_root=tmp_path / "cache-b")  # built again, not read from a's cache
    for split in a.splits:
        for u, v in zip(a.splits[split], b.splits[split]):
            np.testing.assert_array_equal(u, v)
    other = fake.load(cache_root=tmp_path / "cache-c", seed=1)
    assert decode(other.train[0])[0] != decode(a.train[0])[0]  # another draw of train800
    assert set(decode(other.test[0])[0]) == set(decode(a.test[0])[0])  # the same test set


@pytest.mark.parametrize("task", sorted(FAKES))
def test_second_call_reads_the_cache_not_the_dataset(task, tmp_path):
    fake = make_fake(task, tmp_path)
    first = fake.load()
    cache = vtab_cache_path(fake.root / "cache", task, SIZE, 0, fake.n_train, fake.n_val)
    assert cache.is_file()
    for p in fake.root.iterdir():  # the dataset is gone: only the cache can answer
        if p.name != "cache":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    again = fake.load()
    for split in first.splits:
        for u, v in zip(first.splits[split], again.splits[split]):
            np.testing.assert_array_equal(u, v)
    assert again.info == first.info
    with pytest.raises(DatasetError):  # a rebuild really would need the files
        fake.load(seed=1)


def test_caltech101_keeps_30_images_per_class_for_training_and_tests_on_the_rest(tmp_path):
    fake = make_fake("caltech101", tmp_path)
    ids = _check_task(fake, fake.load())
    labels = fake.splits["all"]
    test_per_class = np.bincount([labels[i] for i in ids["test"]], minlength=3)
    assert test_per_class.tolist() == [33 - 30, 32 - 30, 34 - 30]
    # train800 + val200 (90 images) use all the 3 x 30 training images
    assert sorted(ids["train800"] + ids["val200"] + ids["test"]) == sorted(labels)


@pytest.mark.parametrize("task", ["sun397", "eurosat"])
def test_unsplit_datasets_hold_out_a_fixed_fifth_of_each_class(task, tmp_path):
    fake = make_fake(task, tmp_path)
    ids = _check_task(fake, fake.load())
    labels = fake.splits["all"]
    assert np.bincount([labels[i] for i in ids["test"]]).tolist() == [2, 2, 2]  # 20% of 10
    pool = set(labels) - set(ids["test"])
    assert set(ids["train800"]) | set(ids["val200"]) <= pool
    other = fake.load(seed=3)  # another seed: same test split, another draw from the pool
    assert decode(other.test[0])[0] == ids["test"]


def test_clevr_count_tests_on_the_val_split_with_labels_count_minus_3(tmp_path):
    fake = make_fake("clevr_count", tmp_path)
    data = fake.load()
    ids = _check_task(fake, data)
    assert set(ids["test"]) == set(fake.splits["test"])  # CLEVR's val split
    assert not set(ids["test"]) & fake.never  # CLEVR's unlabelled test split is unused
    assert sorted(set(data.test[1].tolist())) == [0, 1, 2, 3]  # 3-6 objects


def test_corrupt_dataset_file_is_a_dataset_error_naming_the_path(tmp_path):
    fake = make_fake("cifar100", tmp_path)
    (fake.root / "cifar-100-python" / "train").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="cifar-100-python"):
        fake.load()


def test_too_few_training_examples_is_a_dataset_error_naming_the_path(tmp_path):
    fake = make_fake("svhn", tmp_path)  # 20 training images, no val split
    with pytest.raises(DatasetError, match=r"train_32x32\.mat has 20 training examples.*21"):
        get_task("vtab:svhn").load(fake.root, image_size=SIZE, n_train=15, n_val=6)
    fake = make_fake("dtd", tmp_path / "d")  # 8 val images in val1
    with pytest.raises(DatasetError, match=r"val1\.txt has 8 examples"):
        get_task("vtab:dtd").load(fake.root, image_size=SIZE, n_train=8, n_val=9)
    with pytest.raises(DatasetError, match=r"train1\.txt has 12 examples; VTAB-1k takes 800"):
        get_task("vtab:dtd").load(fake.root, image_size=SIZE)


# ---------------------------------------------------------------- missing data, no download


@pytest.fixture()
def no_network(monkeypatch):
    import urllib.request

    def refuse(*args, **kwargs):
        raise AssertionError("the loader tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)


def test_missing_data_root_is_a_dataset_error_naming_it(tmp_path, no_network):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="download: true") as err:
        get_task("vtab:cifar100").load(root)
    assert str(root) in str(err.value) and "does not exist" in str(err.value)
    assert not root.exists()
    with pytest.raises(DatasetError) as err:
        get_task("vtab:dmlab").load(root)
    assert str(root) in str(err.value)


@pytest.mark.parametrize("task", sorted(FAKES))
def test_missing_dataset_files_name_the_expected_path_and_never_download(task, tmp_path,
                                                                        no_network):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DatasetError, match="`download: true`") as err:
        get_task(f"vtab:{task}").load(root)
    assert f"expected {root}/" in str(err.value)
    assert list(root.iterdir()) == []  # nothing fetched, nothing created


def test_vtab_imagefolder_task_missing_says_prepare_it_and_that_download_cannot(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DatasetError) as err:
        get_task("vtab:kitti_distance").load(root, download=True)
    msg = str(err.value)
    assert str(root / "vtab" / "kitti_distance") in msg and "prepare" in msg
    assert "cannot fetch" in msg


# ---------------------------------------------------------------- ImageFolder


def test_imagefolder_task_has_sorted_classes_and_vtab1k_splits(tmp_path):
    path = tmp_path / "pets"
    made = make_folder(path, {"train": {"dog": 6, "cat": 6, "emu": 6},
                              "test": {"cat": 2, "emu": 3}})
    (path / "train" / "cat" / "notes.txt").write_text("not an image")  # ignored
    data = imagefolder_task("pets", path, "natural").load(image_size=SIZE, n_train=10, n_val=5)
    assert (data.name, data.group, data.num_classes, data.info.test_size) == ("pets", "natural",
                                                                              3, 5)
    classes = ["cat", "dog", "emu"]  # sorted
    ids = {}
    for split, n in (("train800", 10), ("val200", 5), ("test", 5)):
        x, y = data.splits[split]
        assert x.shape == (n, SIZE, SIZE, 3) and x.dtype == np.uint8 and y.dtype == np.int64
        ids[split], labels = decode(x)
        assert labels == y.tolist()
        assert [classes[c] for c in y] == [made["train" if split != "test" else "test"][i]
                                           for i in ids[split]]
    assert set(ids["train800"]) | set(ids["val200"]) <= set(made["train"])
    assert not set(ids["train800"]) & set(ids["val200"])
    assert set(ids["test"]) == set(made["test"])


def test_imagefolder_val_folder_feeds_val200(tmp_path):
    path = tmp_path / "t"
    made = make_folder(path, {"train": {"a": 5, "b": 5}, "val": {"a": 2, "b": 3},
                              "test": {"a": 2, "b": 2}}, suffix=".jpg")
    data = imagefolder_task("t", path, "specialized").load(image_size=SIZE, n_train=8, n_val=4)
    assert set(decode(data.val[0])[0]) <= set(made["val"])
    assert set(decode(data.train[0])[0]) <= set(made["train"])
    assert len(data.val[1]) == 4 and len(data.train[1]) == 8


def test_imagefolder_integer_class_names_sort_as_numbers(tmp_path):
    path = tmp_path / "bins"
    make_folder(path, {"train": {"2": 3, "10": 3, "1": 3}, "test": {"10": 2, "1": 1}})
    data = imagefolder_task("bins", path, "structured").load(image_size=SIZE, n_train=5, n_val=2)
    ids, labels = decode(data.test[0])
    assert labels == data.test[1].tolist()
    # classes 1, 2, 10 -> labels 0, 1, 2 (not "1", "10", "2")
    assert sorted(data.test[1].tolist()) == [0, 2, 2]


def test_imagefolder_second_call_reads_the_cache(tmp_path):
    path = tmp_path / "t"
    make_folder(path, {"train": {"a": 5, "b": 5}, "test": {"a": 1, "b": 1}})
    first = imagefolder_task("t", path, "natural").load(image_size=SIZE, n_train=6, n_val=3)
    cache = imagefolder_cache_path(path / "cache", "t", SIZE, 0, 6, 3)
    assert cache.is_file()
    shutil.rmtree(path / "train")
    shutil.rmtree(path / "test")
    again = imagefolder_task("t", path, "natural").load(image_size=SIZE, n_train=6, n_val=3)
    assert again.info == first.info and again.num_classes == 2
    for split in first.splits:
        for u, v in zip(first.splits[split], again.splits[split]):
            np.testing.assert_array_equal(u, v)


def test_vtab_imagefolder_task_reads_data_root_vtab_task(tmp_path):
    root = tmp_path / "data"
    made = make_folder(root / "vtab" / "kitti_distance",
                       {"train": {c: 4 for c in "0123"}, "test": {c: 1 for c in "0123"}})
    data = get_task("vtab:kitti_distance").load(root, image_size=SIZE, n_train=8, n_val=4)
    assert data.info.note == get_task("vtab:kitti_distance").info.note
    assert (data.group, data.num_classes, data.info.test_size) == ("structured", 4, 4)
    assert set(decode(data.test[0])[0]) == set(made["test"])
    assert decode(data.test[0])[1] == data.test[1].tolist()
    assert vtab_cache_path(root / "cache", "kitti_distance", SIZE, 0, 8, 4).is_file()


def test_vtab_imagefolder_task_with_wrong_class_count_is_an_error(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "vtab" / "kitti_distance",
                {"train": {c: 4 for c in "012"}, "test": {c: 1 for c in "012"}})
    with pytest.raises(DatasetError, match=r"has 3 class folders; the task has 4 classes") as err:
        get_task("vtab:kitti_distance").load(root, image_size=SIZE, n_train=8, n_val=4)
    assert str(root / "vtab" / "kitti_distance" / "train") in str(err.value)


def test_imagefolder_missing_path_or_split_folder_is_an_error_naming_it(tmp_path):
    path = tmp_path / "absent"
    with pytest.raises(DatasetError, match="not found") as err:
        imagefolder_task("x", path, "natural").load()
    assert str(path) in str(err.value) and "train" in str(err.value)
    make_folder(tmp_path / "half", {"train": {"a": 2}})
    with pytest.raises(DatasetError, match="has no test/ folder") as err:
        imagefolder_task("x", tmp_path / "half", "natural").load()
    assert str(tmp_path / "half") in str(err.value)


def test_imagefolder_class_folder_without_images_is_named(tmp_path):
    path = tmp_path / "t"
    make_folder(path, {"train": {"a": 3, "b": 3}, "test": {"a": 1}})
    (path / "train" / "empty").mkdir()
    (path / "train" / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DatasetError, match="has no images") as err:
        imagefolder_task("t", path, "natural").load(n_train=2, n_val=1)
    assert str(path / "train" / "empty") in str(err.value)


@pytest.mark.parametrize("split", ["test", "val"])
def test_imagefolder_class_missing_from_train_is_named(split, tmp_path):
    path = tmp_path / "t"
    make_folder(path, {"train": {"a": 3, "b": 3}, "test": {"a": 1}, split: {"a": 1, "zebra": 1}})
    with pytest.raises(DatasetError, match="no counterpart") as err:
        imagefolder_task("t", path, "natural").load(n_train=2, n_val=1)
    assert str(path / split / "zebra") in str(err.value)


def test_imagefolder_too_few_images_is_an_error_naming_the_folder(tmp_path):
    path = tmp_path / "t"
    make_folder(path, {"train": {"a": 30, "b": 30}, "test": {"a": 1}})
    with pytest.raises(DatasetError, match="60 training examples; VTAB-1k takes 800 train "
                                           r"\+ 200 val = 1000") as err:
        imagefolder_task("t", path, "natural").load(image_size=SIZE)
    assert str(path / "train") in str(err.value)
    make_folder(path, {"val": {"a": 3}}, start=100)
    with pytest.raises(DatasetError, match="has 3 examples; VTAB-1k takes 4 val") as err:
        imagefolder_task("t", path, "natural").load(image_size=SIZE, n_train=50, n_val=4)
    assert str(path / "val") in str(err.value)
    with pytest.raises(ValueError, match="group"):
        imagefolder_task("t", path, "medical").load()


def test_unreadable_image_is_a_dataset_error_naming_the_file(tmp_path):
    path = tmp_path / "t"
    make_folder(path, {"train": {"a": 3, "b": 3}, "test": {"a": 1}})
    bad = path / "test" / "a" / "0.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError) as err:
        imagefolder_task("t", path, "natural").load(image_size=SIZE, n_train=2, n_val=1)
    assert str(bad) in str(err.value)


def test_download_true_lets_torchvision_fetch_with_its_md5(tmp_path, monkeypatch, no_network):
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar

    root, calls = tmp_path / "new-root", []

    def fetch(url, download_root, filename=None, md5=None, **kwargs):  # stands in for the network
        calls.append((url, md5))
        fake_cifar100(pathlib.Path(download_root))

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fetch)
    data = get_task("vtab:cifar100").load(root, image_size=SIZE, download=True, n_train=10,
                                          n_val=6)
    assert calls == [(tvd.CIFAR100.url, tvd.CIFAR100.tgz_md5)]  # the archive's md5 is checked
    assert len(data.test[1]) == 6 and root.is_dir()
    get_task("vtab:cifar100").load(root, image_size=SIZE, download=True, n_train=10, n_val=6,
                                   seed=2)  # files present: no second fetch
    assert len(calls) == 1


def test_cache_built_from_another_data_root_is_not_reused(tmp_path):
    cache = tmp_path / "shared-cache"
    one, two = tmp_path / "one", tmp_path / "two"
    made_one = make_folder(one, {"train": {"a": 4, "b": 4}, "test": {"a": 1, "b": 1}})
    made_two = make_folder(two, {"train": {"a": 4, "b": 4}, "test": {"a": 1, "b": 1}}, start=50)
    a = imagefolder_task("t", one, "natural").load(image_size=SIZE, cache_root=cache, n_train=4,
                                                   n_val=2)
    b = imagefolder_task("t", two, "natural").load(image_size=SIZE, cache_root=cache, n_train=4,
                                                   n_val=2)
    assert set(decode(a.test[0])[0]) == set(made_one["test"])
    assert set(decode(b.test[0])[0]) == set(made_two["test"])


@pytest.mark.parametrize("task", ["eurosat", "imagefolder"])
def test_only_the_drawn_training_images_and_the_test_split_are_decoded(task, tmp_path,
                                                                       monkeypatch):
    if task == "imagefolder":
        path = tmp_path / "t"
        make_folder(path, {"train": {"a": 20, "b": 20}, "test": {"a": 2, "b": 3}})
        load = lambda: imagefolder_task("t", path, "natural").load(  # noqa: E731
            image_size=SIZE, n_train=6, n_val=3)
        expected = 6 + 3 + 5
    else:
        fake = make_fake(task, tmp_path)  # 24 training images, 6 test
        load, expected = fake.load, fake.n_train + fake.n_val + 6
    opened, real_open = [], Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    load()
    assert len(opened) == len(set(opened)) == expected
