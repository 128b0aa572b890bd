"""Tasks on image files: VTAB-1k's split drawing and decoding, and ImageFolder tasks.

The machinery every task read from disk shares (the VTAB-1k datasets of
:mod:`lightning_modules.vtab` and users' ImageFolders): a dataset split is a :class:`Part` (every
example's label and a way to open example ``i``); :func:`vtab1k_splits` checks the labels, draws
``train800``/``val200`` and decodes just those examples and the whole test split; the arrays are
cached with the data source they came from (:func:`read_cache`, :func:`write_cache`).

An ImageFolder is ``path/train/<class>/*.png|jpg``, ``path/test/<class>/...`` and optionally
``path/val/<class>/...``. Classes are the folder names of ``train/``, sorted (numerically when
all are integers); ``test/`` and ``val/`` may lack a class but not add one. ``train800`` comes
from ``train/`` and ``val200`` from ``val/`` when present, else both (disjoint) from ``train/``;
``test`` is all of ``test/``. A user's ImageFolder (:class:`ImageFolderTask`, a sweep's entry
``{name, path, group}``) is cached as ``<cache_root>/imagefolder/<name>-<size>px-seed<seed>.npz``.
"""

from __future__ import annotations

import dataclasses
import glob
import pathlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_modules.task_data import (
    CACHE_VERSION,
    N_TRAIN,
    N_VAL,
    DatasetError,
    PathLike,
    Task,
    TaskData,
    TaskInfo,
    arrays_splits,
    check_sizes,
    load_arrays,
    save_arrays,
    split_arrays,
    task_rng,
)
from whichmodel.names import within

Array = np.ndarray

#: Image file suffixes an ImageFolder may hold (torchvision's ``IMG_EXTENSIONS``), any case.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
VTAB_CACHE_VERSION = 1

FolderFiles = dict[str, list[pathlib.Path]]


# ---------------------------------------------------------------- split drawing and decoding


@dataclass
class Part:
    """One split of a dataset: every example's label, how to get example ``i`` as a PIL image,
    and where it lives (for messages). ``read`` is an optional batch reader (sorted indices);
    ``file`` names example ``i``'s file, where it has one."""

    where: str
    labels: Array
    get: Callable[[int], Any]
    read: Callable[[Array, int], Array] | None = None
    file: Callable[[int], str] | None = None

    def subset(self, index: Array, where: str | None = None) -> Part:
        index = np.asarray(index, np.int64)
        file = None if self.file is None else (lambda i: self.file(int(index[i])))
        return Part(where or self.where, self.labels[index], lambda i: self.get(int(index[i])),
                    file=file)

    def describe(self, i: int) -> str:
        return self.file(i) if self.file is not None else f"example {i} of {self.where}"

    def __len__(self) -> int:
        return len(self.labels)


def vtab1k_splits(info: TaskInfo, rng: np.random.Generator, train: Part, val: Part | None,
                  test: Part, size: int, n_train: int, n_val: int,
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
    return {"train800": (decode(train, tr, size), train.labels[tr].astype(np.int64)),
            "val200": (decode(val, va, size), val.labels[va].astype(np.int64)),
            "test": (decode(test, np.arange(len(test)), size), test.labels.astype(np.int64))}


def decode(part: Part, index: Array, size: int) -> Array:
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
            out[k] = to_array(img, size)
        except (OSError, ValueError, SyntaxError) as e:
            # PIL.UnidentifiedImageError, truncated or unreadable files, broken headers
            raise DatasetError(f"cannot decode {part.describe(i)}: {e}; replace or remove "
                               "the file") from e
    return out


#: 8-bit modes PIL converts to RGB as they are (no alpha, no palette, no wider samples)
_PLAIN = {"1", "L", "RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}


def to_rgb(img: Any) -> Any:
    """A PIL image as 8-bit RGB, every mode converted explicitly:

    - 16-bit and other wide samples (``I;16*``, ``I``, ``F``) are rescaled to 0..255 by their
      real range, not clipped at 255 (PIL's ``convert`` clips: a 16-bit image comes out almost
      white): an integer image by its bit depth's range (0..65,535 for 16 bits; a 32-bit image
      whose values lie in 0..65,535 is one read wide), a float image by [0, 1] when its values
      lie there, else (and for signed or wider integers) by its own minimum and maximum;
    - palette images are expanded through their palette (with its transparency);
    - images with alpha are composited over black (each colour times its alpha, as a
      premultiplied image), so what the alpha hides does not show.
    """
    from PIL import Image

    mode = img.mode
    if mode in _PLAIN:
        return img.convert("RGB")
    if mode.startswith("I") or mode == "F":
        values = np.asarray(img, dtype=np.float64)
        low, high = _sample_range(mode, values)
        scaled = np.clip(np.rint((values - low) / max(high - low, 1e-12) * 255.0), 0, 255)
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
    rgba = img.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert("RGB")


def _sample_range(mode: str, values: Array) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if mode.startswith("I;16") and not mode.startswith("I;16S"):
        return 0.0, 65535.0
    if mode == "I" and low >= 0 and high <= 65535:
        return 0.0, 65535.0
    if mode == "F" and low >= 0 and high <= 1:
        return 0.0, 1.0
    return low, high


def to_array(img: Any, size: int) -> Array:
    """A PIL image as RGB uint8 (size, size, 3) (:func:`to_rgb`): resized directly, bilinear,
    no crop (as VTAB)."""
    from PIL import Image

    with img:
        return np.asarray(to_rgb(img).resize((size, size), Image.Resampling.BILINEAR))


def create_task_data(info: TaskInfo, image_size: int, seed: int,
                     splits: dict[str, tuple[Array, Array]], num_classes: int | None = None,
                     ) -> TaskData:
    """The loaded task, its info carrying the actual test size (and class count)."""
    info = dataclasses.replace(info, test_size=len(splits["test"][1]),
                               num_classes=num_classes or info.num_classes)
    return TaskData(info, image_size, seed, splits)


# ---------------------------------------------------------------- cache


def cache_file(folder: pathlib.Path, name: str, image_size: int, seed: int, n_train: int,
               n_val: int) -> pathlib.Path:
    sizes = "" if (n_train, n_val) == (N_TRAIN, N_VAL) else f"-{n_train}+{n_val}"
    return within(folder, f"{name}-{image_size}px-seed{seed}{sizes}.npz")


def imagefolder_cache_path(cache_root: PathLike, name: str, image_size: int = 224, seed: int = 0,
                           n_train: int = N_TRAIN, n_val: int = N_VAL) -> pathlib.Path:
    return cache_file(pathlib.Path(cache_root) / "imagefolder", name, image_size, seed, n_train,
                      n_val)


def write_cache(path: pathlib.Path, splits: dict[str, tuple[Array, Array]], source: str,
                num_classes: int) -> None:
    save_arrays(path, {**split_arrays(splits), "vtab_version": VTAB_CACHE_VERSION,
                       "source": np.array(source), "num_classes": num_classes})


def read_cache(path: pathlib.Path, source: str,
               ) -> tuple[dict[str, tuple[Array, Array]], int] | None:
    """The cached splits and class count, or None when missing, of another version or built
    from another data source."""
    arrays = load_arrays(path)
    if arrays is None:
        return None
    try:
        if (int(arrays["vtab_version"]) != VTAB_CACHE_VERSION
                or str(arrays["source"]) != source):
            return None
        return arrays_splits(arrays), int(arrays["num_classes"])
    except KeyError:
        return None


def has_cache(folder: pathlib.Path, name: str, source: str) -> bool:
    """Whether ``folder`` holds a cache of task ``name`` (any size, seed or split sizes) built
    from ``source``; reads the cache's version and source, not its images."""
    for path in sorted(folder.glob(f"{glob.escape(name)}-*px-seed*.npz")):
        try:
            with np.load(path) as z:
                if (int(z["version"]) == CACHE_VERSION
                        and int(z["vtab_version"]) == VTAB_CACHE_VERSION
                        and str(z["source"]) == source):
                    return True
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            continue
    return False


# ---------------------------------------------------------------- ImageFolder


def class_order(names: list[str]) -> list[str]:
    if names and all(n.isdecimal() for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def scan_split(folder: pathlib.Path) -> tuple[list[str], FolderFiles]:
    """Class folders of ``folder`` (sorted) and each one's image files (sorted, recursive)."""
    names = class_order([p.name for p in folder.iterdir()
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


def files_part(folder: pathlib.Path, files: FolderFiles, to_label: dict[str, int]) -> Part:
    from PIL import Image

    paths = [p for name in files for p in files[name]]
    labels = np.array([to_label[name] for name in files for _ in files[name]], np.int64)

    def get(i: int):
        return Image.open(paths[i])

    return Part(str(folder), labels, get, file=lambda i: str(paths[i]))


def scan_folder(info: TaskInfo, path: pathlib.Path, expect_classes: int | None = None,
                vtab_root: pathlib.Path | None = None,
                ) -> tuple[list[str], dict[str, FolderFiles | None]]:
    """The classes of the ImageFolder at ``path`` and the image files of each split (``val``:
    None when absent), by listing folders; a :class:`DatasetError` naming the path when the
    layout is wrong. ``vtab_root``: the data root of a VTAB-1k task prepared as an ImageFolder."""
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
    classes, train_files = scan_split(path / "train")
    if len(classes) < 2:
        raise DatasetError(f"ImageFolder {path / 'train'} has a single class folder "
                           f"({classes[0]!r}): a classification task needs two or more classes")
    if expect_classes is not None and len(classes) != expect_classes:
        raise DatasetError(f"{info.name}: {path / 'train'} has {len(classes)} class folders; "
                           f"the task has {expect_classes} classes ({info.note})")
    files: dict[str, FolderFiles | None] = {"train": train_files}
    for split in ("val", "test"):
        if split == "val" and not (path / "val").is_dir():
            files["val"] = None
            continue
        names, files[split] = scan_split(path / split)
        extra = [n for n in names if n not in classes]
        if extra:
            raise DatasetError(f"class folder {path / split / extra[0]} has no counterpart in "
                               f"{path / 'train'}: every {split} class must be a training class")
    return classes, files


def load_folder(info: TaskInfo, path: pathlib.Path, image_size: int, seed: int,
                cache: pathlib.Path, n_train: int, n_val: int, expect_classes: int | None = None,
                vtab_root: pathlib.Path | None = None) -> TaskData:
    """The ImageFolder at ``path`` as a task: read from ``cache`` when it was built from this
    folder, else checked (:func:`scan_folder`), drawn, decoded and cached."""
    source = str(path.resolve())
    hit = read_cache(cache, source)
    if hit is not None:
        return create_task_data(info, image_size, seed, hit[0], hit[1])
    classes, files = scan_folder(info, path, expect_classes, vtab_root)
    to_label = {c: i for i, c in enumerate(classes)}
    parts = {split: None if found is None else files_part(path / split, found, to_label)
             for split, found in files.items()}
    info = dataclasses.replace(info, num_classes=len(classes))
    splits = vtab1k_splits(info, task_rng(seed, "vtab", info.name), parts["train"], parts["val"],
                           parts["test"], image_size, n_train, n_val)
    write_cache(cache, splits, source, len(classes))
    return create_task_data(info, image_size, seed, splits)


@dataclass(frozen=True)
class ImageFolderTask(Task):
    """A user's task: the ImageFolder at ``path`` (module docstring). ``info.num_classes`` is 0
    until loaded: the class folders decide."""

    info: TaskInfo
    path: pathlib.Path
    kind: str = "imagefolder"

    def load(self, data_root: PathLike | None = None, image_size: int = 224, seed: int = 0,
             download: bool = False, n_train: int = N_TRAIN, n_val: int = N_VAL,
             cache_root: PathLike | None = None) -> TaskData:
        """Cached under ``cache_root``, by default ``<data_root>/cache`` (``<path>/cache`` when
        there is no ``data_root``). ``download`` changes nothing: an ImageFolder is prepared."""
        check_sizes(n_train, n_val)
        cache = imagefolder_cache_path(self.cache_root(data_root, cache_root), self.info.name,
                                       image_size, seed, n_train, n_val)
        return load_folder(self.info, self.path, image_size, seed, cache, n_train, n_val)

    def check(self, data_root: PathLike | None = None, download: bool = False) -> None:
        """Fine when a cache built from this folder exists, else the layout checks of ``load``."""
        folder = pathlib.Path(self.cache_root(data_root, None)) / "imagefolder"
        if not has_cache(folder, self.info.name, str(self.path.resolve())):
            scan_folder(self.info, self.path)

    def cache_root(self, data_root: PathLike | None, cache_root: PathLike | None) -> PathLike:
        if cache_root is not None:
            return cache_root
        return self.path / "cache" if data_root is None else pathlib.Path(data_root) / "cache"
