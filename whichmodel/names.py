"""The one check of a name that becomes part of a path, and the one check of a path written.

Sweeps, MLflow experiments, tasks, models, pools, ``whichmodel resume NAME`` and report folders
are named by users and become folder and file names (``$WHICHMODEL_HOME/sweeps/<sweep>.json``,
``reports/<experiment>/``, ``zoo/<model>/``, ``<task>-32px-seed0.npz``). :func:`check_name`
accepts letters, digits, ``_``, ``.`` and ``-``, starting with a letter or a digit, at most
:data:`MAX_NAME_LENGTH` characters: no separator, no ``..``, no absolute path, no NUL, nothing a
file system refuses for length. :func:`within` joins a root and such names and verifies, on the
resolved path (symbolic links followed), that the result stays under the root. Both raise
:class:`BadNameError` (a :class:`~whichmodel.errors.WhichModelError`: one line, exit code 2).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from whichmodel.errors import WhichModelError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
# Names are joined into longer file names (``<model>@<task>.npz``, ``<sweep>-20260101-120000``);
# 100 characters each keeps every such name under the usual 255-byte limit of a file name.
MAX_NAME_LENGTH = 100
NAME_RULE = (f"letters, digits, '_', '.' and '-', starting with a letter or a digit, at most "
             f"{MAX_NAME_LENGTH} characters")
_NAME = re.compile(NAME_PATTERN)


class BadNameError(WhichModelError, ValueError):
    """A name that cannot be part of a path, or a path that leaves its folder."""


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be part of a path (None when it can)."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a name"
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long (at most {MAX_NAME_LENGTH})"
    if "\x00" in name:
        return "holds a NUL character"
    if not _NAME.fullmatch(name):
        if "/" in name or "\\" in name or name.startswith("."):
            return "would leave its folder (a path separator, or a leading '.')"
        return "holds a character other than " + NAME_RULE.split(", starting")[0]
    return None


def name_message(name: object) -> str | None:
    """The one-line complaint about ``name`` (None when it can be part of a path)."""
    why = name_problem(name)
    if why is None:
        return None
    shown = repr(name) if not isinstance(name, str) or len(name) <= 60 else repr(name[:57] + "...")
    return f"{shown} {why}; a name has {NAME_RULE}"


def check_name(name: object, what: str) -> str:
    """``name`` when it can be part of a path; else :class:`BadNameError` naming ``what`` (e.g.
    ``"sweep.yaml: key 'tracking.experiment'"``) and the rule."""
    message = name_message(name)
    if message is not None:
        raise BadNameError(f"{what}: {message}")
    return name


def within(root: str | os.PathLike, *parts: str) -> Path:
    """``root / parts...`` resolved, verified to stay under the resolved ``root``; every part is a
    relative path without ``..`` (a file name, or ``a/b`` below the root)."""
    base = Path(root).resolve()
    for part in parts:
        text = str(part)
        if "\x00" in text or Path(text).is_absolute() or ".." in Path(text).parts:
            raise BadNameError(f"{base}: refusing to write {text!r} there: it would leave the folder")
    target = base.joinpath(*map(str, parts)).resolve()
    if target != base and base not in target.parents:
        raise BadNameError(f"{base}: refusing to write {target}: it is outside that folder")
    return target
