"""The root of every user error: one line, exit code 2 (bad input, not a bug).

Every package's own user errors derive from :class:`WhichModelError` -- ``ConfigError`` (a sweep
or server config), ``DatasetError`` (task data), ``RecordsError`` (a records table),
``CheckpointError`` (weights), the accuracy rule's :class:`AccuracyError` -- so the CLI catches
one class and nothing re-wraps one error into another. Those that were ``ValueError`` before stay
``ValueError`` too, for callers that catch it.
"""

from __future__ import annotations


class WhichModelError(Exception):
    """An error the CLI reports on one line with exit code 2 (bad input, not a bug)."""


class AccuracyError(WhichModelError, ValueError):
    """A value that cannot be an accuracy (:mod:`whichmodel.accuracy`)."""


class InputError(WhichModelError, ValueError):
    """A bad argument of a public function (a setting out of range, a malformed table)."""


class ConfigError(WhichModelError):
    """A sweep, zoo, catalog or server config that cannot be used (one line naming the file and
    the key)."""
