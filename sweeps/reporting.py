"""The regret report of a sweep: records from MLflow (or files) -> tables, files, MLflow artifacts.

    whichmodel report --experiment quickstart
    whichmodel report --records results.csv --models models.csv --format json --output -

Writes ``reports/<experiment>/`` (``report.html``, ``regret.{md,csv,json}``, the figures) and
logs them as artifacts of the experiment's report run (one per pool), whose description is the
leaderboard; prints the leaderboard (``--detail``: and the per-task tables).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from whichmodel.errors import WhichModelError


def proxy_notes() -> dict[str, str]:
    """Why each registered proxy may have no score on a pair (its ``nan_reason``)."""
    from selection.proxies import get_proxy, list_proxies

    return {n: get_proxy(n).nan_reason for n in list_proxies() if get_proxy(n).nan_reason}


def report_from_tables(records: pd.DataFrame, metadata: pd.DataFrame | None,
                       task_groups: dict[str, str] | None, **kwargs: Any) -> dict[str, Any]:
    """:func:`selection.report.compute.compute_report` with the registry's proxy notes; bad input is a
    ``WhichModelError`` (one line, exit 2)."""
    from selection.report.compute import compute_report

    kwargs.setdefault("proxy_notes", proxy_notes())
    kwargs.setdefault("timings", True)
    return compute_report(records, metadata, task_groups=task_groups, **kwargs)


def report_experiment(tracker, *, protocol_hashes: dict[str, str] | None = None, learned=None,
                      artifacts_cache: Path | None = None, **kwargs: Any) -> dict[str, Any]:
    """The report of an experiment's finished runs. ``learned(records, metadata) -> (predictions,
    rankings, extra)`` adds the learned strategies (ChoiceNet, nearest task) and extra report
    keys when given; ``artifacts_cache``: where the predictions artifacts are kept
    (:mod:`sweeps.tracking.artifacts`)."""
    records, metadata, groups = tracker.records(protocol_hashes)
    if records.empty:
        raise WhichModelError(f"experiment {tracker.experiment!r} has no finished pair runs to "
                              "report on; run a sweep first (whichmodel run CONFIG)")
    predictions, rankings, extra = (learned(records, metadata) if learned is not None
                                    else (None, None, {}))
    kwargs.setdefault("test_results", test_results(tracker, protocol_hashes, artifacts_cache))
    report = report_from_tables(records, metadata, groups, predictions=predictions,
                                rankings=rankings, **kwargs)
    report.update(extra)
    from selection.report.costs import add_fit_seconds, learned_fits

    add_fit_seconds(report, learned_fits(extra))  # ChoiceNet's and Task2Vec's, in compute
    if {"choicenet_v1", "choicenet_v2"} <= set(predictions or {}):  # the study's v1 and v2 both
        from selection.report.learned import study_claim

        report["choicenet_study_claim"] = study_claim(report["choicenet"])
    report["experiment"] = tracker.experiment
    return report


def test_results(tracker, protocol_hashes: dict[str, str] | None = None,
                 cache_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """``{task: {model: correct}}`` from the fine-tune runs' predictions artifacts
    (``predictions/<model>@<task>.npz``): 1 where a repetition's selected run got a test example
    right, (repetitions, examples). Fetched concurrently and kept in ``cache_dir``
    (:func:`sweeps.tracking.artifacts.fetch_artifacts`). Runs without the artifact are left out
    (the report then resamples their task's repetitions only)."""
    import tempfile

    import numpy as np

    from sweeps.tracking.artifacts import fetch_artifacts

    finished, _ = tracker.runs_by_key(protocol_hashes)
    runs = [r for r in finished.values() if r.data.tags.get("protocol") == "finetune"]
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = fetch_artifacts(tracker, [(r, f"predictions/{r.data.tags['model']}@"
                                              f"{r.data.tags['task']}.npz") for r in runs],
                                cache_dir or Path(tmp), label="test predictions")
        for run in runs:
            path = paths.get(run.info.run_id)
            if path is None:  # a run from before predictions were kept
                continue
            with np.load(path) as npz:
                correct = npz["predictions"] == npz["labels"][None, :]
            out.setdefault(run.data.tags["task"], {})[run.data.tags["model"]] = correct
    return out


def write_and_log(report: dict[str, Any], out_dir: Path, tracker=None, stream=None,
                  detail: bool = False, fingerprint: str | None = None) -> dict[str, Path]:
    """Write the report's files, print the report and log the files as the report run's
    artifacts (its MLflow description: the leaderboard in Markdown).

    By default the print is the leaderboard, one line per task group and where the files are,
    no line wider than 100 columns (:func:`selection.report.leaderboard.format_leaderboard`);
    ``detail`` adds the per-task tables, split to the terminal's width. Files that already hold
    this report are not written again, nor is a report run that holds ``fingerprint``'s."""
    from selection.report.files import write_report
    from selection.report.leaderboard import format_leaderboard, leaderboard_markdown
    from selection.report.tables import terminal_width
    from selection.report.text import format_table

    stream = stream or sys.stdout
    files = written_report(report, out_dir) or write_report(report, out_dir)
    if detail:
        print(format_table(report, width=terminal_width(None)), file=stream)
    shown = [str(files["html"]), *(str(p) for k, p in files.items() if k != "html")]
    print(format_leaderboard(report, files=shown, width=terminal_width()), file=stream, end="")
    if tracker is not None:
        tracker.log_report(report.get("pool", "all"), files.values(),
                           tags={"pool": report.get("pool", "all")},
                           description=leaderboard_markdown(report), fingerprint=fingerprint)
    return files


def written_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path] | None:
    """The report's files in ``out_dir`` when every one is there and ``regret.json`` is this
    report (a reused report need not render its figures again); else None."""
    import json

    from selection.report.files import REPORT_FILES

    paths = {kind: Path(out_dir) / name for kind, name in REPORT_FILES.items()}
    if not all(p.is_file() for p in paths.values()):
        return None
    try:
        same = json.loads(paths["json"].read_text()) == json.loads(json.dumps(report))
    except (OSError, ValueError):
        return None
    return paths if same else None


def results_table(report: dict[str, Any], width: int | None = None) -> str:
    """Fine-tune test accuracy per model and task (:func:`selection.report.text.accuracy_table`),
    best per task marked with *; with ``width`` split into blocks of tasks no wider than that."""
    from selection.report.tables import fit_table
    from selection.report.text import accuracy_table

    header, rows = accuracy_table(report, 3, lambda text: text + "*", lambda text: text + " ")
    return fit_table(header, rows, 1, width or 10_000)
