"""The learned strategies that need a sweep's embeddings: ChoiceNet v1, v2, v3 and the nearest
task by Task2Vec (Appendix H), fitted for a report (:func:`learned_predictions`, leave-one-task-out
over the sweep's tasks) or for ``whichmodel recommend`` (:func:`learned_table`, a new task).

For a recommendation each is trained on the fine-tune results of the experiment's *other*
tasks -- those of the sweep file, whose data recommend can load to embed them -- and applied to
the new task through its embedding (and, for v3, its probe scores). Of the task itself only its
probe scores are kept: its fine-tune results (test and validation), which a sweep or an earlier
recommend may have logged, are dropped before anything is fitted. The report's functions do the
work (:func:`choicenet_predictions`, :func:`nearest_task_predictions`) over the sweep file's
models, so the new task is ranked as the report's leave-one-task-out fold ranks a task, with
every other task in training.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import Any

import pandas as pd

from selection.nearest_task import NEAREST_TASK
from selection.records import GROUND_TRUTH, PROXY_PREFIX, targets_from_records
from whichmodel.errors import WhichModelError

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
    from sweeps.driver import trial_settings

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
        table, nearest, _ = nearest_task_predictions(targets, sub, trial, paths.home)
        print(f"[whichmodel] nearest task of {task} by Task2Vec: {nearest.get(task)}",
              file=stream, flush=True)
    else:
        tables, _ = choicenet_predictions(targets, sub, paths, trial, stream, records=kept,
                                          metadata=metadata, versions=(version,), only=[task])
        table = tables[name]
    return table[[task]]


def probe_model(plan, key: str, chosen: str | None) -> str:
    """A fixed probe network of the sweep: ``chosen``, else the model with the most upstream
    data (metadata ``upstream_size``; of those tied, the first the sweep lists). A sweep whose
    models have no upstream size must choose one (a named error)."""
    sizes = {m: (plan.metadata.get(m) or {}).get("upstream_size") for m in plan.models}
    known = [m for m in plan.models if isinstance(sizes[m], (int, float)) and sizes[m] == sizes[m]]
    if chosen is None and not known:
        raise WhichModelError(f"{plan.path}: key '{key}': no model of the sweep has an "
                              "upstream_size to choose the probe network by; name one")
    name = chosen or max(known, key=lambda m: (sizes[m], -plan.models.index(m)))
    if name not in plan.models:
        raise WhichModelError(f"{plan.path}: key '{key}': {name!r} is not in this sweep's models "
                              f"({', '.join(plan.models)})")
    return name


def learned_predictions(records: pd.DataFrame, plan, paths, stream=None, metadata=None):
    """The sweep's learned strategies, each leave-one-task-out: ChoiceNet v1/v2 (predicted
    accuracy), v3 (ranking scores) and the nearest task by Task2Vec (Appendix H); and the
    nearest task of each task for the report. Returns (predictions, rankings, extra)."""
    from sweeps.driver import trial_settings

    targets = targets_from_records(records)
    report = plan.cfg.report
    if targets.shape[1] < 2:  # leave-one-task-out needs another task to learn from
        return {}, {}, {}
    stream = stream or sys.stderr
    trial = trial_settings(plan, paths)
    predictions, rankings, extra = {}, {}, {}
    if report.choicenet.enabled:
        tables, seconds = choicenet_predictions(targets, plan, paths, trial, stream,
                                                records=records, metadata=metadata)
        rankings["choicenet_v3"] = tables.pop("choicenet_v3")
        predictions.update(tables)
        extra["choicenet_seconds"] = seconds
    if report.nearest_task.enabled:
        table, nearest, seconds = nearest_task_predictions(targets, plan, trial, paths.home)
        predictions["nearest_task"] = table
        extra["nearest_task"] = {"nearest": nearest, "seconds": seconds,
                                 "probe_model": probe_model(plan, "report.nearest_task.probe_model",
                                                            report.nearest_task.probe_model)}
        print(f"[whichmodel] nearest task by Task2Vec on {len(nearest)} tasks in {seconds:.0f}s",
              file=stream, flush=True)
    return predictions, rankings, extra


def nearest_task_predictions(targets: pd.DataFrame, plan, trial, home=None):
    """Task2Vec embeddings of the sweep's tasks with its fixed probe network, their distances,
    and the nearest-task table (:mod:`selection.nearest_task`). The distances are kept in
    ``home``'s cache (:class:`sweeps.cache.FitCache`), keyed by the probe network's weights, the
    tasks' splits, the settings and the seed; the seconds are those of the fit."""
    from lightning_modules.task2vec import task2vec_embedding
    from lightning_modules.task_data import splits_digest
    from selection.nearest_task import nearest_task_table, task_distances
    from sweeps.cache import FitCache, digest, frame_from_json, frame_to_json, module_digest

    settings = plan.cfg.report.nearest_task
    start = time.perf_counter()
    probe, _ = trial.load_model(probe_model(plan, "report.nearest_task.probe_model",
                                            settings.probe_model))
    tasks = [trial.load_task(t) for t in plan.tasks]
    key = digest({"probe": module_digest(probe), "settings": settings.model_dump(),
                  "seed": plan.cfg.seed, "tasks": {d.name: splits_digest(d.splits) for d in tasks}})
    cache = FitCache(home)
    hit = cache.get("task2vec", key)
    if hit is not None:
        distances, seconds = frame_from_json(hit["distances"]), hit["seconds"]
        print(f"[whichmodel] Task2Vec: the embeddings of {len(tasks)} tasks reused (same probe "
              "network, tasks and settings)", file=sys.stderr, flush=True)
    else:
        embeddings = {}
        for data in tasks:
            x, y = data.splits["train800"]
            embeddings[data.name] = task2vec_embedding(probe, x, y, data.num_classes,
                                                       head_steps=settings.head_steps,
                                                       max_examples=settings.max_examples,
                                                       seed=plan.cfg.seed)
        distances, seconds = task_distances(embeddings), time.perf_counter() - start
        cache.put("task2vec", key, {"distances": frame_to_json(distances), "seconds": seconds})
    table, nearest = nearest_task_table(targets, distances)
    return table, nearest, seconds


def choicenet_predictions(targets: pd.DataFrame, plan, paths, trial, stream, records=None,
                          metadata=None, *, versions=("v1", "v2", "v3"), only=None
                          ) -> tuple[dict[str, pd.DataFrame], dict[str, float]]:
    """Leave-one-task-out ChoiceNet v1 and v2 predictions (accuracies) and v3 ranking scores
    for the plan's models and tasks, and the seconds each took to fit (embeddings apart).
    ``versions``: which to fit; ``only``: the tasks to predict (default all; a task without
    targets is predicted from all the others, as ``whichmodel recommend`` does for a new task).

    Embeddings come from the sweep's models (zoo or hub) and its tasks' training images (see
    :mod:`lightning_modules.choicenet` for the architecture-independent choice); the fixed probe
    set and probe model keep them comparable between reports. v3 also reads the records' proxy
    scores and the models' metadata (:mod:`lightning_modules.choicenet_v3`).
    """
    from lightning_modules.choicenet import compute_embeddings, load_probe_set, predict_choicenet
    from lightning_modules.choicenet_v3 import fit_predict_v3
    from lightning_modules.task_data import splits_digest
    from selection.records import aggregate_records, list_proxy_metrics, pivot_metric
    from sweeps.cache import (
        FitCache,
        array_digest,
        digest,
        frame_digest,
        frame_from_json,
        frame_to_json,
        module_digest,
    )

    cfg = plan.cfg
    settings = cfg.report.choicenet
    start = time.perf_counter()
    backbones = {m: trial.load_model(m)[0] for m in plan.models}
    tasks = {t: trial.load_task(t) for t in plan.tasks}
    probe_name = probe_model(plan, "report.choicenet.probe_model", settings.probe_model)
    probe_x, probe_y = load_probe_set(paths.data_root, cfg.image_size, cfg.seed)
    # everything the fits read: weights, splits, the probe set, the results, the settings
    key = digest({"models": {m: module_digest(b) for m, b in backbones.items()},
                  "tasks": {t: splits_digest(d.splits) for t, d in tasks.items()},
                  "probe_set": array_digest(probe_x, probe_y), "probe_model": probe_name,
                  "settings": settings.model_dump(), "seed": cfg.seed, "versions": list(versions),
                  "only": only, "targets": frame_digest(targets),
                  "records": frame_digest(records.sort_values(list(records.columns)).reset_index(
                      drop=True)) if records is not None and "v3" in versions else None,
                  "metadata": frame_digest(metadata) if "v3" in versions else None})
    cache = FitCache(paths.home)
    hit = cache.get("choicenet", key)
    if hit is not None:
        print(f"[whichmodel] ChoiceNet {'/'.join(versions)}: the fit of the same models, tasks, "
              "results and settings reused", file=stream, flush=True)
        return ({k: frame_from_json(v) for k, v in hit["predictions"].items()},
                hit["seconds"])
    emb = compute_embeddings(backbones, tasks, probe_x, probe_y,
                             probe_backbone=backbones[probe_name])
    embedded = time.perf_counter()
    seconds, predictions = {}, {}
    for version in [v for v in ("v1", "v2") if v in versions]:
        t0 = time.perf_counter()
        predictions.update(predict_choicenet(emb, targets, seed=cfg.seed, steps=settings.steps,
                                             rank=settings.rank, versions=(version,), only=only))
        seconds[version] = time.perf_counter() - t0
    if "v3" in versions:
        agg = aggregate_records(records) if records is not None else None
        proxies = ({m: pivot_metric(agg, m) for m in list_proxy_metrics(agg)} if agg is not None
                   else {})
        t0 = time.perf_counter()
        predictions["choicenet_v3"] = fit_predict_v3(
            emb.model["v2"], emb.task["v2"], targets, proxies, metadata, seed=cfg.seed,
            steps=settings.steps, rank=settings.rank, only=only)
        seconds["v3"] = time.perf_counter() - t0
    seconds["embeddings"] = embedded - start
    cache.put("choicenet", key, {"predictions": {k: frame_to_json(v) for k, v in predictions.items()},
                                 "seconds": seconds})
    print(f"[whichmodel] ChoiceNet {'/'.join(versions)} fitted leave-one-task-out on "
          f"{targets.shape[1]} tasks in {time.perf_counter() - start:.0f}s", file=stream, flush=True)
    return predictions, seconds
