"""The one accuracy rule: accuracies are fractions in [0, 1] everywhere.

Records, predicted accuracies, regret and a model's ``imagenet_acc`` all go through
:func:`accuracy_out_of_range` and :func:`check_accuracies`: never a silent rescale -- 87.5 could be
a percentage or a bug, and only the producer knows which. An error is an
:class:`~whichmodel.errors.AccuracyError` (a ``WhichModelError`` and a ``ValueError``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from whichmodel.errors import AccuracyError

ACCURACY_RULE = "accuracies must be fractions in [0, 1]; divide percentages by 100"


def accuracy_out_of_range(values: Any) -> np.ndarray:
    """Boolean mask of the values that cannot be accuracies: infinite, or finite outside [0, 1].
    NaN (a missing value) is not flagged."""
    arr = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.isinf(arr) | (np.isfinite(arr) & ((arr < 0.0) | (arr > 1.0)))


def check_accuracies(values: Any, what: str,
                     where: Callable[[tuple[int, ...]], str] | None = None) -> np.ndarray:
    """``values`` as a float array; :class:`AccuracyError` naming ``what``, the first bad entry (through
    ``where(index)``, e.g. the model and task of a table cell) and the rule when any is not an
    accuracy (:func:`accuracy_out_of_range`). NaN passes (missing)."""
    arr = np.asarray(values, dtype=float)
    bad = accuracy_out_of_range(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        place = where(first) if where is not None else ""
        count = int(bad.sum())
        more = f" ({count} such values)" if count > 1 else ""
        raise AccuracyError(f"{what}{place}: accuracy {arr[first].item()!r} is outside [0, 1]{more}; "
                         f"{ACCURACY_RULE}")
    return arr


def check_accuracy(value: Any, what: str) -> float | None:
    """One accuracy (``None`` allowed: unknown); :class:`AccuracyError` naming ``what`` otherwise."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AccuracyError(f"{what}: {value!r} is not a number; {ACCURACY_RULE}") from None
    if number != number:  # NaN: unknown
        return None
    check_accuracies(number, what)
    return number
