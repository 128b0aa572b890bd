"""Strategies learned from records alone: no embeddings, so they run on any records table.

- ``ensemble:all`` (learning-free): per task, each proxy's scores standardised over the task's
  models (z-scores), averaged over the proxies a model has; ``ensemble:<p1>+<p2>...`` averages
  the listed proxies only (``ensemble:knn+logme`` means ``proxy/knn`` and ``proxy/logme``).
- ``choicenet_records`` (learned, leave-one-task-out): for a held-out task t, a ridge regression
  fitted on the *other* tasks' pairs predicts the model's fine-tune accuracy *centred and scaled
  within the task* (the order of models inside a task, not how hard the task is) from the pair's
  proxy scores standardised within the task (a missing score is 0, the task's mean) and the
  model's mean fine-tune accuracy on the training tasks, standardised over the task's models.
  For a training pair (m, u) that mean leaves u out too, so no row sees its own target. Its
  hyper-parameters are fixed (:data:`RIDGE`), not tuned on held-out tasks.

Neither reads the held-out task's fine-tune results: ``tests/test_learners.py`` perturbs them and
checks that the task's ranking does not move.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from selection.records import PROXY_PREFIX
from whichmodel.zscores import standardise_within_task, zscore_finite

ENSEMBLE_PREFIX = "ensemble:"
ENSEMBLE_ALL = "ensemble:all"
CHOICENET_RECORDS = "choicenet_records"


def is_records_learner(name: str) -> bool:
    """True for the strategies this module builds from records (the ensemble, ``choicenet_records``)."""
    return name == CHOICENET_RECORDS or name.startswith(ENSEMBLE_PREFIX)


RIDGE = 1.0  # L2 penalty of the records learner (features are standardised)


def ensemble_proxies(name: str, proxies: Sequence[str]) -> list[str]:
    """The proxy metrics ``name`` averages; an unknown one is an error listing the known."""
    spec = name[len(ENSEMBLE_PREFIX):]
    if spec == "all":
        return list(proxies)
    wanted = [p if p.startswith(PROXY_PREFIX) else PROXY_PREFIX + p for p in spec.split("+")]
    unknown = [p for p in wanted if p not in proxies]
    if unknown or not wanted:
        raise KeyError(f"strategy {name!r}: no proxy {unknown or spec!r} in the records; known: "
                       f"{', '.join(p[len(PROXY_PREFIX):] for p in proxies)}")
    return wanted


def ensemble_table(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Mean of the within-task z-scores of the proxy tables (over the scores a pair has)."""
    z = [standardise_within_task(t) for t in tables]
    stacked = np.stack([t.to_numpy(dtype=float) for t in z])
    have = np.isfinite(stacked)
    count = have.sum(axis=0)
    total = np.where(have, stacked, 0.0).sum(axis=0)
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)  # no score: NaN
    return pd.DataFrame(mean, index=z[0].index, columns=z[0].columns)


def _features(z_proxies: list[np.ndarray], mean_acc: np.ndarray, task: int) -> np.ndarray:
    """(models, proxies + 1) features of one task's pairs."""
    cols = [np.nan_to_num(z[:, task], nan=0.0) for z in z_proxies]
    cols.append(zscore_finite(mean_acc))
    return np.stack(cols, axis=1)


def _mean_over(acc: np.ndarray, tasks: list[int]) -> np.ndarray:
    """Each model's mean accuracy over ``tasks`` (NaN without any)."""
    sub = acc[:, tasks]
    count = np.isfinite(sub).sum(axis=1)
    total = np.where(np.isfinite(sub), sub, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def prepare_folds(proxy_tables: Sequence[pd.DataFrame], truth: pd.DataFrame):
    models, tasks = list(truth.index), list(truth.columns)
    acc = truth.to_numpy(dtype=float)
    z_acc = standardise_within_task(truth).to_numpy(dtype=float)
    z_proxies = [standardise_within_task(t.reindex(index=models, columns=tasks)).to_numpy(float)
                 for t in proxy_tables]
    return acc, z_acc, z_proxies


def fit_fold(acc: np.ndarray, z_acc: np.ndarray, z_proxies: list[np.ndarray], held_out: int,
              ridge: float) -> tuple[np.ndarray | None, list[int]]:
    """The ridge weights of the fold that holds ``held_out`` out, and its training tasks: every
    array read here is a column of a training task."""
    train = [u for u in range(acc.shape[1]) if u != held_out and np.isfinite(acc[:, u]).sum() > 1]
    if not train:
        return None, train
    xs, ys = [], []
    for u in train:
        x = _features(z_proxies, _mean_over(acc, [v for v in train if v != u]), u)
        keep = np.isfinite(z_acc[:, u])
        xs.append(x[keep])
        ys.append(z_acc[keep, u])
    x, y = np.concatenate(xs), np.concatenate(ys)
    return np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y), train


def records_learner_table(proxy_tables: Sequence[pd.DataFrame], truth: pd.DataFrame,
                          ridge: float = RIDGE) -> pd.DataFrame:
    """Leave-one-task-out ranking scores (index model, columns task) of ``choicenet_records``:
    column t is predicted by a ridge regression fitted on the other tasks' pairs only."""
    acc, z_acc, z_proxies = prepare_folds(proxy_tables, truth)
    out = np.full(acc.shape, np.nan)
    for t in range(acc.shape[1]):
        w, train = fit_fold(acc, z_acc, z_proxies, t, ridge)
        if w is not None:
            out[:, t] = _features(z_proxies, _mean_over(acc, train), t) @ w
    return pd.DataFrame(out, index=list(truth.index), columns=list(truth.columns))
