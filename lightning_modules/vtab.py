"""VTAB-1k tasks on real data: torchvision's datasets where it has them, ImageFolders for the rest.

The offline suite (:mod:`lightning_modules.offline`) is made of bundled and rendered data; this
module registers the 19 tasks of VTAB-1k (Zhai et al. 2019, "A Large-scale Study of
Representation Learning with the Visual Task Adaptation Benchmark") as ``vtab:<name>`` and loads
them from files on disk into the same :class:`~lightning_modules.task_data.TaskData` (splits
``train800``, ``val200``, ``test``; images uint8 ``(N, S, S, 3)``, labels int64 ``0..C-1``), so
that VTAB tasks go through the same code paths as the offline ones. Nothing is ever downloaded
unless the caller passes ``download=True`` (a sweep's ``download: true``).

Each task is one :class:`VTABTask`, registered where it is defined below with its info (group,
classes, a note on its splits), its loader (``torchvision:<Class>`` or ``imagefolder``), the
files it needs and its on-disk layout; ``whichmodel list tasks`` prints them.

**Split rules** (:meth:`VTABTask.load`). ``train800`` and ``val200`` are drawn without replacement
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

**On-disk layouts**: each task's ``layout`` below (``download=True`` makes torchvision fetch the
torchvision-backed ones into ``data_root``). ``imagefolder`` tasks are prepared as
``<data_root>/vtab/<task>/{train,test}/<class>/*.png|jpg`` with an optional ``val/``; the number of
class folders must equal the task's number of classes (each task's ``note`` says how VTAB defines
the classes). The same layout, anywhere, makes a user's task
(:class:`~lightning_modules.imagefolder.ImageFolderTask`). torchvision's md5 checks of extracted
files: :mod:`lightning_modules.vtab_torchvision`.

**Cache**: the arrays are cached (atomically) as
``<cache_root>/vtab/<task>-<size>px-seed<seed>.npz`` (``cache_root`` defaults to
``<data_root>/cache``); a cache built from another data root is rebuilt. Delete the cache file
after changing the data in place.

Errors about the data raise :class:`~lightning_modules.task_data.DatasetError` (a ``ValueError``)
naming the path and the fix.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightning_modules.imagefolder import (
    cache_file,
    create_task_data,
    has_cache,
    load_folder,
    read_cache,
    scan_folder,
    vtab1k_splits,
    write_cache,
)
from lightning_modules.task_data import (
    N_TRAIN,
    N_VAL,
    DatasetError,
    PathLike,
    Task,
    TaskData,
    TaskInfo,
    check_sizes,
    register_task,
    task_rng,
)
from lightning_modules.vtab_torchvision import (
    DOWNLOAD_HINT,
    PCAM_FILES,
    Splits,
    official,
    open_clevr,
    open_dtd,
    open_pcam,
    single,
)

#: Images per class in Caltech-101's training split (VTAB's rule); the rest of a class is test.
CALTECH_TRAIN_PER_CLASS = 30
#: Fraction of each class that is test where torchvision has no splits (SUN397, EuroSAT).
TEST_FRACTION = 0.2
PREFIX = "vtab:"

Opener = Callable[[Any, pathlib.Path, bool], Splits]


@dataclass(frozen=True)
class VTABTask(Task):
    """A VTAB-1k task. ``info.test_size`` is the test size with the full dataset (VTAB's figure
    for ImageFolder tasks); a loaded :class:`TaskData` carries the actual one. ``opener``
    (:mod:`lightning_modules.vtab_torchvision`) opens the ``torchvision_class`` dataset;
    ``required`` are the paths under the data root it needs; no opener: an ImageFolder."""

    info: TaskInfo
    layout: str
    torchvision_class: str | None = None
    required: tuple[str, ...] = ()
    opener: Opener | None = None
    kind: str = "vtab"

    @property
    def spec(self) -> str:
        return PREFIX + self.info.name

    @property
    def loader(self) -> str:
        """``torchvision:<Class>`` or ``imagefolder``."""
        return "imagefolder" if self.opener is None else f"torchvision:{self.torchvision_class}"

    @property
    def summary(self) -> str:
        return f"{self.loader}: {self.layout}"

    def load(self, data_root: PathLike, image_size: int = 224, seed: int = 0,
             download: bool = False, n_train: int = N_TRAIN, n_val: int = N_VAL,
             cache_root: PathLike | None = None) -> TaskData:
        """The task from ``data_root`` (module docstring: layouts, split rules).

        Read from ``<cache_root>/vtab/<name>-<size>px-seed<seed>.npz`` when built before, else
        built and cached. ``download=True`` lets torchvision fetch a missing dataset into
        ``data_root`` (never the default); ImageFolder tasks cannot be downloaded.
        ``n_train``/``n_val`` change the 800/200 of VTAB-1k (for small data and tests; the cache
        file name then says so).
        """
        name = self.info.name
        check_sizes(n_train, n_val)
        data_root = pathlib.Path(data_root).expanduser()
        cache_root = data_root / "cache" if cache_root is None else pathlib.Path(cache_root)
        cache = vtab_cache_path(cache_root, name, image_size, seed, n_train, n_val)
        if self.opener is None:
            return load_folder(self.info, data_root / "vtab" / name, image_size, seed, cache,
                               n_train, n_val, expect_classes=self.info.num_classes,
                               vtab_root=data_root)
        source = str(data_root.resolve())
        hit = read_cache(cache, source)
        if hit is not None:
            return create_task_data(self.info, image_size, seed, hit[0])
        self._check_files(data_root, download)
        data_root.mkdir(parents=True, exist_ok=True)  # only missing when downloading
        train, val, test = self.opener(self, data_root, download)
        splits = vtab1k_splits(self.info, task_rng(seed, "vtab", name), train, val, test,
                               image_size, n_train, n_val)
        write_cache(cache, splits, source, self.info.num_classes)
        return create_task_data(self.info, image_size, seed, splits)

    def check(self, data_root: PathLike, download: bool = False) -> None:
        """Fine when a cache of the task built from this data exists (``<data_root>/cache``),
        when the files it needs are there, or (torchvision datasets) when ``download``; else the
        error ``load`` would give."""
        name = self.info.name
        data_root = pathlib.Path(data_root).expanduser()
        caches = data_root / "cache" / "vtab"
        if self.opener is None:
            folder = data_root / "vtab" / name
            if not has_cache(caches, name, str(folder.resolve())):
                scan_folder(self.info, folder, self.info.num_classes, vtab_root=data_root)
        elif not download and not has_cache(caches, name, str(data_root.resolve())):
            self._check_files(data_root, download)

    def _check_files(self, data_root: pathlib.Path, download: bool) -> None:
        name = self.info.name
        if not data_root.is_dir() and not download:
            raise DatasetError(
                f"VTAB data root {data_root} does not exist: create it and place the {name} "
                f"files there ({self.layout}), or {DOWNLOAD_HINT}")
        if not download:
            missing = [data_root / p for p in self.required if not (data_root / p).exists()]
            if missing:
                raise DatasetError(
                    f"{name}: dataset files not found under {data_root}: expected "
                    f"{', '.join(map(str, missing))} ({self.layout}); {DOWNLOAD_HINT}, or place "
                    f"the files there")


def vtab_cache_path(cache_root: PathLike, name: str, image_size: int = 224, seed: int = 0,
                    n_train: int = N_TRAIN, n_val: int = N_VAL) -> pathlib.Path:
    return cache_file(pathlib.Path(cache_root) / "vtab", name, image_size, seed, n_train, n_val)


def _torchvision(info: TaskInfo, torchvision_class: str, layout: str, required: tuple[str, ...],
                 opener: Opener) -> VTABTask:
    return register_task(VTABTask(info, layout, torchvision_class, required, opener))


def _imagefolder(info: TaskInfo, why: str, classes: str) -> VTABTask:
    """A task without a torchvision loader: its note says why and how VTAB defines the classes."""
    layout = f"<data_root>/vtab/{info.name}/{{train,test}}/<class>/*.png|jpg (optional val/)"
    note = f"No torchvision loader ({why}): prepare an ImageFolder at {layout}. Classes: {classes}"
    return register_task(VTABTask(dataclasses.replace(info, note=note), layout))


# ---------------------------------------------------------------- natural

_torchvision(
    TaskInfo("caltech101", "natural", 101, "Caltech-101 object categories.",
             note="Fixed split as in VTAB: 30 random images per class form the training split, "
                  "the rest is test (train800/val200 from the training split). torchvision "
                  "drops the BACKGROUND_Google folder: 101 classes where VTAB's TFDS version has "
                  "102.", test_size=5647),
    "Caltech101", "<data_root>/caltech101/101_ObjectCategories/<class>/image_0001.jpg",
    ("caltech101/101_ObjectCategories",),
    single(lambda r: r / "caltech101" / "101_ObjectCategories", lambda ds: ds.y,
           lambda n: min(n, CALTECH_TRAIN_PER_CLASS)))

_torchvision(
    TaskInfo("cifar100", "natural", 100, "CIFAR-100 fine labels, 32-px photographs.",
             note="train800/val200 from the 50,000 training images; test is the official "
                  "10,000.", test_size=10000),
    "CIFAR100", "<data_root>/cifar-100-python/{train,test,meta}",
    tuple(f"cifar-100-python/{f}" for f in ("train", "test", "meta")),
    official(lambda r, s: r / "cifar-100-python" / ("train" if s else "test"),
             lambda ds: ds.targets, (True, None, False), split_kw="train"))

_torchvision(
    TaskInfo("dtd", "natural", 47, "Describable Textures Dataset, 47 texture attributes.",
             note="Partition 1: train800 from train1, val200 from val1, test is test1.",
             test_size=1880),
    "DTD", "<data_root>/dtd/dtd/images/<class>/*.jpg, <data_root>/dtd/dtd/labels/"
           "{train1,val1,test1}.txt",
    ("dtd/dtd/images",) + tuple(f"dtd/dtd/labels/{s}1.txt" for s in ("train", "val", "test")),
    open_dtd)

_torchvision(
    TaskInfo("oxford_flowers102", "natural", 102, "Oxford 102 Flowers species.",
             note="train800 from the official train split (1,020), val200 from the official val "
                  "split, test is the official test split.", test_size=6149),
    "Flowers102", "<data_root>/flowers-102/jpg/image_00001.jpg, imagelabels.mat, setid.mat",
    ("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"),
    official(lambda r, s: r / "flowers-102" / f"setid.mat ({s})", lambda ds: ds._labels,
             ("train", "val", "test")))

_torchvision(
    TaskInfo("oxford_iiit_pet", "natural", 37, "Oxford-IIIT Pet breeds (cats and dogs).",
             note="train800/val200 disjoint from the official trainval split; test is the "
                  "official test split.", test_size=3669),
    "OxfordIIITPet", "<data_root>/oxford-iiit-pet/images/*.jpg, <data_root>/oxford-iiit-pet/"
                     "annotations/{trainval,test}.txt",
    ("oxford-iiit-pet/images", "oxford-iiit-pet/annotations/trainval.txt",
     "oxford-iiit-pet/annotations/test.txt"),
    official(lambda r, s: r / "oxford-iiit-pet" / "annotations" / f"{s}.txt",
             lambda ds: ds._labels, ("trainval", None, "test")))

_torchvision(
    TaskInfo("sun397", "natural", 397, "SUN397 scene categories.",
             note="torchvision has no splits: a fixed random 20% of each class is test, the "
                  "other 80% the training split (train800/val200 from it). Test size is about "
                  "21,750.", test_size=21750),
    "SUN397", "<data_root>/SUN397/ClassName.txt, <data_root>/SUN397/a/abbey/sun_*.jpg",
    ("SUN397/ClassName.txt",),
    single(lambda r: r / "SUN397", lambda ds: ds._labels,
           lambda n: n - round(TEST_FRACTION * n),
           # torchvision lists SUN397 with rglob, in file-system order
           keys=lambda ds: [p.relative_to(ds._data_dir).as_posix() for p in ds._image_files]))

_torchvision(
    TaskInfo("svhn", "natural", 10, "Street View House Numbers, cropped digits 0-9.",
             note="train800/val200 from the official train split; test is the official test "
                  "split.", test_size=26032),
    "SVHN", "<data_root>/{train,test}_32x32.mat", ("train_32x32.mat", "test_32x32.mat"),
    official(lambda r, s: r / f"{s}_32x32.mat", lambda ds: ds.labels, ("train", None, "test")))

# ---------------------------------------------------------------- specialized

_torchvision(
    TaskInfo("patch_camelyon", "specialized", 2,
             "PatchCamelyon: metastatic tissue (1) or not (0) in a 96-px lymph node patch.",
             note="train800 from the official train split, val200 from the official valid "
                  "split, test is the official test split. Needs h5py.", test_size=32768),
    "PCAM", "<data_root>/pcam/camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5",
    tuple(f"pcam/{f}" for pair in PCAM_FILES.values() for f in pair), open_pcam)

_torchvision(
    TaskInfo("eurosat", "specialized", 10, "EuroSAT RGB land-use classes of Sentinel-2 tiles.",
             note="torchvision has no splits: a fixed random 20% of each class is test, the "
                  "other 80% the training split (train800/val200 from it).", test_size=5400),
    "EuroSAT", "<data_root>/eurosat/2750/<class>/*.jpg", ("eurosat/2750",),
    single(lambda r: r / "eurosat" / "2750", lambda ds: ds.targets,
           lambda n: n - round(TEST_FRACTION * n)))

_imagefolder(
    TaskInfo("resisc45", "specialized", 45, "RESISC45 remote-sensing scene classes.",
             test_size=6300),
    "torchvision 0.29 has no RESISC45",
    "the 45 scene folders; VTAB splits the 31,500 images 60/20/20 into train/val/test.")

_imagefolder(
    TaskInfo("diabetic_retinopathy", "specialized", 5,
             "Diabetic retinopathy severity grade 0-4 of a fundus photograph.", test_size=42670),
    "the Kaggle data needs a login and torchvision has no loader",
    "0-4, the severity grade (VTAB uses TFDS's btgraham-300 preprocessing).")

# ---------------------------------------------------------------- structured

_torchvision(
    TaskInfo("clevr_count", "structured", 8,
             "Number of objects in a CLEVR scene, 3-10 (label = count - 3).",
             note="CLEVR's test split has no labels: as in VTAB, the official val split is the "
                  "test split; train800/val200 from the train split.", test_size=15000),
    "CLEVRClassification", "<data_root>/clevr/CLEVR_v1.0/images/{train,val}/*.png, "
                           "<data_root>/clevr/CLEVR_v1.0/scenes/CLEVR_{train,val}_scenes.json",
    tuple(f"clevr/CLEVR_v1.0/{p}" for p in ("images/train", "images/val",
                                            "scenes/CLEVR_train_scenes.json",
                                            "scenes/CLEVR_val_scenes.json")),
    open_clevr)

_imagefolder(
    TaskInfo("clevr_distance", "structured", 6,
             "Depth of the closest object of a CLEVR scene, 6 bins.", test_size=15000),
    "torchvision's CLEVRClassification gives only the object count",
    "6 bins of the smallest pixel_coords[2] of the scene's objects (from CLEVR_*_scenes.json) "
    "with edges 8.0, 8.5, 9.0, 9.5, 10.0, as VTAB; test from CLEVR's val split.")

_imagefolder(
    TaskInfo("dmlab", "structured", 6,
             "DeepMind Lab frames: distance (close, far, very far) to the object in view and "
             "whether its reward is positive or negative, 6 classes.", test_size=22735),
    "torchvision 0.29 has no DMLab", "TFDS dmlab's 6 labels; VTAB tests on its test split.")

_imagefolder(
    TaskInfo("dsprites_location", "structured", 16, "x-position of a dSprites sprite, 16 bins.",
             test_size=73728),
    "torchvision 0.29 has no dSprites", "16 bins of the 32 x-positions (label_x_position // 2).")

_imagefolder(
    TaskInfo("dsprites_orientation", "structured", 16,
             "Orientation of a dSprites sprite, 16 bins.", test_size=73728),
    "torchvision 0.29 has no dSprites",
    "16 bins of the 40 orientations (label_orientation * 16 // 40).")

_imagefolder(
    TaskInfo("kitti_distance", "structured", 4,
             "Distance to the closest vehicle in a KITTI frame, 4 classes.", test_size=711),
    "torchvision's Kitti gives detection boxes, not VTAB's distance classes",
    "VTAB's closest-vehicle-distance: 4 classes.")

_imagefolder(
    TaskInfo("smallnorb_azimuth", "structured", 18, "Azimuth of a smallNORB toy, 18 classes.",
             test_size=12150),
    "torchvision 0.29 has no smallNORB",
    "the 18 azimuths; VTAB's test is half of the official test set.")

_imagefolder(
    TaskInfo("smallnorb_elevation", "structured", 9, "Elevation of a smallNORB toy, 9 classes.",
             test_size=12150),
    "torchvision 0.29 has no smallNORB",
    "the 9 elevations; VTAB's test is half of the official test set.")
