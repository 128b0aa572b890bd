"""ChoiceNet v3, the project's own: it learns the order of models within a task.

v1 and v2 predict absolute fine-tune accuracy, which is dominated by how hard each task is; a
strategy needs only the order of the models inside a task. v3 therefore fits the fine-tune
accuracy *standardised within the task* (a z-score over the task's models, MSE), from:

- the v2 model and task embeddings (:mod:`lightning_modules.choicenet`), each reduced by a
  learned low-rank linear map to ``rank``; their elementwise product (how this model suits this
  task) and their sum;
- the pair's proxy scores standardised within the task (0, the task's mean, where a proxy has no
  score);
- the model's metadata: log10 of its parameters and of its upstream data size, standardised
  over the models (0 where unknown).

Trained leave-one-task-out like v1 and v2: column t comes from a net that never saw a target of
t (its proxy scores are the inputs of its prediction, never a training row). Hyper-parameters
are fixed (``report.choicenet.rank`` and ``steps`` in the sweep file), not tuned on held-out
tasks. Its outputs are ranking scores, not accuracies: the report ranks by them and has no MSE
for v3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.choicenet import (
    DEFAULT_STEPS,
    ChoiceNetBase,
    check_targets,
    fc_head,
    stack_embeddings,
    standardise_embeddings,
    task_columns,
    train_net,
)
from whichmodel.zscores import standardise_within_task, zscore_finite

META_KEYS = ("params", "upstream_size")


class ChoiceNetV3(ChoiceNetBase):
    """Low-rank model and task reductions (product and sum) ++ pair features -> the FC head;
    a real-valued ranking score (no sigmoid)."""

    def __init__(self, model_dim: int, task_dim: int, pair_dim: int, rank: int = 16,
                 hidden: int = 64, dropout: float = 0.2, lr: float = 3e-3,
                 weight_decay: float = 1e-4):
        super().__init__(lr, weight_decay)
        self.save_hyperparameters()
        self.model_proj = nn.Linear(model_dim, rank, bias=False)
        self.task_proj = nn.Linear(task_dim, rank, bias=False)
        self.head = fc_head(2 * rank + pair_dim, hidden, dropout)

    def forward(self, model_x: torch.Tensor, task_x: torch.Tensor,
                pair_x: torch.Tensor) -> torch.Tensor:
        m, t = self.model_proj(model_x), self.task_proj(task_x)
        return self.head(torch.cat([m * t, m + t, pair_x], dim=1)).squeeze(1)

    def training_step(self, batch, batch_idx):
        m, t, p, y = batch
        return F.mse_loss(self(m, t, p), y)


def metadata_features(models: list[str], metadata: pd.DataFrame | None) -> np.ndarray:
    """(models, len(META_KEYS)): log10(1 + value), standardised over the models; 0 if unknown."""
    cols = []
    for key in META_KEYS:
        if metadata is None or key not in metadata.columns:
            cols.append(np.zeros(len(models)))
            continue
        raw = pd.to_numeric(metadata[key].reindex(models), errors="coerce").to_numpy(float)
        cols.append(zscore_finite(np.log10(1.0 + np.clip(raw, 0.0, None))))
    return np.stack(cols, axis=1)


def fit_predict_v3(model_emb: Mapping[str, np.ndarray], task_emb: Mapping[str, np.ndarray],
                   targets: pd.DataFrame, proxies: Mapping[str, pd.DataFrame],
                   metadata: pd.DataFrame | None = None, *, seed: int = 0,
                   steps: int = DEFAULT_STEPS, batch_size: int = 64, rank: int = 16,
                   only: Sequence[str] | None = None, **net_kwargs) -> pd.DataFrame:
    """Leave-one-task-out ranking scores (index model, columns task) of ChoiceNet v3: a task
    with no target is predicted from all the others (a new task); ``only``: the tasks to
    predict (default all; the other columns stay NaN)."""
    models, mx = stack_embeddings(model_emb, "model")
    tasks, tx = stack_embeddings(task_emb, "task")
    truth = check_targets(targets).reindex(index=models, columns=tasks)
    y = standardise_within_task(truth).to_numpy(dtype=float)
    pz = [np.nan_to_num(standardise_within_task(p.reindex(index=models, columns=tasks))
                        .to_numpy(dtype=float), nan=0.0) for _, p in sorted(proxies.items())]
    meta = metadata_features(models, metadata)
    known_i, known_j = np.nonzero(np.isfinite(y))
    out = np.full((len(models), len(tasks)), np.nan)

    def pair(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return np.concatenate([np.stack([z[i, j] for z in pz], axis=1) if pz
                               else np.zeros((len(i), 0)), meta[i]], axis=1)

    for j in task_columns(tasks, only):
        train = known_j != j
        if not train.any():
            continue
        ri, rj = known_i[train], known_j[train]
        m_std = standardise_embeddings(mx, np.unique(ri), per_feature=False)
        t_std = standardise_embeddings(tx, np.unique(rj), per_feature=False)
        torch.manual_seed(seed)
        p = pair(ri, rj)
        net = ChoiceNetV3(mx.shape[1], tx.shape[1], p.shape[1], rank=rank, **net_kwargs)
        train_net(net, (m_std[ri], t_std[rj], p, y[ri, rj]), seed=seed, steps=steps,
                  batch_size=batch_size)
        everyone = np.arange(len(models))
        with torch.no_grad():
            out[:, j] = net(torch.as_tensor(m_std, dtype=torch.float32),
                            torch.as_tensor(np.repeat(t_std[j:j + 1], len(models), axis=0),
                                            dtype=torch.float32),
                            torch.as_tensor(pair(everyone, np.full(len(models), j)),
                                            dtype=torch.float32)).double().numpy()
    return pd.DataFrame(out, index=pd.Index(models, name="model"),
                        columns=pd.Index(tasks, name="task"))
