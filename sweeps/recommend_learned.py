"""The learned strategies that need a sweep's embeddings, for ``whichmodel recommend``: ChoiceNet
v1, v2, v3 and the nearest task by Task2Vec (Appendix H).

Each is trained on the fine-tune results of the experiment's *other* tasks -- those of the sweep
file, whose data recommend can load to embed them -- and applied to the new task through its
embedding (and, for v3, its probe scores). Of the task itself only its probe scores are kept:
its fine-tune results (test and validation), which a sweep or an earlier recommend may have
logged, are dropped before anything is fitted. The report's functions do the
work (:func:`sweeps.reporting.choicenet_predictions`, :func:`sweeps.reporting.nearest_task_predictions`)
over the sweep file's models, so the new task is ranked as the report's leave-one-task-out fold
ranks a task, with every other task in training.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pandas as pd

from selection.nearest_task import NEAREST_TASK
from selection.records import GROUND_TRUTH, PROXY_PREFIX
from sweeps.config import WhichModelError

#: strategy name -> ChoiceNet version (None: the nearest task)
LEARNED = {"choicenet_v1": "v1", "choicenet_v2": "v2", "choicenet_v3": "v3", NEAREST_TASK: None}


def training_tasks(records: pd.DataFrame, task: str, plan) -> tuple[list[str], list[str]]:
    """(usable, skipped): the experiment's other tasks with fine-tune results, split by whether
    the sweep file has them (their data can be loaded) or not (e.g. an earlier recommend's
    ImageFolder)."""
    others = sorted(set(records.loc[records["metric"] == GROUND_TRUTH, "task"]) - {task})
    return [t for t in others if t in plan.tasks], [t for t in others if t not in plan.tasks]


def check_learnable(name: str, records: pd.DataFrame, task: str, plan) -> tuple[list[str], list[str]]:
    """:func:`training_tasks`; a learned strategy needs one usable."""
    usable, skipped = training_tasks(records, task, plan)
    if not usable:
        why = (f"; its tasks with results ({', '.join(skipped)}) are not in {plan.path}, so they "
               "cannot be embedded" if skipped else "")
        raise WhichModelError(f"--strategy {name!r} learns from the fine-tune results of the other "
                              f"tasks of {plan.path} in experiment {plan.cfg.experiment!r}, which "
                              f"has none{why}; run the sweep first or choose another strategy")
    return usable, skipped


def learned_table(name: str, plan, paths, task: str, ref: dict[str, Any], records: pd.DataFrame,
                  metadata: pd.DataFrame | None, stream) -> pd.DataFrame:
    """The strategy's scores (index model, one column: ``task``) of the sweep file's models,
    learned from the other tasks' fine-tune results (module docstring)."""
    from lightning_modules.choicenet import targets_from_records
    from sweeps.driver import trial_settings
    from sweeps.reporting import choicenet_predictions, nearest_task_predictions

    usable, skipped = check_learnable(name, records, task, plan)
    sub = replace(plan, tasks=[*usable, task], task_refs={**plan.task_refs, task: ref})
    own = (records["task"] == task) & ~records["metric"].str.startswith(PROXY_PREFIX)  # its results
    kept = records[~own & records["task"].isin(sub.tasks) & records["model"].isin(sub.models)]
    targets = targets_from_records(kept)
    trial = trial_settings(sub, paths)
    print(f"[whichmodel] {name}: learning from {len(usable)} other task(s) of experiment "
          f"{plan.cfg.experiment!r}" + (f" ({', '.join(skipped)} skipped: not in the sweep file)"
                                        if skipped else ""), file=stream, flush=True)
    version = LEARNED[name]
    if version is None:
        table, nearest, _ = nearest_task_predictions(targets, sub, trial)
        print(f"[whichmodel] nearest task of {task} by Task2Vec: {nearest.get(task)}",
              file=stream, flush=True)
    else:
        tables, _ = choicenet_predictions(targets, sub, paths, trial, stream, records=kept,
                                          metadata=metadata, versions=(version,), only=[task])
        table = tables[name]
    return table[[task]]
