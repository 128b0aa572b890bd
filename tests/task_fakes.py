"""Data for the task tests: fake VTAB-1k datasets, and the offline suite built once per session.

The fake VTAB-1k datasets are written in each dataset's real layout.

Every fake is parsed by torchvision's own dataset class. Each fake image is one solid colour that
encodes a unique id and its label (red/blue: id, green: label), so a test can tell, from the
loaded arrays alone, which file every example came from and whether its label is right.
:func:`write_vtab_data` writes the data of any registered VTAB-1k task (a fake torchvision
dataset, or an ImageFolder with the task's classes), so contract tests cover every task.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field

import numpy as np
import scipy.io
from PIL import Image

from lightning_modules.offline import build_suite
from lightning_modules.task_data import TaskData
from lightning_modules.tasks import get_task

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
        return get_task(f"vtab:{self.task}").load(self.root, image_size=SIZE,
                                                  n_train=self.n_train, n_val=self.n_val, **kw)


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


def make_fake(task: str, tmp_path) -> Fake:
    fake = FAKES[task](tmp_path / "data")
    fake.task = task
    return fake



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


def write_vtab_data(task: str, root) -> Fake:
    """Data for the VTAB-1k task ``task`` (its bare name) under the data root ``root``: its fake
    torchvision dataset, or an ImageFolder at ``root/vtab/<task>`` with the task's classes (two
    training images and one test image each)."""
    if task in FAKES:
        fake = FAKES[task](root)
    else:  # more classes than colours encode: the colour's label is the class modulo 12
        n_classes = get_task(f"vtab:{task}").info.num_classes
        splits, i = {"train": {}, "test": {}}, 0
        for split, per_class in (("train", 2), ("test", 1)):
            for c in range(n_classes):
                for k in range(per_class):
                    write_image(root / "vtab" / task / split / str(c) / f"{k}.png", i, c % 12)
                    splits[split][i] = c
                    i += 1
        fake = Fake(root, splits, n_train=n_classes, n_val=max(1, n_classes // 2))
    fake.task = task
    return fake


_OFFLINE_ROOT: dict[str, object] = {}


def offline_suite_root(tmp_path_factory):
    """A data root holding the offline suite at 32 px, seed 0: built by the first test module
    that asks (about 5 s on 2 cores), then shared by all of them."""
    if "root" not in _OFFLINE_ROOT:
        root = tmp_path_factory.mktemp("offline-suite")
        build_suite(root)
        _OFFLINE_ROOT["root"] = root
    return _OFFLINE_ROOT["root"]
