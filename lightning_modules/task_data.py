"""What every downstream task is: its info, its splits, the task registry and the split sizes.

A task (:class:`Task`) is one object registered at its definition (VTAB's ``task_adaptation``
style): its :class:`TaskInfo`, its ``kind`` (``offline``, ``vtab`` or ``imagefolder``), ``load``,
which returns the splits as :class:`TaskData`, and ``check``, which says before anything runs
whether the task's data is there. The offline suite (:mod:`lightning_modules.offline`) and VTAB-1k
(:mod:`lightning_modules.vtab`) register theirs in :data:`TASKS`; :mod:`lightning_modules.tasks`
is the one lookup.

Every task has the splits ``train800``, ``val200`` and ``test`` (VTAB-1k's protocol, Zhai et al.
2019): :data:`N_TRAIN` and :data:`N_VAL` are defined here and nowhere else. Images are uint8 RGB
``(N, S, S, 3)``, labels int64 ``0..C-1``. Caches are ``.npz`` files written atomically.
"""

from __future__ import annotations

import os
import pathlib
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from whichmodel.errors import WhichModelError
from whichmodel.files import atomic_path
from whichmodel.registry import Registry

GROUPS = ("natural", "specialized", "structured")
KINDS = ("offline", "vtab", "imagefolder")
N_TRAIN, N_VAL = 800, 200
SPLITS = ("train800", "val200", "test")
CACHE_VERSION = 1

Array = np.ndarray
PathLike = str | os.PathLike


class DatasetError(WhichModelError, ValueError):
    """Data on disk is missing or unusable; the message names the path and how to fix it."""


@dataclass(frozen=True)
class TaskInfo:
    name: str
    group: str
    num_classes: int
    description: str
    note: str = ""
    test_size: int = 1000


@dataclass
class TaskData:
    info: TaskInfo
    image_size: int
    seed: int
    splits: dict[str, tuple[Array, Array]]

    name = property(lambda self: self.info.name)
    group = property(lambda self: self.info.group)
    num_classes = property(lambda self: self.info.num_classes)
    train = property(lambda self: self.splits["train800"])
    val = property(lambda self: self.splits["val200"])
    test = property(lambda self: self.splits["test"])


class Task:
    """A downstream task. ``spec`` is the name a sweep file writes (``digits``,
    ``vtab:cifar100``); ``info.name`` the task's own name (``cifar100``), which its
    :class:`TaskData` carries."""

    info: TaskInfo
    kind: str

    @property
    def spec(self) -> str:
        return self.info.name

    @property
    def summary(self) -> str:
        """One line for ``whichmodel list tasks``."""
        return self.info.description

    def load(self, data_root: PathLike | None, image_size: int = 32, seed: int = 0,
             download: bool = False, n_train: int = N_TRAIN, n_val: int = N_VAL,
             cache_root: PathLike | None = None) -> TaskData:
        """The splits: read from the cache, or built and cached. ``cache_root`` defaults to a
        place under ``data_root`` that each kind of task documents."""
        raise NotImplementedError

    def check(self, data_root: PathLike | None, download: bool = False) -> None:
        """A :class:`DatasetError` naming the path and the fix when ``load`` could not find the
        task's data; builds, decodes and writes nothing."""
        raise NotImplementedError


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    """Register ``task`` under its ``spec``; returns it."""
    return TASKS.register(task.spec, task)


def check_group(group: str | None) -> None:
    if group is not None and group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; groups: {', '.join(GROUPS)}")


def check_sizes(n_train: int, n_val: int) -> None:
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be positive, got {n_train} and {n_val}")


def task_rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator seeded with ``seed`` and ``keys`` (strings through CRC-32, so the stream does
    not depend on Python's hash seed)."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) if isinstance(k, str) else k
                                          for k in keys)])


def save_arrays(path: pathlib.Path, arrays: dict[str, Array]) -> None:
    """``np.savez`` of ``arrays`` and the cache version, published atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, version=CACHE_VERSION, **arrays)


def load_arrays(path: pathlib.Path) -> dict[str, Array] | None:
    """The cached arrays, or None when missing, unreadable or of another cache version."""
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    return arrays if int(arrays.get("version", -1)) == CACHE_VERSION else None


def split_arrays(splits: dict[str, tuple[Array, Array]]) -> dict[str, Array]:
    """``{"train800_x": ..., "train800_y": ..., ...}``, the cache's keys."""
    return {f"{s}_{xy}": a for s, pair in splits.items() for xy, a in zip("xy", pair)}


def arrays_splits(arrays: dict[str, Array]) -> dict[str, tuple[Array, Array]]:
    return {s: (arrays[f"{s}_x"], arrays[f"{s}_y"]) for s in SPLITS}


def splits_digest(splits: dict[str, tuple[Array, Array]]) -> str:
    """A digest of a task's splits (SHA-256 of each split's images and labels, shapes and dtypes
    included, in :data:`SPLITS` order), 16 hex digits: the same data gives the same digest on any
    machine (MLflow's dataset digest of the task)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(splits, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s)):
        for a in splits[name]:
            a = np.ascontiguousarray(a)
            h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]
