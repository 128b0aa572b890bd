"""Within-task standardisation, shared by the records learners (:mod:`selection.learners`) and
ChoiceNet v3 (:mod:`lightning_modules.choicenet_v3`): a model's score only means something
against the other models of the same task."""

from __future__ import annotations

import numpy as np
import pandas as pd


def standardise_within_task(table: pd.DataFrame) -> pd.DataFrame:
    """Each column (task) z-scored over the models that have a value; a constant column is 0."""
    mean = table.mean(axis=0)
    std = table.std(axis=0, ddof=0)
    return (table - mean) / std.where(std > 0, 1.0)


def zscore_finite(values: np.ndarray) -> np.ndarray:
    """The finite values z-scored among themselves; 0 where a value is missing, or for all when
    fewer than two differ."""
    v = np.asarray(values, dtype=float).copy()
    ok = np.isfinite(v)
    if ok.sum() > 1 and v[ok].std() > 0:
        v[ok] = (v[ok] - v[ok].mean()) / v[ok].std()
    else:
        v[ok] = 0.0
    return np.where(ok, v, 0.0)
