"""The regret report of a sweep: records from MLflow (or files) -> tables, files, MLflow artifacts.

    whichmodel report --experiment quickstart
    whichmodel report --records results.csv --models models.csv --format json --output -

Writes ``reports/<experiment>/`` (``report.html``, ``regret.{md,csv,json}``, the figures) and
logs them as artifacts of the experiment's report run (one per pool), whose description is the
leaderboard; prints the leaderboard (``--detail``: and the per-task tables).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from sweeps.config import WhichModelError


def proxy_notes() -> dict[str, str]:
    """Why each registered proxy may have no score on a pair (its ``nan_reason``)."""
    from selection.proxies import get_proxy, list_proxies

    return {n: get_proxy(n).nan_reason for n in list_proxies() if get_proxy(n).nan_reason}


def report_from_tables(records: pd.DataFrame, metadata: pd.DataFrame | None,
                       task_groups: dict[str, str] | None, **kwargs: Any) -> dict[str, Any]:
    """:func:`selection.report.compute_report` with the registry's proxy notes; bad input is a
    ``WhichModelError`` (one line, exit 2)."""
    from selection.records import RecordsError
    from selection.report import compute_report

    kwargs.setdefault("proxy_notes", proxy_notes())
    kwargs.setdefault("timings", True)
    try:
        return compute_report(records, metadata, task_groups=task_groups, **kwargs)
    except (RecordsError, KeyError, ValueError) as exc:
        raise WhichModelError(str(exc).strip('"')) from None


def report_experiment(tracker, *, protocol_hashes: dict[str, str] | None = None, learned=None,
                      **kwargs: Any) -> dict[str, Any]:
    """The report of an experiment's finished runs. ``learned(records, metadata) -> (predictions,
    rankings, extra)`` adds the learned strategies (ChoiceNet, nearest task) and extra report
    keys when given."""
    records, metadata, groups = tracker.records(protocol_hashes)
    if records.empty:
        raise WhichModelError(f"experiment {tracker.experiment!r} has no finished pair runs to "
                              "report on; run a sweep first (whichmodel run CONFIG)")
    predictions, rankings, extra = (learned(records, metadata) if learned is not None
                                    else (None, None, {}))
    kwargs.setdefault("test_results", test_results(tracker, protocol_hashes))
    report = report_from_tables(records, metadata, groups, predictions=predictions,
                                rankings=rankings, **kwargs)
    report.update(extra)
    report["experiment"] = tracker.experiment
    return report


def test_results(tracker, protocol_hashes: dict[str, str] | None = None
                 ) -> dict[str, dict[str, Any]]:
    """``{task: {model: correct}}`` from the fine-tune runs' predictions artifacts
    (``predictions/<model>@<task>.npz``): 1 where a repetition's selected run got a test example
    right, (repetitions, examples). Runs without the artifact are left out (the report then
    resamples their task's repetitions only)."""
    import tempfile

    import numpy as np

    finished, _ = tracker.runs_by_key(protocol_hashes)
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in finished.values():
            tags = run.data.tags
            if tags.get("protocol") != "finetune":
                continue
            name = f"predictions/{tags['model']}@{tags['task']}.npz"
            listed = {a.path for a in tracker.client.list_artifacts(run.info.run_id, "predictions")}
            if name not in listed:  # a run from before predictions were kept
                continue
            path = tracker.client.download_artifacts(run.info.run_id, name, tmp)
            with np.load(path) as npz:
                correct = npz["predictions"] == npz["labels"][None, :]
            out.setdefault(tags["task"], {})[tags["model"]] = correct
    return out


def probe_model(plan, key: str, chosen: str | None) -> str:
    """A fixed probe network of the sweep: ``chosen``, else its first generalist, else its first
    model."""
    name = chosen or next((m for m in plan.models if "generalist" in m), plan.models[0])
    if name not in plan.models:
        raise WhichModelError(f"{plan.path}: key '{key}': {name!r} is not in this sweep's models "
                              f"({', '.join(plan.models)})")
    return name


def learned_predictions(records: pd.DataFrame, plan, paths, stream=None, metadata=None):
    """The sweep's learned strategies, each leave-one-task-out: ChoiceNet v1/v2 (predicted
    accuracy), v3 (ranking scores) and the nearest task by Task2Vec (Appendix H); and the
    nearest task of each task for the report. Returns (predictions, rankings, extra)."""
    from lightning_modules.choicenet import targets_from_records
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
        table, nearest, seconds = nearest_task_predictions(targets, plan, trial)
        predictions["nearest_task"] = table
        extra["nearest_task"] = {"nearest": nearest, "seconds": seconds,
                                 "probe_model": probe_model(plan, "report.nearest_task.probe_model",
                                                            report.nearest_task.probe_model)}
        print(f"[whichmodel] nearest task by Task2Vec on {len(nearest)} tasks in {seconds:.0f}s",
              file=stream, flush=True)
    return predictions, rankings, extra


def nearest_task_predictions(targets: pd.DataFrame, plan, trial):
    """Task2Vec embeddings of the sweep's tasks with its fixed probe network, their distances,
    and the nearest-task table (:mod:`selection.nearest_task`)."""
    from lightning_modules.task2vec import task2vec_embedding
    from selection.nearest_task import nearest_task_table, task_distances

    settings = plan.cfg.report.nearest_task
    start = time.perf_counter()
    probe, _ = trial.load_model(probe_model(plan, "report.nearest_task.probe_model",
                                            settings.probe_model))
    embeddings = {}
    for t in plan.tasks:
        data = trial.load_task(t)
        x, y = data.splits["train800"]
        embeddings[data.name] = task2vec_embedding(probe, x, y, data.num_classes,
                                                   head_steps=settings.head_steps,
                                                   max_examples=settings.max_examples,
                                                   seed=plan.cfg.seed)
    table, nearest = nearest_task_table(targets, task_distances(embeddings))
    return table, nearest, time.perf_counter() - start


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
    from selection.records import aggregate_records, list_proxy_metrics, pivot_metric

    cfg = plan.cfg
    settings = cfg.report.choicenet
    start = time.perf_counter()
    backbones = {m: trial.load_model(m)[0] for m in plan.models}
    tasks = {t: trial.load_task(t) for t in plan.tasks}
    probe_name = probe_model(plan, "report.choicenet.probe_model", settings.probe_model)
    probe_x, probe_y = load_probe_set(paths.data_root, cfg.image_size, cfg.seed)
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
    print(f"[whichmodel] ChoiceNet {'/'.join(versions)} fitted leave-one-task-out on "
          f"{targets.shape[1]} tasks in {time.perf_counter() - start:.0f}s", file=stream, flush=True)
    return predictions, seconds


def write_and_log(report: dict[str, Any], out_dir: Path, tracker=None, stream=None,
                  detail: bool = False) -> dict[str, Path]:
    """Write the report's files, print the report and log the files as the report run's
    artifacts (its MLflow description: the leaderboard in Markdown).

    By default the print is the leaderboard, one line per task group and where the files are,
    no line wider than 100 columns (:func:`selection.report_leaderboard.format_leaderboard`);
    ``detail`` adds the per-task tables, split to the terminal's width."""
    from selection.report_files import write_report
    from selection.report_leaderboard import format_leaderboard, leaderboard_markdown, terminal_width
    from selection.report_text import format_table

    stream = stream or sys.stdout
    files = write_report(report, out_dir)
    if detail:
        print(format_table(report, width=terminal_width(None)), file=stream)
    shown = [str(files["html"]), *(str(p) for k, p in files.items() if k != "html")]
    print(format_leaderboard(report, files=shown, width=terminal_width()), file=stream, end="")
    if tracker is not None:
        tracker.log_report(report.get("pool", "all"), files.values(),
                           tags={"pool": report.get("pool", "all")},
                           description=leaderboard_markdown(report))
    return files


def results_table(report: dict[str, Any], width: int | None = None) -> str:
    """Fine-tune test accuracy per model and task, best per task marked with *; with ``width``
    split into blocks of tasks no wider than that."""
    from selection.report_leaderboard import fit_table

    acc = report["finetune_test_acc"]
    tasks = report["tasks"]
    models = sorted({m for t in tasks for m in acc.get(t, {})})
    rows = []
    for m in models:
        cells = []
        for t in tasks:
            v = acc.get(t, {}).get(m)
            best = v is not None and v == max(acc[t].values())
            cells.append("-" if v is None else f"{v:.3f}" + ("*" if best else " "))
        rows.append([m, *cells])
    return fit_table(["model", *tasks], rows, 1, width or 10_000)
