"""VTAB-1k loaders (lightning_modules.vtab) on tiny fakes written in each dataset's real layout.

Every fake is parsed by torchvision's own dataset class. Each fake image is one solid colour that
encodes a unique id and its label (red/blue: id, green: label), so a test can tell, from the
loaded arrays alone, which file every example came from and whether its label is right.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import shutil
from dataclasses import dataclass, field

import numpy as np
import pytest
import scipy.io
from PIL import Image

from lightning_modules import vtab
from lightning_modules.tasks import TaskData, UnknownTaskError
from lightning_modules.vtab import (
    VTAB1K,
    DatasetError,
    get_vtab_info,
    list_vtab_tasks,
    load_imagefolder_task,
    load_vtab_task,
    vtab_cache_path,
)

SIZE = 16  # loaded image size

# ---------------------------------------------------------------- colour-coded fake images


def colour(i: int, label: int) -> tuple[int, int, int]:
    assert 0 <= i < 1024 and 0 <= label < 12
    return 8 * (i % 32) + 4, 20 * label + 10, 8 * (i // 32) + 4


def solid(i: int, label: int, h: int = 8, w: int = 12) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[...] = colour(i, label)
    return img


def write_image(path, i: int, label: int, h: int = 8, w: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(solid(i, label, h, w))
    if path.suffix == ".jpg":
        img.save(path, "JPEG", quality=95)
    else:
        img.save(path)


def decode(x: np.ndarray) -> tuple[list[int], list[int]]:
    """(ids, labels) of loaded images (JPEG changes a solid colour by at most 1-2 levels)."""
    px = x[:, SIZE // 2, SIZE // 2].astype(float)
    assert np.abs(x.astype(float) - px[:, None, None, :]).max() <= 3  # still solid
    ids = np.round((px[:, 0] - 4) / 8) + 32 * np.round((px[:, 2] - 4) / 8)
    labels = np.round((px[:, 1] - 10) / 20)
    return ids.astype(int).tolist(), labels.astype(int).tolist()


@dataclass
class Fake:
    """A fake dataset under ``root``: ``splits[split] = {id: label}`` with split ``train``,
    ``val`` or ``test`` (official splits) or ``all`` (datasets without splits); ``never``: ids
    that must not be loaded; ``kw``: loader sizes."""

    root: object
    splits: dict[str, dict[int, int]]
    n_train: int
    n_val: int
    never: set[int] = field(default_factory=set)
    task: str = ""

    def load(self, **kw) -> TaskData:
        return load_vtab_task(self.task, self.root, image_size=SIZE, n_train=self.n_train,
                              n_val=self.n_val, **kw)


def _ids(start: int, labels: list[int]) -> dict[int, int]:
    return {start + k: c for k, c in enumerate(labels)}


def fake_caltech101(root) -> Fake:
    base = root / "caltech101" / "101_ObjectCategories"
    all_, i = {}, 0
    for label, (cls, n) in enumerate([("accordion", 33), ("camera", 32), ("wheelchair", 34)]):
        for k in range(1, n + 1):
            write_image(base / cls / f"image_{k:04d}.jpg", i, label)
            all_[i] = label
            i += 1
    never = {i, i + 1}
    for k, j in enumerate(sorted(never), 1):
        write_image(base / "BACKGROUND_Google" / f"image_{k:04d}.jpg", j, 0)
    return Fake(root, {"all": all_}, n_train=60, n_val=30, never=never)


def _cifar_batch(ids: dict[int, int]) -> dict:
    data = np.stack([np.transpose(solid(i, c, 32, 32), (2, 0, 1)).reshape(-1)
                     for i, c in ids.items()])
    return {"filenames": [f"img_{i}.png" for i in ids], "batch_label": "fake",
            "fine_labels": list(ids.values()), "coarse_labels": [0] * len(ids), "data": data}


def fake_cifar100(root) -> Fake:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    train = _ids(0, [0, 3, 7, 11] * 5)
    test = _ids(100, [0, 3, 7, 11, 3, 0])
    for name, ids in (("train", train), ("test", test)):
        with open(base / name, "wb") as f:
            pickle.dump(_cifar_batch(ids), f, protocol=2)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{c}" for c in range(100)],
                     "coarse_label_names": [f"super{c}" for c in range(20)]}, f, protocol=2)
    return Fake(root, {"train": train, "test": test}, n_train=10, n_val=6)


def fake_dtd(root) -> Fake:
    base = root / "dtd" / "dtd"
    classes = ["banded", "dotted", "zigzagged"]
    splits, i = {}, 0
    # val1 has no "dotted" image: torchvision's val labels then index [banded, zigzagged], and
    # the loader must map them by name onto the training classes
    for split, present in (("train", classes), ("val", ["banded", "zigzagged"]),
                           ("test", classes)):
        lines, splits[split] = [], {}
        for cls in present:
            for _ in range(4):
                name = f"{cls}_{i:04d}.jpg"
                write_image(base / "images" / cls / name, i, classes.index(cls))
                lines.append(f"{cls}/{name}")
                splits[split][i] = classes.index(cls)
                i += 1
        (base / "labels").mkdir(parents=True, exist_ok=True)
        (base / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    for other in ("train2", "val2", "test2"):
        (base / "labels" / f"{other}.txt").write_text(lines[0] + "\n")
    return Fake(root, splits, n_train=8, n_val=4)


def fake_oxford_flowers102(root) -> Fake:
    base = root / "flowers-102"
    sizes = {"train": 12, "val": 8, "test": 10}
    labels, setid, splits, image_id = [], {}, {}, 1
    for split, n in sizes.items():
        ids = list(range(image_id, image_id + n))
        image_id += n
        setid[{"train": "trnid", "val": "valid", "test": "tstid"}[split]] = np.array([ids])
        splits[split] = {}
        for k, j in enumerate(ids):
            label = k % 3
            write_image(base / "jpg" / f"image_{j:05d}.jpg", j, label, 10, 9)
            labels.append(label + 1)  # 1-based in imagelabels.mat
            splits[split][j] = label
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([labels], np.uint8)})
    scipy.io.savemat(base / "setid.mat", setid)
    return Fake(root, splits, n_train=9, n_val=5)


def fake_oxford_iiit_pet(root) -> Fake:
    base = root / "oxford-iiit-pet"
    breeds = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("Bengal", 3, 1)]
    splits, i = {}, 0
    (base / "annotations").mkdir(parents=True)
    for split, per in (("trainval", 5), ("test", 2)):
        lines, ids = [], {}
        for breed, cid, species in breeds:
            for _ in range(per):
                image_id = f"{breed}_{i}"
                write_image(base / "images" / f"{image_id}.jpg", i, cid - 1)
                lines.append(f"{image_id} {cid} {species} {i}")
                ids[i] = cid - 1
                i += 1
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        splits["train" if split == "trainval" else "test"] = ids
    return Fake(root, splits, n_train=8, n_val=4)


def fake_sun397(root) -> Fake:
    base = root / "SUN397"
    classes = ["/a/abbey", "/b/bakery/shop", "/c/canyon"]
    base.mkdir(parents=True)
    (base / "ClassName.txt").write_text("\n".join(classes) + "\n")
    all_, i = {}, 0
    for label, cls in enumerate(classes):
        for _ in range(10):
            write_image(base / cls[1:] / f"sun_{i:08x}.jpg", i, label)
            all_[i] = label
            i += 1
    return Fake(root, {"all": all_}, n_train=12, n_val=6)


def _svhn_mat(path, ids: dict[int, int]) -> None:
    x = np.stack([solid(i, c, 32, 32) for i, c in ids.items()], axis=-1)  # (32, 32, 3, N)
    y = np.array([[10 if c == 0 else c] for c in ids.values()], np.uint8)  # digit 0 is 10
    scipy.io.savemat(path, {"X": x, "y": y})


def fake_svhn(root) -> Fake:
    root.mkdir(parents=True, exist_ok=True)
    train, test = _ids(0, [0, 1, 5, 9] * 5), _ids(50, [9, 5, 1, 0, 0])
    _svhn_mat(root / "train_32x32.mat", train)
    _svhn_mat(root / "test_32x32.mat", test)
    return Fake(root, {"train": train, "test": test}, n_train=10, n_val=6)


def fake_patch_camelyon(root) -> Fake:
    import h5py

    base = root / "pcam"
    base.mkdir(parents=True)
    splits, start = {}, 0
    for split, fname, n in (("train", "train", 20), ("val", "valid", 8), ("test", "test", 10)):
        ids = _ids(start, [k % 2 for k in range(n)])
        start += n
        with h5py.File(base / f"camelyonpatch_level_2_split_{fname}_x.h5", "w") as f:
            f.create_dataset("x", data=np.stack([solid(i, c, 16, 16) for i, c in ids.items()]),
                             chunks=(4, 16, 16, 3), compression="gzip")
        with h5py.File(base / f"camelyonpatch_level_2_split_{fname}_y.h5", "w") as f:
            f.create_dataset("y", data=np.array(list(ids.values()), np.uint8).reshape(-1, 1, 1, 1))
        splits[split] = ids
    return Fake(root, splits, n_train=9, n_val=5)


def fake_eurosat(root) -> Fake:
    base = root / "eurosat" / "2750"
    all_, i = {}, 0
    for label, cls in enumerate(["AnnualCrop", "Forest", "River"]):
        for k in range(1, 11):
            write_image(base / cls / f"{cls}_{k}.jpg", i, label, 16, 16)
            all_[i] = label
            i += 1
    return Fake(root, {"all": all_}, n_train=12, n_val=6)


def fake_clevr_count(root) -> Fake:
    base = root / "clevr" / "CLEVR_v1.0"
    splits, i = {}, 0
    for split, n in (("train", 16), ("val", 8), ("test", 4)):
        scenes, ids = [], {}
        for k in range(n):
            name = f"CLEVR_{split}_{k:06d}.png"
            count = 3 + k % 4
            write_image(base / "images" / split / name, i, count - 3, 12, 18)
            scenes.append({"image_index": k, "image_filename": name, "split": split,
                           "objects": [{"shape": "cube"}] * count})
            ids[i] = count - 3
            i += 1
        if split != "test":  # CLEVR's test split comes without scenes (labels)
            (base / "scenes").mkdir(parents=True, exist_ok=True)
            with open(base / "scenes" / f"CLEVR_{split}_scenes.json", "w") as f:
                json.dump({"info": {"split": split}, "scenes": scenes}, f)
        splits[split] = ids
    # CLEVR's val split is VTAB's test split; its test split is never used
    return Fake(root, {"train": splits["train"], "test": splits["val"]}, n_train=8, n_val=4,
                never=set(splits["test"]))


FAKES = {name[len("fake_"):]: fn for name, fn in globals().items() if name.startswith("fake_")}
WITH_VAL = ["dtd", "oxford_flowers102", "patch_camelyon"]
SINGLE_SPLIT = {"caltech101": lambda n: n - 30, "sun397": lambda n: round(0.2 * n),
                "eurosat": lambda n: round(0.2 * n)}  # expected test images of a class of n


def make_fake(task: str, tmp_path) -> Fake:
    fake = FAKES[task](tmp_path / "data")
    fake.task = task
    return fake


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
    assert len(VTAB1K) == 19 and len(list_vtab_tasks()) == 19
    for group, tasks in expected.items():
        assert list_vtab_tasks(group) == sorted(tasks)
        for name, classes in tasks.items():
            info = get_vtab_info(name)
            assert (info.name, info.group, info.num_classes) == (name, group, classes)
            assert info.description
    with pytest.raises(UnknownTaskError, match="caltech101"):
        get_vtab_info("imagenet")
    with pytest.raises(ValueError, match="groups"):
        list_vtab_tasks("natrual")


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
    info = get_vtab_info(fake.task)
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
        load_vtab_task("svhn", fake.root, image_size=SIZE, n_train=15, n_val=6)
    fake = make_fake("dtd", tmp_path / "d")  # 8 val images in val1
    with pytest.raises(DatasetError, match=r"val1\.txt has 8 examples"):
        load_vtab_task("dtd", fake.root, image_size=SIZE, n_train=8, n_val=9)
    with pytest.raises(DatasetError, match=r"train1\.txt has 12 examples; VTAB-1k takes 800"):
        load_vtab_task("dtd", fake.root, image_size=SIZE)


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
        load_vtab_task("cifar100", root)
    assert str(root) in str(err.value) and "does not exist" in str(err.value)
    assert not root.exists()
    with pytest.raises(DatasetError) as err:
        load_vtab_task("dmlab", root)
    assert str(root) in str(err.value)


@pytest.mark.parametrize("task", sorted(FAKES))
def test_missing_dataset_files_name_the_expected_path_and_never_download(task, tmp_path,
                                                                        no_network):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DatasetError, match="`download: true`") as err:
        load_vtab_task(task, root)
    assert f"expected {root}/" in str(err.value)
    assert list(root.iterdir()) == []  # nothing fetched, nothing created


def test_vtab_imagefolder_task_missing_says_prepare_it_and_that_download_cannot(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DatasetError) as err:
        load_vtab_task("kitti_distance", root, download=True)
    msg = str(err.value)
    assert str(root / "vtab" / "kitti_distance") in msg and "prepare" in msg
    assert "cannot fetch" in msg


# ---------------------------------------------------------------- ImageFolder


def make_folder(path, spec: dict[str, dict[str, int]], start: int = 0, suffix: str = ".png"):
    """spec[split][class] = number of images; the label in the colour is the class's index in
    the sorted training classes. Returns split -> {id: class name}."""
    classes = sorted(spec.get("train", {}), key=lambda c: (int(c), c) if c.isdecimal() else (0, c))
    out, i = {}, start
    for split, counts in spec.items():
        out[split] = {}
        for cls, n in counts.items():
            label = classes.index(cls) if cls in classes else 0
            for k in range(n):
                write_image(path / split / cls / f"{k}{suffix}", i, label, 9, 7)
                out[split][i] = cls
                i += 1
    return out


def test_imagefolder_task_has_sorted_classes_and_vtab1k_splits(tmp_path):
    path = tmp_path / "pets"
    made = make_folder(path, {"train": {"dog": 6, "cat": 6, "emu": 6},
                              "test": {"cat": 2, "emu": 3}})
    (path / "train" / "cat" / "notes.txt").write_text("not an image")  # ignored
    data = load_imagefolder_task("pets", path, "natural", image_size=SIZE, n_train=10, n_val=5)
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
    data = load_imagefolder_task("t", path, "specialized", image_size=SIZE, n_train=8, n_val=4)
    assert set(decode(data.val[0])[0]) <= set(made["val"])
    assert set(decode(data.train[0])[0]) <= set(made["train"])
    assert len(data.val[1]) == 4 and len(data.train[1]) == 8


def test_imagefolder_integer_class_names_sort_as_numbers(tmp_path):
    path = tmp_path / "bins"
    make_folder(path, {"train": {"2": 3, "10": 3, "1": 3}, "test": {"10": 2, "1": 1}})
    data = load_imagefolder_task("bins", path, "structured", image_size=SIZE, n_train=5, n_val=2)
    ids, labels = decode(data.test[0])
    assert labels == data.test[1].tolist()
    # classes 1, 2, 10 -> labels 0, 1, 2 (not "1", "10", "2")
    assert sorted(data.test[1].tolist()) == [0, 2, 2]


def test_imagefolder_second_call_reads_the_cache(tmp_path):
    path = tmp_path / "t"
    make_folder(path, {"train": {"a": 5, "b": 5}, "test": {"a": 1, "b": 1}})
    first = load_imagefolder_task("t", path, "natural", image_size=SIZE, n_train=6, n_val=3)
    cache = vtab.imagefolder_cache_path(path / "cache", "t", SIZE, 0, 6, 3)
    assert cache.is_file()
    shutil.rmtree(path / "train")
    shutil.rmtree(path / "test")
    again = load_imagefolder_task("t", path, "natural", image_size=SIZE, n_train=6, n_val=3)
    assert again.info == first.info and again.num_classes == 2
    for split in first.splits:
        for u, v in zip(first.splits[split], again.splits[split]):
            np.testing.assert_array_equal(u, v)


def test_vtab_imagefolder_task_reads_data_root_vtab_task(tmp_path):
    root = tmp_path / "data"
    made = make_folder(root / "vtab" / "kitti_distance",
                       {"train": {c: 4 for c in "0123"}, "test": {c: 1 for c in "0123"}})
    data = load_vtab_task("kitti_distance", root, image_size=SIZE, n_train=8, n_val=4)
    assert data.info.note == get_vtab_info("kitti_distance").note
    assert (data.group, data.num_classes, data.info.test_size) == ("structured", 4, 4)
    assert set(decode(data.test[0])[0]) == set(made["test"])
    assert decode(data.test[0])[1] == data.test[1].tolist()
    assert vtab_cache_path(root / "cache", "kitti_distance", SIZE, 0, 8, 4).is_file()


def test_vtab_imagefolder_task_with_wrong_class_count_is_an_error(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "vtab" / "kitti_distance",
                {"train": {c: 4 for c in "012"}, "test": {c: 1 for c in "012"}})
    with pytest.raises(DatasetError, match=r"has 3 class folders; the task has 4 classes") as err:
        load_vtab_task("kitti_distance", root, image_size=SIZE, n_train=8, n_val=4)
    assert str(root / "vtab" / "kitti_distance" / "train") in str(err.value)


def test_imagefolder_missing_path_or_split_folder_is_an_error_naming_it(tmp_path):
    path = tmp_path / "absent"
    with pytest.raises(DatasetError, match="not found") as err:
        load_imagefolder_task("x", path, "natural")
    assert str(path) in str(err.value) and "train" in str(err.value)
    make_folder(tmp_path / "half", {"train": {"a": 2}})
    with pytest.raises(DatasetError, match="has no test/ folder") as err:
        load_imagefolder_task("x", tmp_path / "half", "natural")
    assert str(tmp_path / "half") in str(err.value)


def test_imagefolder_class_folder_without_images_is_named(tmp_path):
    path = tmp_path / "t"
    make_folder(path, {"train": {"a": 3, "b": 3}, "test": {"a": 1}})
    (path / "train" / "empty").mkdir()
    (path / "train" / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DatasetError, match="has no images") as err:
        load_imagefolder_task("t", path, "natural", n_train=2, n_val=1)
    assert str(path / "train" / "empty") in str(err.value)


@pytest.mark.parametrize("split", ["test", "val"])
def test_imagefolder_class_missing_from_train_is_named(split, tmp_path):
    path = tmp_path / "t"
    make_folder(path, {"train": {"a": 3, "b": 3}, "test": {"a": 1}, split: {"a": 1, "zebra": 1}})
    with pytest.raises(DatasetError, match="no counterpart") as err:
        load_imagefolder_task("t", path, "natural", n_train=2, n_val=1)
    assert str(path / split / "zebra") in str(err.value)


def test_imagefolder_too_few_images_is_an_error_naming_the_folder(tmp_path):
    path = tmp_path / "t"
    make_folder(path, {"train": {"a": 30, "b": 30}, "test": {"a": 1}})
    with pytest.raises(DatasetError, match="60 training examples; VTAB-1k takes 800 train "
                                           r"\+ 200 val = 1000") as err:
        load_imagefolder_task("t", path, "natural", image_size=SIZE)
    assert str(path / "train") in str(err.value)
    make_folder(path, {"val": {"a": 3}}, start=100)
    with pytest.raises(DatasetError, match="has 3 examples; VTAB-1k takes 4 val") as err:
        load_imagefolder_task("t", path, "natural", image_size=SIZE, n_train=50, n_val=4)
    assert str(path / "val") in str(err.value)
    with pytest.raises(ValueError, match="group"):
        load_imagefolder_task("t", path, "medical")


def test_unreadable_image_is_a_dataset_error_naming_the_file(tmp_path):
    path = tmp_path / "t"
    make_folder(path, {"train": {"a": 3}, "test": {"a": 1}})
    bad = path / "test" / "a" / "0.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError) as err:
        load_imagefolder_task("t", path, "natural", image_size=SIZE, n_train=2, n_val=1)
    assert str(bad) in str(err.value)


def test_download_true_lets_torchvision_fetch_with_its_md5(tmp_path, monkeypatch, no_network):
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar

    root, calls = tmp_path / "new-root", []

    def fetch(url, download_root, filename=None, md5=None, **kwargs):  # stands in for the network
        calls.append((url, md5))
        fake_cifar100(pathlib.Path(download_root))

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fetch)
    data = load_vtab_task("cifar100", root, image_size=SIZE, download=True, n_train=10, n_val=6)
    assert calls == [(tvd.CIFAR100.url, tvd.CIFAR100.tgz_md5)]  # the archive's md5 is checked
    assert len(data.test[1]) == 6 and root.is_dir()
    load_vtab_task("cifar100", root, image_size=SIZE, download=True, n_train=10, n_val=6,
                   seed=2)  # files present: no second fetch
    assert len(calls) == 1


def test_cache_built_from_another_data_root_is_not_reused(tmp_path):
    cache = tmp_path / "shared-cache"
    one, two = tmp_path / "one", tmp_path / "two"
    made_one = make_folder(one, {"train": {"a": 4, "b": 4}, "test": {"a": 1, "b": 1}})
    made_two = make_folder(two, {"train": {"a": 4, "b": 4}, "test": {"a": 1, "b": 1}}, start=50)
    a = load_imagefolder_task("t", one, "natural", image_size=SIZE, cache_root=cache, n_train=4,
                              n_val=2)
    b = load_imagefolder_task("t", two, "natural", image_size=SIZE, cache_root=cache, n_train=4,
                              n_val=2)
    assert set(decode(a.test[0])[0]) == set(made_one["test"])
    assert set(decode(b.test[0])[0]) == set(made_two["test"])


@pytest.mark.parametrize("task", ["eurosat", "imagefolder"])
def test_only_the_drawn_training_images_and_the_test_split_are_decoded(task, tmp_path,
                                                                       monkeypatch):
    if task == "imagefolder":
        path = tmp_path / "t"
        make_folder(path, {"train": {"a": 20, "b": 20}, "test": {"a": 2, "b": 3}})
        load = lambda: load_imagefolder_task("t", path, "natural", image_size=SIZE,  # noqa: E731
                                             n_train=6, n_val=3)
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
