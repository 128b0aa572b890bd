"""Opening the VTAB-1k datasets that torchvision has, through its own dataset classes.

An opener ``opener(task, data_root, download)`` returns the dataset's ``(train, val or None,
test)`` splits as :class:`~lightning_modules.imagefolder.Part` objects: every label, and each
image opened only when drawn. ``task`` is the :class:`~lightning_modules.vtab.VTABTask` (its
name, ``torchvision_class`` and ``layout`` for messages). :func:`official` makes openers for
datasets with official splits, :func:`single` for datasets without (a fixed per-class split);
DTD, PCam and CLEVR have their own. The split rules are in :mod:`lightning_modules.vtab`.

torchvision checks the md5 of the extracted files of CIFAR-100, SVHN and Flowers-102 every time
it opens them; :func:`tv_class` gives subclasses that check only that those files are present
(everything else is torchvision's own code: its parsing, its downloads, which still verify the
md5 of what they fetch). That lets a copy prepared by other means, and the small fakes of the
tests, go through torchvision's real parsing code.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import pickle
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from lightning_modules.imagefolder import Part, to_array
from lightning_modules.task_data import DatasetError, PathLike, task_rng

Array = np.ndarray
Splits = tuple[Part, Part | None, Part]

DOWNLOAD_HINT = "set `download: true` in the sweep (download=True) to fetch it"
#: Seed of the fixed train/test split of datasets without official splits (never the task seed).
SPLIT_SEED = 0


def construct(task: Any, root: pathlib.Path, download: bool, **kw):
    """torchvision's dataset class of ``task`` on ``root``, its errors as
    :class:`DatasetError`."""
    cls = tv_class(task.torchvision_class)
    try:
        return cls(str(root), download=download, **kw)
    except (RuntimeError, OSError, ValueError, KeyError, IndexError, EOFError, TypeError,
            pickle.UnpicklingError, json.JSONDecodeError, zipfile.BadZipFile) as e:
        hint = "" if download else f"; {DOWNLOAD_HINT}"
        raise DatasetError(f"{task.info.name}: torchvision.datasets.{cls.__name__} could not "
                           f"read the files under {root} ({task.layout}): {type(e).__name__}: "
                           f"{e}{hint}") from e


def _item_path(ds: Any, i: int) -> str:
    for attr in ("_image_files", "_images"):
        files = getattr(ds, attr, None)
        if files is not None:
            return str(files[i])
    samples = getattr(ds, "samples", None)
    return str(samples[i][0]) if samples is not None else f"item {i} of {ds.root}"


def tv_part(ds: Any, labels: Any, where: PathLike) -> Part:
    def get(i: int):
        try:
            return ds[i][0]
        except OSError as e:
            raise OSError(f"{_item_path(ds, i)}: {e}") from e
    return Part(str(where), np.asarray(labels, np.int64).reshape(-1), get)


@functools.cache
def tv_class(name: str) -> type:
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


def official(where: Callable[[pathlib.Path, Any], Any], labels: Callable[[Any], Any],
             splits: tuple[Any, Any, Any], split_kw: str = "split", **kw):
    """An opener for datasets with official splits: one instance per split (``splits``: the
    ``split_kw`` values of train, val or None, and test)."""
    def open_(task: Any, root: pathlib.Path, download: bool) -> Splits:
        out = []
        for s in splits:
            if s is None:
                out.append(None)
                continue
            ds = construct(task, root, download, **{split_kw: s}, **kw)
            out.append(tv_part(ds, labels(ds), where(root, s)))
        return tuple(out)
    return open_


def single(where: Callable[[pathlib.Path], Any], labels: Callable[[Any], Any],
           n_train: Callable[[int], int], keys: Callable[[Any], list[str]] | None = None):
    """An opener for datasets without splits: a fixed per-class train/test split (``keys``: the
    examples' file names where the dataset's own order is not deterministic)."""
    def open_(task: Any, root: pathlib.Path, download: bool) -> Splits:
        ds = construct(task, root, download)
        whole = tv_part(ds, labels(ds), where(root))
        train, test = class_split(task.info.name, whole.labels, n_train,
                                  None if keys is None else keys(ds))
        return (whole.subset(train, f"{whole.where} (training split)"), None,
                whole.subset(test, f"{whole.where} (test split)"))
    return open_


def class_split(task: str, labels: Array, n_train: Callable[[int], int],
                keys: list[str] | None = None) -> tuple[Array, Array]:
    """A fixed (``SPLIT_SEED``, whatever the task seed) per-class split: ``n_train(class size)``
    random examples of each class to train, the rest to test. Index arrays ordered by ``keys``
    (file paths; default the index), so the split and the order of the training split, hence
    train800/val200, do not depend on the order in which the dataset listed its files."""
    rank = np.arange(len(labels)) if keys is None else np.argsort(np.argsort(keys, kind="stable"))
    rng = task_rng(SPLIT_SEED, "vtab-split", task)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = rng.permutation(idx[np.argsort(rank[idx])])
        k = n_train(len(idx))
        train.append(idx[:k])
        test.append(idx[k:])
    train, test = np.concatenate(train), np.concatenate(test)
    return train[np.argsort(rank[train])], test[np.argsort(rank[test])]


def open_dtd(task: Any, root: pathlib.Path, download: bool) -> Splits:
    """DTD's label indices are per split (sorted classes of that split): map them by name onto
    the training split's classes."""
    sets = {s: construct(task, root, download, split=s, partition=1)
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
        parts.append(tv_part(ds, [index[ds.classes[y]] for y in ds._labels],
                             labels_dir / f"{s}1.txt"))
    return tuple(parts)


PCAM_FILES = {s: (f"camelyonpatch_level_2_split_{f}_x.h5", f"camelyonpatch_level_2_split_{f}_y.h5")
              for s, f in (("train", "train"), ("val", "valid"), ("test", "test"))}


def open_pcam(task: Any, root: pathlib.Path, download: bool) -> Splits:
    """torchvision's PCAM opens both HDF5 files for every item and has no label list: read the
    labels once, and images in chunks, from the files it checked (same decoding:
    ``Image.fromarray(x[i]).convert("RGB")``)."""
    parts = []
    for s in ("train", "val", "test"):
        ds = construct(task, root, download, split=s)
        x_file, y_file = (ds._base_folder / f for f in PCAM_FILES[s])
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
        part = tv_part(ds, y, x_file)
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
                out[start + k] = to_array(Image.fromarray(a), size)
    return out


def open_clevr(task: Any, root: pathlib.Path, download: bool) -> Splits:
    """CLEVR: train split for train800/val200, the val split as test; labels count - 3."""
    base = root / "clevr" / "CLEVR_v1.0"
    parts = []
    for s in ("train", "val"):
        ds = construct(task, root, download, split=s)
        counts = np.asarray(ds._labels, np.int64)
        scenes = base / "scenes" / f"CLEVR_{s}_scenes.json"
        bad = counts[(counts < 3) | (counts > 10)]
        if len(bad):
            raise DatasetError(f"clevr_count: a scene of {scenes} has {int(bad[0])} objects; "
                               f"VTAB's clevr_count has 3-10")
        parts.append(tv_part(ds, counts - 3, base / "images" / s))
    return parts[0], None, parts[1]
