"""How well the learned strategies predict: ChoiceNet v1/v2 (predicted accuracies: MSE and rank
agreement), ChoiceNet v3, ``choicenet_records`` and the ensembles (ranking scores: rank
agreement, no MSE), and the ChoiceNet study's claim that v2 cuts v1's MSE by 80%.

:func:`learned_section` is the report's ``choicenet`` block (:func:`selection.report.compute.
compute_report` calls it); :func:`study_claim` is added by the code that fits ChoiceNet for a
sweep's report (:func:`sweeps.learned.learned_predictions`), the one place the study's v1 and v2
are both fitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from selection.learners import is_records_learner
from selection.rank_agreement import pearson, weighted_tau
from selection.rankings import ScoreStrategy

CHOICENET_VERSIONS = ("v1", "v2")
STUDY_CLAIM = "the ChoiceNet study: v2 cuts v1's MSE by 80%"


def _key(name: str) -> str:
    return name[len("choicenet_"):] if name.startswith("choicenet_") else name


def empty_block(tasks: list[str]) -> dict[str, Any]:
    return {"mse": None, "n_pairs": 0, "per_task_mse": {t: None for t in tasks},
            "weighted_tau": {t: None for t in tasks}, "pearson": {t: None for t in tasks}}


def prediction_summary(pred: dict[str, np.ndarray], accs: dict[str, np.ndarray],
                       tasks: list[str]) -> dict[str, Any]:
    """MSE (overall and per task) and rank agreement of predicted with fine-tune accuracy."""
    errors, per_task = [], {}
    for t in tasks:
        known = np.isfinite(pred[t])
        sq = (pred[t][known] - accs[t][known]) ** 2
        errors.append(sq)
        per_task[t] = float(sq.mean()) if sq.size else None
    every = np.concatenate(errors) if errors else np.zeros(0)
    return {"mse": float(every.mean()) if every.size else None, "n_pairs": int(every.size),
            "per_task_mse": per_task,
            "weighted_tau": {t: weighted_tau(accs[t], pred[t]) for t in tasks},
            "pearson": {t: pearson(accs[t], pred[t]) for t in tasks}}


def learned_section(inputs, names: list[str], built: Mapping[str, Any]) -> dict[str, Any]:
    """The report's ``choicenet`` block: per ChoiceNet version (``v1``, ``v2`` always present,
    empty without predictions; ``v3``), ``choicenet_records`` and each ``ensemble:*``, the MSE
    where the table is of accuracies and the rank agreement with the fine-tune accuracy, over
    each task's pool. ``inputs``: the report's :class:`selection.report.compute.ReportInputs`."""
    view, tasks = inputs.view, inputs.tasks
    out = {v: empty_block(tasks) for v in CHOICENET_VERSIONS}
    for name, table in [*inputs.predicted.items(), *inputs.ranked.items()]:
        if name.startswith("choicenet"):
            block = prediction_summary(view.values(table), view.task_accs, tasks)
            if name in inputs.ranked:  # ranking scores, not accuracies: no squared error
                block.update(mse=None, per_task_mse={t: None for t in tasks})
            out[_key(name)] = block
    for name in names:  # the records learners rank by scores: rank agreement, no squared error
        if is_records_learner(name) and isinstance(built[name], ScoreStrategy):
            block = prediction_summary(view.values(built[name].table), view.task_accs, tasks)
            out[name] = {**block, "mse": None, "per_task_mse": {t: None for t in tasks}}
    return out


def study_claim(choicenet: Mapping[str, Any]) -> dict[str, Any]:
    """The ChoiceNet study's claim against a report's ``choicenet`` block: ``reproduced`` when
    v2's MSE is at most 20% of v1's, ``same_direction`` when it is lower; null without both."""
    v1 = (choicenet.get("v1") or {}).get("mse")
    v2 = (choicenet.get("v2") or {}).get("mse")
    both = v1 is not None and v2 is not None and v1 > 0
    return {"claim": STUDY_CLAIM, "v1_mse": v1, "v2_mse": v2,
            "reduction": 1 - v2 / v1 if both else None,
            "reproduced": bool(v2 <= 0.2 * v1) if both else None,
            "same_direction": bool(v2 < v1) if both else None}
