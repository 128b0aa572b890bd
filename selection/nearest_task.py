"""The nearest-task strategy (Renggli et al. 2022, Appendix H): the best models of the most
similar other task.

Task similarity is Task2Vec's (Achille et al. 2019): embeddings are diagonal Fisher
informations of a fixed probe network (:mod:`lightning_modules.task2vec`), compared with the
normalised cosine distance of Appendix H, d(a, b) = cos-distance(a / (a + b), b / (a + b)), which
discounts filters whose Fisher is large for every task. Leave-one-task-out: task t's ranking is
the fine-tune accuracy of the models on its nearest *other* task, so nothing of t's own results
is read; a task's table column is that ranking, scored as a predicted-accuracy table.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

NEAREST_TASK = "nearest_task"


def task2vec_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Appendix H's normalised cosine distance between two Task2Vec embeddings."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"task2vec embeddings of different lengths {a.size} and {b.size}: embed "
                         "every task with the same probe network")
    total = a + b
    safe = np.where(total > 0, total, 1.0)
    u, v = np.where(total > 0, a / safe, 0.0), np.where(total > 0, b / safe, 0.0)
    denom = float(np.linalg.norm(u) * np.linalg.norm(v))
    return 1.0 - float(u @ v) / denom if denom > 0 else 1.0


def task_distances(embeddings: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Symmetric task x task distance table (0 on the diagonal)."""
    names = sorted(embeddings)
    d = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            d[i, j] = d[j, i] = task2vec_distance(embeddings[a], embeddings[names[j]])
    return pd.DataFrame(d, index=pd.Index(names, name="task"), columns=pd.Index(names, name="task"))


def nearest_tasks(distances: pd.DataFrame, truth: pd.DataFrame) -> dict[str, str]:
    """For each task with an embedding, the nearest other task that has fine-tune results (ties:
    the first by name)."""
    known = [t for t in distances.columns if t in truth.columns and truth[t].notna().any()]
    out = {}
    for t in distances.index:
        others = [u for u in known if u != t]
        if others:
            row = distances.loc[t, others]
            out[t] = str(row.index[int(np.argmin(row.to_numpy()))])
    return out


def nearest_task_table(truth: pd.DataFrame, distances: pd.DataFrame) -> tuple[pd.DataFrame,
                                                                             dict[str, str]]:
    """The predicted-accuracy table of the nearest-task strategy (index model, columns task: the
    accuracies on the nearest other task) and the nearest task of each task."""
    nearest = nearest_tasks(distances, truth)
    table = pd.DataFrame({t: truth[u] for t, u in nearest.items()}, index=truth.index)
    table.index.name, table.columns.name = "model", "task"
    return table.astype(float), nearest
