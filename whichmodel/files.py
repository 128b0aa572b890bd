"""One way to publish a file: write it beside its target, flush it to disk, rename it over.

Readers see the old file or the new one, never a partial one, and a crash or an error in the
writer leaves no temporary file behind. Every file whichmodel publishes goes through here: the
offline task and VTAB caches, zoo checkpoints and their ``meta.json``, probe features, sweep
state, spooled results and report files.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is fsynced, given ``mode``
    and renamed over ``path`` (folders created as needed); on failure it is removed.

    For writers that want a path of their own (``np.savez``, ``safetensors.save_file``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str, mode: int = 0o644) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns the path."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
                      mode: int = 0o644) -> Path:
    """``json.dumps(obj, sort_keys=True)`` written atomically."""
    return atomic_write(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n", mode)
