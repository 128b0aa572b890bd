"""VTAB-1k tasks on real data: torchvision's datasets where it has them, ImageFolders for the rest.

The offline suite (:mod:`lightning_modules.tasks`) is made of bundled and rendered data; this module
loads the 19 tasks of VTAB-1k (Zhai et al. 2019, "A Large-scale Study of Representation Learning
with the Visual Task Adaptation Benchmark") from files on disk and returns the same
:class:`~lightning_modules.tasks.TaskData` (splits ``train800``, ``val200``, ``test``; images uint8
``(N, S, S, 3)``, labels int64 ``0..C-1``), so that VTAB tasks go through the same code paths as
the offline ones. Nothing is ever downloaded unless the caller passes ``download=True`` (a sweep's
``download: true``).

The 19 tasks (:data:`VTAB1K`, :func:`list_vtab_tasks`, :func:`get_vtab_info`), with their loader:

=====================  ===========  =======  ==========================================
task                   group        classes  loader
=====================  ===========  =======  ==========================================
caltech101             natural      101      ``torchvision:Caltech101``
cifar100               natural      100      ``torchvision:CIFAR100``
dtd                    natural      47       ``torchvision:DTD`` (partition 1)
oxford_flowers102      natural      102      ``torchvision:Flowers102``
oxford_iiit_pet        natural      37       ``torchvision:OxfordIIITPet``
sun397                 natural      397      ``torchvision:SUN397``
svhn                   natural      10       ``torchvision:SVHN``
patch_camelyon         specialized  2        ``torchvision:PCAM`` (needs h5py)
eurosat                specialized  10       ``torchvision:EuroSAT``
resisc45               specialized  45       ``imagefolder``
diabetic_retinopathy   specialized  5        ``imagefolder``
clevr_count            structured   8        ``torchvision:CLEVRClassification``
clevr_distance         structured   6        ``imagefolder``
dmlab                  structured   6        ``imagefolder``
dsprites_location      structured   16       ``imagefolder``
dsprites_orientation   structured   16       ``imagefolder``
kitti_distance         structured   4        ``imagefolder``
smallnorb_azimuth      structured   18       ``imagefolder``
smallnorb_elevation    structured   9        ``imagefolder``
=====================  ===========  =======  ==========================================

**Split rules** (:func:`load_vtab_task`). ``train800`` and ``val200`` are drawn without replacement
by a generator seeded with ``(seed, task)``; ``test`` is the whole test split.

- Datasets with an official validation split (``dtd``, ``oxford_flowers102``, ``patch_camelyon``,
  and ImageFolders with a ``val/`` folder): ``train800`` from the training split, ``val200`` from
  the validation split.
- The others: ``train800`` and ``val200`` disjoint, both from the training split
  (``cifar100``, ``svhn``, ``oxford_iiit_pet``'s ``trainval``, ``clevr_count``, ...).
- ``clevr_count``: CLEVR's test split has no labels, so, as in VTAB, the official ``val`` split is
  the test split; labels are the object count minus 3 (counts 3-10 -> 0-7).
- Datasets without official splits in torchvision get a *fixed* split (the same for every
  ``seed``, so that seeds change only train800/val200, never the test set): ``caltech101``: as in
  VTAB, 30 random images of each class form the training split and the rest is test (torchvision
  drops the ``BACKGROUND_Google`` folder, so 101 classes where VTAB's TFDS version has 102);
  ``sun397`` and ``eurosat``: a random 20% of each class is test, the other 80% the training
  split (VTAB's test is also 20%; it takes its validation from the rest).

Images are converted to RGB and resized directly to ``image_size x image_size`` (bilinear, no crop,
as VTAB does). Labels are the dataset's own class indices (``0..C-1``; CLEVR shifted as above);
ImageFolder classes are the folder names of ``train/``, sorted (numerically when every name is an
integer). Only the examples that are used are decoded: labels are read first, indices drawn, then
just those images of the training (and validation) split are decoded; the test split is decoded
fully.

**On-disk layouts** (``download=True`` makes torchvision fetch them into ``data_root``):

- ``caltech101``: ``<data_root>/caltech101/101_ObjectCategories/<class>/image_0001.jpg`` (with the
  ``BACKGROUND_Google`` folder, which is skipped);
- ``cifar100``: ``<data_root>/cifar-100-python/{train,test,meta}`` (the Python pickles);
- ``dtd``: ``<data_root>/dtd/dtd/images/<class>/*.jpg`` and
  ``<data_root>/dtd/dtd/labels/{train1,val1,test1}.txt``;
- ``oxford_flowers102``: ``<data_root>/flowers-102/jpg/image_00001.jpg``, ``imagelabels.mat``,
  ``setid.mat``;
- ``oxford_iiit_pet``: ``<data_root>/oxford-iiit-pet/images/*.jpg`` and
  ``<data_root>/oxford-iiit-pet/annotations/{trainval,test}.txt``;
- ``sun397``: ``<data_root>/SUN397/ClassName.txt`` and ``<data_root>/SUN397/a/abbey/sun_*.jpg``;
- ``svhn``: ``<data_root>/{train,test}_32x32.mat``;
- ``patch_camelyon``: ``<data_root>/pcam/camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``;
- ``eurosat``: ``<data_root>/eurosat/2750/<class>/*.jpg``;
- ``clevr_count``: ``<data_root>/clevr/CLEVR_v1.0/images/{train,val}/*.png`` and
  ``<data_root>/clevr/CLEVR_v1.0/scenes/CLEVR_{train,val}_scenes.json``;
- ``imagefolder`` tasks: ``<data_root>/vtab/<task>/{train,test}/<class>/*.png|jpg`` with an optional
  ``val/``; the number of class folders must equal the task's number of classes (see each task's
  ``note`` for how VTAB defines the classes). The same layout, anywhere, for
  :func:`load_imagefolder_task` (user tasks).

torchvision checks the md5 of the extracted files of CIFAR-100, SVHN and Flowers-102 every time
it opens them; the loaders here use subclasses that check only that those files are present
(everything else is torchvision's own code: its parsing, its downloads, which still verify the
md5 of what they fetch). That lets a copy prepared by other means, and the small fakes of the
tests, go through torchvision's real parsing code.

**Cache**: the arrays are cached (atomically) as
``<cache_root>/vtab/<task>-<size>px-seed<seed>.npz`` (``cache_root`` defaults to
``<data_root>/cache``; user ImageFolders: ``<path>/cache/imagefolder/...``); a cache built from
another data root is rebuilt. Delete the cache file after changing the data in place.

Errors about the data raise :class:`DatasetError` (a ``ValueError``) naming the path and the fix.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import pickle
import zipfile
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from lightning_modules.tasks import (
    GROUPS,
    N_TRAIN,
    N_VAL,
    SPLITS,
    TaskData,
    TaskInfo,
    UnknownTaskError,
    _load,
    _rng,
    _save,
)

Array = np.ndarray
PathLike = str | os.PathLike

#: Image file suffixes an ImageFolder may hold (torchvision's ``IMG_EXTENSIONS``), any case.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Images per class in Caltech-101's training split (VTAB's rule); the rest of a class is test.
CALTECH_TRAIN_PER_CLASS = 30
#: Fraction of each class that is test where torchvision has no splits (SUN397, EuroSAT).
TEST_FRACTION = 0.2
#: Seed of the fixed train/test split of datasets without official splits (never the task seed).
SPLIT_SEED = 0
VTAB_CACHE_VERSION = 1
_DOWNLOAD_HINT = "set `download: true` in the sweep (download=True) to fetch it"


class DatasetError(ValueError):
    """Data on disk is missing or unusable; the message names the path and how to fix it."""


@dataclass(frozen=True)
class VTABTask:
    """A VTAB-1k task: its :class:`TaskInfo` and its loader, ``torchvision:<Class>`` or
    ``imagefolder``."""

    info: TaskInfo
    loader: str

    @property
    def torchvision_class(self) -> str | None:
        kind, _, cls = self.loader.partition(":")
        return cls if kind == "torchvision" else None


def _folder_note(why: str, classes: str) -> str:
    """The note of an ImageFolder task (``<task>`` is replaced by the task's name)."""
    return (f"No torchvision loader ({why}): prepare an ImageFolder at "
            f"<data_root>/vtab/<task>/{{train,test}}/<class>/*.png|jpg (optional val/). "
            f"Classes: {classes}")


_TASKS = [
    # ---- natural
    VTABTask(TaskInfo(
        "caltech101", "natural", 101, "Caltech-101 object categories.",
        note="Fixed split as in VTAB: 30 random images per class form the training split, the "
             "rest is test (train800/val200 from the training split). torchvision drops the "
             "BACKGROUND_Google folder: 101 classes where VTAB's TFDS version has 102.",
        test_size=5647), "torchvision:Caltech101"),
    VTABTask(TaskInfo(
        "cifar100", "natural", 100, "CIFAR-100 fine labels, 32-px photographs.",
        note="train800/val200 from the 50,000 training images; test is the official 10,000.",
        test_size=10000), "torchvision:CIFAR100"),
    VTABTask(TaskInfo(
        "dtd", "natural", 47, "Describable Textures Dataset, 47 texture attributes.",
        note="Partition 1: train800 from train1, val200 from val1, test is test1.",
        test_size=1880), "torchvision:DTD"),
    VTABTask(TaskInfo(
        "oxford_flowers102", "natural", 102, "Oxford 102 Flowers species.",
        note="train800 from the official train split (1,020), val200 from the official val "
             "split, test is the official test split.",
        test_size=6149), "torchvision:Flowers102"),
    VTABTask(TaskInfo(
        "oxford_iiit_pet", "natural", 37, "Oxford-IIIT Pet breeds (cats and dogs).",
        note="train800/val200 disjoint from the official trainval split; test is the official "
             "test split.", test_size=3669), "torchvision:OxfordIIITPet"),
    VTABTask(TaskInfo(
        "sun397", "natural", 397, "SUN397 scene categories.",
        note="torchvision has no splits: a fixed random 20% of each class is test, the other "
             "80% the training split (train800/val200 from it). Test size is about 21,750.",
        test_size=21750), "torchvision:SUN397"),
    VTABTask(TaskInfo(
        "svhn", "natural", 10, "Street View House Numbers, cropped digits 0-9.",
        note="train800/val200 from the official train split; test is the official test split.",
        test_size=26032), "torchvision:SVHN"),
    # ---- specialized
    VTABTask(TaskInfo(
        "patch_camelyon", "specialized", 2,
        "PatchCamelyon: metastatic tissue (1) or not (0) in a 96-px lymph node patch.",
        note="train800 from the official train split, val200 from the official valid split, "
             "test is the official test split. Needs h5py.",
        test_size=32768), "torchvision:PCAM"),
    VTABTask(TaskInfo(
        "eurosat", "specialized", 10, "EuroSAT RGB land-use classes of Sentinel-2 tiles.",
        note="torchvision has no splits: a fixed random 20% of each class is test, the other "
             "80% the training split (train800/val200 from it).",
        test_size=5400), "torchvision:EuroSAT"),
    VTABTask(TaskInfo(
        "resisc45", "specialized", 45, "RESISC45 remote-sensing scene classes.",
        note=_folder_note("torchvision 0.29 has no RESISC45",
                          "the 45 scene folders; VTAB splits the 31,500 images 60/20/20 into "
                          "train/val/test."),
        test_size=6300), "imagefolder"),
    VTABTask(TaskInfo(
        "diabetic_retinopathy", "specialized", 5,
        "Diabetic retinopathy severity grade 0-4 of a fundus photograph.",
        note=_folder_note("the Kaggle data needs a login and torchvision has no loader",
                          "0-4, the severity grade (VTAB uses TFDS's btgraham-300 "
                          "preprocessing)."),
        test_size=42670), "imagefolder"),
    # ---- structured
    VTABTask(TaskInfo(
        "clevr_count", "structured", 8, "Number of objects in a CLEVR scene, 3-10 (label = "
        "count - 3).",
        note="CLEVR's test split has no labels: as in VTAB, the official val split is the test "
             "split; train800/val200 from the train split.",
        test_size=15000), "torchvision:CLEVRClassification"),
    VTABTask(TaskInfo(
        "clevr_distance", "structured", 6, "Depth of the closest object of a CLEVR scene, 6 bins.",
        note=_folder_note("torchvision's CLEVRClassification gives only the object count",
                          "6 bins of the smallest pixel_coords[2] of the scene's objects (from "
                          "CLEVR_*_scenes.json) with edges 8.0, 8.5, 9.0, 9.5, 10.0, as VTAB; "
                          "test from CLEVR's val split."),
        test_size=15000), "imagefolder"),
    VTABTask(TaskInfo(
        "dmlab", "structured", 6, "DeepMind Lab frames: distance (close, far, very far) to "
        "the object in view and whether its reward is positive or negative, 6 classes.",
        note=_folder_note("torchvision 0.29 has no DMLab",
                          "TFDS dmlab's 6 labels; VTAB tests on its test split."),
        test_size=22735), "imagefolder"),
    VTABTask(TaskInfo(
        "dsprites_location", "structured", 16, "x-position of a dSprites sprite, 16 bins.",
        note=_folder_note("torchvision 0.29 has no dSprites",
                          "16 bins of the 32 x-positions (label_x_position // 2)."),
        test_size=73728), "imagefolder"),
    VTABTask(TaskInfo(
        "dsprites_orientation", "structured", 16, "Orientation of a dSprites sprite, 16 bins.",
        note=_folder_note("torchvision 0.29 has no dSprites",
                          "16 bins of the 40 orientations (label_orientation * 16 // 40)."),
        test_size=73728), "imagefolder"),
    VTABTask(TaskInfo(
        "kitti_distance", "structured", 4, "Distance to the closest vehicle in a KITTI frame, 4 "
        "classes.",
        note=_folder_note("torchvision's Kitti gives detection boxes, not VTAB's distance "
                          "classes", "VTAB's closest-vehicle-distance: 4 classes."),
        test_size=711), "imagefolder"),
    VTABTask(TaskInfo(
        "smallnorb_azimuth", "structured", 18, "Azimuth of a smallNORB toy, 18 classes.",
        note=_folder_note("torchvision 0.29 has no smallNORB",
                          "the 18 azimuths; VTAB's test is half of the official test set."),
        test_size=12150), "imagefolder"),
    VTABTask(TaskInfo(
        "smallnorb_elevation", "structured", 9, "Elevation of a smallNORB toy, 9 classes.",
        note=_folder_note("torchvision 0.29 has no smallNORB",
                          "the 9 elevations; VTAB's test is half of the official test set."),
        test_size=12150), "imagefolder"),
]

#: The 19 VTAB-1k tasks by name. ``info.test_size`` is the test size with the full dataset
#: (VTAB's figure for ImageFolder tasks); a loaded :class:`TaskData` carries the actual one.
VTAB1K: dict[str, VTABTask] = {
    t.info.name: dataclasses.replace(t, info=dataclasses.replace(
        t.info, note=t.info.note.replace("<task>", t.info.name))) for t in _TASKS}


def list_vtab_tasks(group: str | None = None) -> list[str]:
    """The VTAB-1k task names (of one group), sorted."""
    if group is not None and group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; groups: {', '.join(GROUPS)}")
    return sorted(n for n, t in VTAB1K.items() if group in (None, t.info.group))


def get_vtab_task(name: str) -> VTABTask:
    if name not in VTAB1K:
        raise UnknownTaskError(name, list_vtab_tasks(), kind="VTAB task")
    return VTAB1K[name]


def get_vtab_info(name: str) -> TaskInfo:
    return get_vtab_task(name).info


def vtab_cache_path(cache_root: PathLike, name: str, image_size: int = 224, seed: int = 0,
                    n_train: int = N_TRAIN, n_val: int = N_VAL) -> pathlib.Path:
    return _cache_file(pathlib.Path(cache_root) / "vtab", name, image_size, seed, n_train, n_val)


def imagefolder_cache_path(cache_root: PathLike, name: str, image_size: int = 224, seed: int = 0,
                           n_train: int = N_TRAIN, n_val: int = N_VAL) -> pathlib.Path:
    return _cache_file(pathlib.Path(cache_root) / "imagefolder", name, image_size, seed, n_train,
                       n_val)


def _cache_file(folder: pathlib.Path, name: str, image_size: int, seed: int, n_train: int,
                n_val: int) -> pathlib.Path:
    sizes = "" if (n_train, n_val) == (N_TRAIN, N_VAL) else f"-{n_train}+{n_val}"
    return folder / f"{name}-{image_size}px-seed{seed}{sizes}.npz"


# ---------------------------------------------------------------- public loaders


def load_vtab_task(name: str, data_root: PathLike, image_size: int = 224, seed: int = 0,
                   download: bool = False, cache_root: PathLike | None = None, *,
                   n_train: int = N_TRAIN, n_val: int = N_VAL) -> TaskData:
    """The VTAB-1k task ``name`` from ``data_root`` (module docstring: layouts, split rules).

    Read from ``<cache_root>/vtab/<name>-<size>px-seed<seed>.npz`` when built before, else built
    and cached. ``download=True`` lets torchvision fetch a missing dataset into ``data_root``
    (never the default); ImageFolder tasks cannot be downloaded. ``n_train``/``n_val`` change the
    800/200 of VTAB-1k (for small data and tests; the cache file name then says so).
    """
    task = get_vtab_task(name)
    _check_sizes(n_train, n_val)
    data_root = pathlib.Path(data_root).expanduser()
    cache_root = data_root / "cache" if cache_root is None else pathlib.Path(cache_root)
    cache = vtab_cache_path(cache_root, name, image_size, seed, n_train, n_val)
    if task.torchvision_class is None:
        return _folder_task(task.info, data_root / "vtab" / name, image_size, seed, cache,
                            n_train, n_val, expect_classes=task.info.num_classes,
                            vtab_root=data_root)
    source = str(data_root.resolve())
    hit = _read_cache(cache, source)
    if hit is not None:
        return _task_data(task.info, image_size, seed, hit[0])
    if not data_root.is_dir():
        if not download:
            raise DatasetError(
                f"VTAB data root {data_root} does not exist: create it and place the {name} "
                f"files there ({_SPECS[name].layout}), or {_DOWNLOAD_HINT}")
        data_root.mkdir(parents=True, exist_ok=True)
    spec = _SPECS[name]
    if not download:
        missing = [data_root / p for p in spec.required if not (data_root / p).exists()]
        if missing:
            raise DatasetError(
                f"{name}: dataset files not found under {data_root}: expected "
                f"{', '.join(map(str, missing))} ({spec.layout}); {_DOWNLOAD_HINT}, or place "
                f"the files there")
    train, val, test = spec.open(data_root, download)
    splits = _vtab1k_splits(task.info, _rng(seed, "vtab", name), train, val, test, image_size,
                            n_train, n_val)
    _write_cache(cache, splits, source, task.info.num_classes)
    return _task_data(task.info, image_size, seed, splits)


def load_imagefolder_task(name: str, path: PathLike, group: str, image_size: int = 224,
                          seed: int = 0, cache_root: PathLike | None = None, *,
                          n_train: int = N_TRAIN, n_val: int = N_VAL,
                          description: str = "") -> TaskData:
    """A task from an ImageFolder: ``path/train/<class>/*.png|jpg``, ``path/test/<class>/...``
    and optionally ``path/val/<class>/...``.

    Classes are the folder names of ``train/``, sorted (numerically when all are integers);
    ``test/`` and ``val/`` may lack a class but not add one. ``train800`` from ``train/`` and
    ``val200`` from ``val/`` when present, else both (disjoint) from ``train/``; ``test`` is all of
    ``test/``. Cached as ``<cache_root>/imagefolder/<name>-<size>px-seed<seed>.npz``
    (``cache_root`` defaults to ``path/cache``).
    """
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; groups: {', '.join(GROUPS)}")
    _check_sizes(n_train, n_val)
    path = pathlib.Path(path).expanduser()
    cache_root = path / "cache" if cache_root is None else pathlib.Path(cache_root)
    info = TaskInfo(name, group, 0, description or f"ImageFolder task at {path}.")
    return _folder_task(info, path, image_size, seed,
                        imagefolder_cache_path(cache_root, name, image_size, seed, n_train, n_val),
                        n_train, n_val)


def _check_sizes(n_train: int, n_val: int) -> None:
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be positive, got {n_train} and {n_val}")


def _task_data(info: TaskInfo, image_size: int, seed: int,
               splits: dict[str, tuple[Array, Array]], num_classes: int | None = None) -> TaskData:
    info = dataclasses.replace(info, test_size=len(splits["test"][1]),
                               num_classes=num_classes or info.num_classes)
    return TaskData(info, image_size, seed, splits)


# ---------------------------------------------------------------- cache


def _write_cache(path: pathlib.Path, splits: dict[str, tuple[Array, Array]], source: str,
                 num_classes: int) -> None:
    arrays = {f"{s}_{xy}": a for s, pair in splits.items() for xy, a in zip("xy", pair)}
    _save(path, {**arrays, "vtab_version": VTAB_CACHE_VERSION, "source": np.array(source),
                 "num_classes": num_classes})


def _read_cache(path: pathlib.Path, source: str,
                ) -> tuple[dict[str, tuple[Array, Array]], int] | None:
    """The cached splits and class count, or None when missing, of another version or built
    from another data source."""
    arrays = _load(path)
    if arrays is None:
        return None
    try:
        if (int(arrays["vtab_version"]) != VTAB_CACHE_VERSION
                or str(arrays["source"]) != source):
            return None
        return ({s: (arrays[f"{s}_x"], arrays[f"{s}_y"]) for s in SPLITS},
                int(arrays["num_classes"]))
    except KeyError:
        return None


# ---------------------------------------------------------------- split drawing and decoding


@dataclass
class _Part:
    """One split of a dataset: every example's label, how to get example ``i`` as a PIL image,
    and where it lives (for messages). ``read`` is an optional batch reader (sorted indices)."""

    where: str
    labels: Array
    get: Callable[[int], Any]
    read: Callable[[Array, int], Array] | None = None

    def subset(self, index: Array, where: str | None = None) -> "_Part":
        index = np.asarray(index, np.int64)
        return _Part(where or self.where, self.labels[index], lambda i: self.get(int(index[i])))

    def __len__(self) -> int:
        return len(self.labels)


def _vtab1k_splits(info: TaskInfo, rng: np.random.Generator, train: _Part, val: _Part | None,
                   test: _Part, size: int, n_train: int, n_val: int,
                   ) -> dict[str, tuple[Array, Array]]:
    """Check the labels, draw train800/val200 indices, then decode just those (and all of test)."""
    c = info.num_classes
    for part in (train, val, test):
        if part is None:
            continue
        bad = part.labels[(part.labels < 0) | (part.labels >= c)]
        if len(bad):
            raise DatasetError(f"{info.name}: label {int(bad[0])} in {part.where} is outside "
                               f"0..{c - 1}; the data does not match the task")
    known = set(np.unique(train.labels).tolist())
    for part in (val, test):
        if part is not None and not set(np.unique(part.labels).tolist()) <= known:
            extra = sorted(set(np.unique(part.labels).tolist()) - known)
            raise DatasetError(f"{info.name}: classes {extra} of {part.where} have no example "
                               f"in the training split {train.where}")
    if val is None:
        need = n_train + n_val
        if len(train) < need:
            raise DatasetError(
                f"{info.name}: {train.where} has {len(train)} training examples; VTAB-1k "
                f"takes {n_train} train + {n_val} val = {need} from it when there is no "
                f"validation split")
        order = rng.permutation(len(train))
        tr, va, val = order[:n_train], order[n_train:need], train
    else:
        for part, n, what in ((train, n_train, "train"), (val, n_val, "val")):
            if len(part) < n:
                raise DatasetError(f"{info.name}: {part.where} has {len(part)} examples; "
                                   f"VTAB-1k takes {n} {what} examples from it")
        tr = rng.permutation(len(train))[:n_train]
        va = rng.permutation(len(val))[:n_val]
    return {"train800": (_decode(train, tr, size), train.labels[tr].astype(np.int64)),
            "val200": (_decode(val, va, size), val.labels[va].astype(np.int64)),
            "test": (_decode(test, np.arange(len(test)), size), test.labels.astype(np.int64))}


def _decode(part: _Part, index: Array, size: int) -> Array:
    """Images ``index`` of ``part`` as uint8 (N, size, size, 3), in the order of ``index``
    (read in increasing index order)."""
    index = np.asarray(index, np.int64)
    order = np.argsort(index, kind="stable")
    out = np.empty((len(index), size, size, 3), np.uint8)
    if part.read is not None:
        out[order] = part.read(index[order], size)
        return out
    for k in order:
        i = int(index[k])
        try:
            img = part.get(i)
            out[k] = _to_array(img, size)
        except OSError as e:  # PIL.UnidentifiedImageError, truncated files, unreadable files
            raise DatasetError(f"cannot decode example {i} of {part.where}: {e}") from e
    return out


def _to_array(img: Any, size: int) -> Array:
    """A PIL image as RGB uint8 (size, size, 3): resized directly, bilinear, no crop (as VTAB)."""
    from PIL import Image

    with img:
        return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


def _class_split(task: str, labels: Array, n_train: Callable[[int], int],
                 keys: list[str] | None = None) -> tuple[Array, Array]:
    """A fixed (``SPLIT_SEED``, whatever the task seed) per-class split: ``n_train(class size)``
    random examples of each class to train, the rest to test. Index arrays ordered by ``keys``
    (file paths; default the index), so the split and the order of the training split, hence
    train800/val200, do not depend on the order in which the dataset listed its files."""
    rank = np.arange(len(labels)) if keys is None else np.argsort(np.argsort(keys, kind="stable"))
    rng = _rng(SPLIT_SEED, "vtab-split", task)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = rng.permutation(idx[np.argsort(rank[idx])])
        k = n_train(len(idx))
        train.append(idx[:k])
        test.append(idx[k:])
    train, test = np.concatenate(train), np.concatenate(test)
    return train[np.argsort(rank[train])], test[np.argsort(rank[test])]


# ---------------------------------------------------------------- ImageFolder


def _folder_task(info: TaskInfo, path: pathlib.Path, image_size: int, seed: int,
                 cache: pathlib.Path, n_train: int, n_val: int, expect_classes: int | None = None,
                 vtab_root: pathlib.Path | None = None) -> TaskData:
    source = str(path.resolve())
    hit = _read_cache(cache, source)
    if hit is not None:
        return _task_data(info, image_size, seed, hit[0], hit[1])
    layout = f"{path}/{{train,test}}/<class>/*.png|jpg (optional {path}/val/<class>/...)"
    if vtab_root is not None and not vtab_root.is_dir():
        raise DatasetError(f"VTAB data root {vtab_root} does not exist: create it and prepare "
                           f"the ImageFolder {layout}")
    if not path.is_dir():
        why = (f"{info.name} has no torchvision loader, so `download: true` cannot fetch it; "
               if vtab_root is not None else "")
        raise DatasetError(f"ImageFolder {path} not found: {why}prepare {layout}")
    for split in ("train", "test"):
        if not (path / split).is_dir():
            raise DatasetError(f"ImageFolder {path} has no {split}/ folder: prepare {layout}")
    classes, train_files = _scan_split(path / "train")
    if expect_classes is not None and len(classes) != expect_classes:
        raise DatasetError(f"{info.name}: {path / 'train'} has {len(classes)} class folders; "
                           f"the task has {expect_classes} classes ({info.note})")
    to_label = {c: i for i, c in enumerate(classes)}
    parts = {"train": _files_part(path / "train", train_files, to_label)}
    for split in ("val", "test"):
        if split == "val" and not (path / "val").is_dir():
            parts["val"] = None
            continue
        names, files = _scan_split(path / split)
        extra = [n for n in names if n not in to_label]
        if extra:
            raise DatasetError(f"class folder {path / split / extra[0]} has no counterpart in "
                               f"{path / 'train'}: every {split} class must be a training class")
        parts[split] = _files_part(path / split, files, to_label)
    info = dataclasses.replace(info, num_classes=len(classes))
    splits = _vtab1k_splits(info, _rng(seed, "vtab", info.name), parts["train"], parts["val"],
                            parts["test"], image_size, n_train, n_val)
    _write_cache(cache, splits, source, len(classes))
    return _task_data(info, image_size, seed, splits)


def _class_order(names: list[str]) -> list[str]:
    if names and all(n.isdecimal() for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def _scan_split(folder: pathlib.Path) -> tuple[list[str], dict[str, list[pathlib.Path]]]:
    """Class folders of ``folder`` (sorted) and each one's image files (sorted, recursive)."""
    names = _class_order([p.name for p in folder.iterdir()
                          if p.is_dir() and not p.name.startswith(".")])
    if not names:
        raise DatasetError(f"{folder} has no class folders: expected {folder}/<class>/*.png|jpg")
    files = {}
    for name in names:
        found = sorted(p for p in (folder / name).rglob("*")
                       if p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")
                       and p.is_file())
        if not found:
            raise DatasetError(f"class folder {folder / name} has no images "
                               f"({', '.join(IMG_EXTENSIONS)}): add images or remove the folder")
        files[name] = found
    return names, files


def _files_part(folder: pathlib.Path, files: dict[str, list[pathlib.Path]],
                to_label: dict[str, int]) -> _Part:
    from PIL import Image

    paths = [p for name in files for p in files[name]]
    labels = np.array([to_label[name] for name in files for _ in files[name]], np.int64)

    def get(i: int):
        try:
            return Image.open(paths[i])
        except OSError as e:
            raise OSError(f"{paths[i]}: {e}") from e

    return _Part(str(folder), labels, get)


# ---------------------------------------------------------------- torchvision datasets


@dataclass(frozen=True)
class _Spec:
    """How one torchvision-backed task opens its splits: ``open(data_root, download)`` returns
    ``(train, val or None, test)``; ``required`` are paths under the data root that must exist
    when not downloading; ``layout`` says where the files go."""

    open: Callable[[pathlib.Path, bool], tuple[_Part, _Part | None, _Part]]
    required: tuple[str, ...]
    layout: str


def _construct(task: str, cls: type, root: pathlib.Path, download: bool, layout: str, **kw):
    """``cls(root, download=download, **kw)``, its errors as :class:`DatasetError`."""
    try:
        return cls(str(root), download=download, **kw)
    except (RuntimeError, OSError, ValueError, KeyError, IndexError, EOFError, TypeError,
            pickle.UnpicklingError, json.JSONDecodeError, zipfile.BadZipFile) as e:
        hint = "" if download else f"; {_DOWNLOAD_HINT}"
        raise DatasetError(f"{task}: torchvision.datasets.{cls.__name__} could not read the files "
                           f"under {root} ({layout}): {type(e).__name__}: {e}{hint}") from e


def _item_path(ds: Any, i: int) -> str:
    for attr in ("_image_files", "_images"):
        files = getattr(ds, attr, None)
        if files is not None:
            return str(files[i])
    samples = getattr(ds, "samples", None)
    return str(samples[i][0]) if samples is not None else f"item {i} of {ds.root}"


def _tv_part(ds: Any, labels: Any, where: PathLike) -> _Part:
    def get(i: int):
        try:
            return ds[i][0]
        except OSError as e:
            raise OSError(f"{_item_path(ds, i)}: {e}") from e
    return _Part(str(where), np.asarray(labels, np.int64).reshape(-1), get)


@functools.cache
def _tv_class(name: str) -> type:
    """torchvision's dataset class, or for CIFAR100 / SVHN / Flowers102 a subclass that checks
    the presence of the extracted files where torchvision checks their md5 at every load (its
    downloads still verify the md5 of what they fetch; module docstring)."""
    import torchvision.datasets as tvd

    base = getattr(tvd, name)
    if name == "CIFAR100":
        # with md5 None, torchvision's check_integrity checks that the file exists
        return type("CIFAR100Files", (base,), {
            "__doc__": "CIFAR100 that checks the presence, not the md5, of train/test/meta.",
            "train_list": [[f, None] for f, _ in base.train_list],
            "test_list": [[f, None] for f, _ in base.test_list],
            "meta": {**base.meta, "md5": None}})
    if name == "SVHN":
        def svhn_present(self) -> bool:
            return os.path.isfile(os.path.join(self.root, self.filename))
        return type("SVHNFiles", (base,), {
            "__doc__": "SVHN that checks the presence, not the md5, of <split>_32x32.mat.",
            "_check_integrity": svhn_present})
    if name == "Flowers102":
        def flowers_present(self) -> bool:
            return self._images_folder.is_dir() and all(
                (self._base_folder / self._file_dict[k][0]).is_file() for k in ("label", "setid"))
        return type("Flowers102Files", (base,), {
            "__doc__": "Flowers102 that checks the presence, not the md5, of the .mat files.",
            "_check_integrity": flowers_present})
    return base


def _official(task: str, cls_name: str, layout: str, where: Callable[[pathlib.Path, str], Any],
              labels: Callable[[Any], Any], splits: tuple[str, str | None, str],
              split_kw: str = "split", **kw):
    """A spec opener for datasets with official splits: one instance per split."""
    def open_(root: pathlib.Path, download: bool):
        cls = _tv_class(cls_name)
        out = []
        for s in splits:
            if s is None:
                out.append(None)
                continue
            ds = _construct(task, cls, root, download, layout, **{split_kw: s}, **kw)
            out.append(_tv_part(ds, labels(ds), where(root, s)))
        return tuple(out)
    return open_


def _single(task: str, cls_name: str, layout: str, where: Callable[[pathlib.Path], Any],
            labels: Callable[[Any], Any], n_train: Callable[[int], int],
            keys: Callable[[Any], list[str]] | None = None):
    """A spec opener for datasets without splits: a fixed per-class train/test split (``keys``:
    the examples' file names where the dataset's own order is not deterministic)."""
    def open_(root: pathlib.Path, download: bool):
        ds = _construct(task, _tv_class(cls_name), root, download, layout)
        whole = _tv_part(ds, labels(ds), where(root))
        train, test = _class_split(task, whole.labels, n_train,
                                   None if keys is None else keys(ds))
        return (whole.subset(train, f"{whole.where} (training split)"), None,
                whole.subset(test, f"{whole.where} (test split)"))
    return open_


def _dtd(root: pathlib.Path, download: bool):
    """DTD's label indices are per split (sorted classes of that split): map them by name onto
    the training split's classes."""
    layout = _LAYOUT["dtd"]
    cls = _tv_class("DTD")
    sets = {s: _construct("dtd", cls, root, download, layout, split=s, partition=1)
            for s in ("train", "val", "test")}
    classes = sets["train"].classes
    labels_dir = root / "dtd" / "dtd" / "labels"
    parts = []
    for s, ds in sets.items():
        missing = sorted(set(ds.classes) - set(classes))
        if missing:
            raise DatasetError(f"dtd: class {missing[0]!r} of {labels_dir / f'{s}1.txt'} has no "
                               f"example in {labels_dir / 'train1.txt'}")
        index = {c: classes.index(c) for c in ds.classes}
        parts.append(_tv_part(ds, [index[ds.classes[y]] for y in ds._labels],
                              labels_dir / f"{s}1.txt"))
    return tuple(parts)


_PCAM_FILES = {s: (f"camelyonpatch_level_2_split_{f}_x.h5", f"camelyonpatch_level_2_split_{f}_y.h5")
               for s, f in (("train", "train"), ("val", "valid"), ("test", "test"))}


def _pcam(root: pathlib.Path, download: bool):
    """torchvision's PCAM opens both HDF5 files for every item and has no label list: read the
    labels once, and images in chunks, from the files it checked (same decoding:
    ``Image.fromarray(x[i]).convert("RGB")``)."""
    layout = _LAYOUT["patch_camelyon"]
    cls = _tv_class("PCAM")
    parts = []
    for s in ("train", "val", "test"):
        ds = _construct("patch_camelyon", cls, root, download, layout, split=s)
        x_file, y_file = (ds._base_folder / f for f in _PCAM_FILES[s])
        try:
            with ds.h5py.File(y_file, "r") as f:
                y = np.asarray(f["y"][:]).reshape(-1)
            with ds.h5py.File(x_file, "r") as f:
                n = f["x"].shape[0]
        except (OSError, KeyError) as e:
            raise DatasetError(f"patch_camelyon: cannot read {y_file} / {x_file}: {e}") from e
        if len(y) != n:
            raise DatasetError(f"patch_camelyon: {x_file} has {n} images but {y_file} "
                               f"{len(y)} labels")
        part = _tv_part(ds, y, x_file)
        part.read = functools.partial(_read_h5_images, ds.h5py, x_file)
        parts.append(part)
    return tuple(parts)


def _read_h5_images(h5py: Any, path: pathlib.Path, index: Array, size: int,
                    chunk: int = 1024) -> Array:
    from PIL import Image

    out = np.empty((len(index), size, size, 3), np.uint8)
    with h5py.File(path, "r") as f:
        x = f["x"]
        for start in range(0, len(index), chunk):
            idx = index[start:start + chunk]
            if idx[-1] - idx[0] + 1 == len(idx):
                block = x[int(idx[0]):int(idx[-1]) + 1]
            else:
                block = x[idx.tolist()]  # increasing indices, as h5py requires
            for k, a in enumerate(block):
                out[start + k] = _to_array(Image.fromarray(a), size)
    return out


def _clevr(root: pathlib.Path, download: bool):
    """CLEVR: train split for train800/val200, the val split as test; labels count - 3."""
    layout = _LAYOUT["clevr_count"]
    cls = _tv_class("CLEVRClassification")
    base = root / "clevr" / "CLEVR_v1.0"
    parts = []
    for s in ("train", "val"):
        ds = _construct("clevr_count", cls, root, download, layout, split=s)
        counts = np.asarray(ds._labels, np.int64)
        scenes = base / "scenes" / f"CLEVR_{s}_scenes.json"
        bad = counts[(counts < 3) | (counts > 10)]
        if len(bad):
            raise DatasetError(f"clevr_count: a scene of {scenes} has {int(bad[0])} objects; "
                               f"VTAB's clevr_count has 3-10")
        parts.append(_tv_part(ds, counts - 3, base / "images" / s))
    return parts[0], None, parts[1]


_LAYOUT = {
    "caltech101": "<data_root>/caltech101/101_ObjectCategories/<class>/image_0001.jpg",
    "cifar100": "<data_root>/cifar-100-python/{train,test,meta}",
    "dtd": "<data_root>/dtd/dtd/images/<class>/*.jpg, <data_root>/dtd/dtd/labels/"
           "{train1,val1,test1}.txt",
    "oxford_flowers102": "<data_root>/flowers-102/jpg/image_00001.jpg, imagelabels.mat, "
                         "setid.mat",
    "oxford_iiit_pet": "<data_root>/oxford-iiit-pet/images/*.jpg, <data_root>/oxford-iiit-pet/"
                       "annotations/{trainval,test}.txt",
    "sun397": "<data_root>/SUN397/ClassName.txt, <data_root>/SUN397/a/abbey/sun_*.jpg",
    "svhn": "<data_root>/{train,test}_32x32.mat",
    "patch_camelyon": "<data_root>/pcam/camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5",
    "eurosat": "<data_root>/eurosat/2750/<class>/*.jpg",
    "clevr_count": "<data_root>/clevr/CLEVR_v1.0/images/{train,val}/*.png, <data_root>/clevr/"
                   "CLEVR_v1.0/scenes/CLEVR_{train,val}_scenes.json",
}

_SPECS: dict[str, _Spec] = {
    "caltech101": _Spec(
        _single("caltech101", "Caltech101", _LAYOUT["caltech101"],
                lambda r: r / "caltech101" / "101_ObjectCategories", lambda ds: ds.y,
                lambda n: min(n, CALTECH_TRAIN_PER_CLASS)),
        ("caltech101/101_ObjectCategories",), _LAYOUT["caltech101"]),
    "cifar100": _Spec(
        _official("cifar100", "CIFAR100", _LAYOUT["cifar100"],
                  lambda r, s: r / "cifar-100-python" / ("train" if s else "test"),
                  lambda ds: ds.targets, (True, None, False), split_kw="train"),
        tuple(f"cifar-100-python/{f}" for f in ("train", "test", "meta")), _LAYOUT["cifar100"]),
    "dtd": _Spec(_dtd, ("dtd/dtd/images",) + tuple(f"dtd/dtd/labels/{s}1.txt"
                                                   for s in ("train", "val", "test")),
                 _LAYOUT["dtd"]),
    "oxford_flowers102": _Spec(
        _official("oxford_flowers102", "Flowers102", _LAYOUT["oxford_flowers102"],
                  lambda r, s: r / "flowers-102" / f"setid.mat ({s})", lambda ds: ds._labels,
                  ("train", "val", "test")),
        ("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"),
        _LAYOUT["oxford_flowers102"]),
    "oxford_iiit_pet": _Spec(
        _official("oxford_iiit_pet", "OxfordIIITPet", _LAYOUT["oxford_iiit_pet"],
                  lambda r, s: r / "oxford-iiit-pet" / "annotations" / f"{s}.txt",
                  lambda ds: ds._labels, ("trainval", None, "test")),
        ("oxford-iiit-pet/images", "oxford-iiit-pet/annotations/trainval.txt",
         "oxford-iiit-pet/annotations/test.txt"), _LAYOUT["oxford_iiit_pet"]),
    "sun397": _Spec(
        _single("sun397", "SUN397", _LAYOUT["sun397"], lambda r: r / "SUN397",
                lambda ds: ds._labels, lambda n: n - round(TEST_FRACTION * n),
                # torchvision lists SUN397 with rglob, in file-system order
                keys=lambda ds: [p.relative_to(ds._data_dir).as_posix() for p in ds._image_files]),
        ("SUN397/ClassName.txt",), _LAYOUT["sun397"]),
    "svhn": _Spec(
        _official("svhn", "SVHN", _LAYOUT["svhn"], lambda r, s: r / f"{s}_32x32.mat",
                  lambda ds: ds.labels, ("train", None, "test")),
        ("train_32x32.mat", "test_32x32.mat"), _LAYOUT["svhn"]),
    "patch_camelyon": _Spec(
        _pcam, tuple(f"pcam/{f}" for pair in _PCAM_FILES.values() for f in pair),
        _LAYOUT["patch_camelyon"]),
    "eurosat": _Spec(
        _single("eurosat", "EuroSAT", _LAYOUT["eurosat"], lambda r: r / "eurosat" / "2750",
                lambda ds: ds.targets, lambda n: n - round(TEST_FRACTION * n)),
        ("eurosat/2750",), _LAYOUT["eurosat"]),
    "clevr_count": _Spec(
        _clevr, tuple(f"clevr/CLEVR_v1.0/{p}" for p in (
            "images/train", "images/val", "scenes/CLEVR_train_scenes.json",
            "scenes/CLEVR_val_scenes.json")), _LAYOUT["clevr_count"]),
}

assert set(_SPECS) == {n for n, t in VTAB1K.items() if t.torchvision_class}
