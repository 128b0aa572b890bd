"""The one lookup of downstream tasks: the offline suite, VTAB-1k and users' ImageFolders.

Importing this module registers every task (:mod:`lightning_modules.offline`,
:mod:`lightning_modules.vtab`) in :data:`~lightning_modules.task_data.TASKS`::

    get_task("digits").load(data_root, image_size=32)        # the offline suite
    get_task("vtab:cifar100").check(data_root)               # VTAB-1k, read from data_root
    imagefolder_task("my-task", "data/my-task", "natural")   # a user's ImageFolder
    list_tasks(kind="vtab", group="structured")

Every task has the same ``load`` and ``check`` (:class:`~lightning_modules.task_data.Task`).
"""

from __future__ import annotations

import pathlib

# Imported for their registrations.
from lightning_modules import offline, vtab  # noqa: F401
from lightning_modules.imagefolder import ImageFolderTask
from lightning_modules.task_data import KINDS, TASKS, PathLike, Task, TaskInfo, check_group
from whichmodel.registry import UnknownNameError


def get_task(name: str) -> Task:
    """The registered task written ``name`` in a sweep (``digits``, ``vtab:cifar100``)."""
    if name not in TASKS:
        raise UnknownNameError("task", name, list_tasks())
    return TASKS.get(name)


def list_tasks(kind: str | None = None, group: str | None = None) -> list[str]:
    """The registered tasks' names (of one kind, of one group), sorted."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}; kinds: {', '.join(KINDS)}")
    check_group(group)
    return sorted(n for n, t in TASKS.items()
                  if kind in (None, t.kind) and group in (None, t.info.group))


def imagefolder_task(name: str, path: PathLike, group: str, description: str = "") -> Task:
    """A user's task from the ImageFolder at ``path``
    (:class:`~lightning_modules.imagefolder.ImageFolderTask`); not registered."""
    check_group(group)
    path = pathlib.Path(path).expanduser()
    info = TaskInfo(name, group, 0, description or f"ImageFolder task at {path}.")
    return ImageFolderTask(info, path)
