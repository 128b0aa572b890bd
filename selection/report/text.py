"""The regret report as text: terminal tables and CSV, and the rows every output shares.

Each function reads the dict of :func:`selection.report.compute.compute_report` (documented
there): :func:`format_table` for a terminal, :func:`render_csv` for ``regret.csv``,
:func:`accuracy_table` and :func:`regret_rows` for every renderer (Markdown and HTML are built
from :mod:`selection.report.sections`). Rows are the tasks grouped by task group, each group
followed by its ``mean`` row, then the ungrouped tasks and the overall ``mean``
(:func:`report_rows`); columns follow :func:`strategy_order`. The figures read the same order
(:mod:`selection.report.plots`).
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from selection.records import GROUND_TRUTH
from selection.report.noise_text import has_noise, interval_rows, mark_cell, task_rows
from selection.report.tables import fit_table, number

CSV_COLUMNS = ("strategy", "budget", "task", "group", "relative_regret", "absolute_regret",
               "log_odds_regret")
MEAN_ROW = "mean"


def strategy_order(report: Mapping[str, Any]) -> list[str]:
    """The report's strategies in reporting order (``strategy_order``, else the ``strategies`` keys)."""
    return list(report.get("strategy_order") or report["strategies"])


def check_budget(report: Mapping[str, Any], budget: int | None) -> list[int]:
    budgets = [int(b) for b in report["budgets"]]
    if budget is None:
        return budgets
    if int(budget) not in budgets:
        raise ValueError(f"budget {budget!r} is not in the report; budgets reported: {budgets}")
    return [int(budget)]


def report_rows(report: Mapping[str, Any]) -> Iterator[tuple[str, str, str, str | None]]:
    """Rows as (group label, task label, kind, key): kind is task / group / mean; each group's
    tasks then its mean, the ungrouped tasks, the overall mean."""
    groups: Mapping[str, str | None] = report.get("task_groups") or {}
    tasks = list(report["tasks"])
    for group in sorted({g for g in groups.values() if g is not None}):
        for task in tasks:
            if groups.get(task) == group:
                yield group, task, "task", task
        yield group, MEAN_ROW, "group", group
    for task in tasks:
        if groups.get(task) is None:
            yield "", task, "task", task
    yield "", MEAN_ROW, "mean", None


def _cell(block: Mapping[str, Any], kind: str, key: str | None) -> float | None:
    if kind == "task":
        return block["per_task"].get(key)
    if kind == "group":
        return block["per_group"].get(key)
    return block["mean"]


def _fmt(value: float | None, digits: int = 4) -> str:
    return number(value, digits)


def _has_groups(report: Mapping[str, Any]) -> bool:
    return any(g is not None for g in (report.get("task_groups") or {}).values())


def regret_rows(report: Mapping[str, Any], budget: int,
                 which: str = "strategies") -> tuple[list[str], list[list[str]]]:
    names = strategy_order(report)
    grouped = _has_groups(report)
    header = (["group"] if grouped else []) + ["task"] + names
    rows = []
    for group, task, kind, key in report_rows(report):
        values = [_fmt(_cell(report[which][n][str(budget)], kind, key)) for n in names]
        if kind == "task" and which == "strategies":
            values = [mark_cell(report, n, budget, key, v) for n, v in zip(names, values)]
        rows.append(([group] if grouped else []) + [task] + values)
    return header, rows


def format_table(report: Mapping[str, Any], budget: int | None = None,
                 width: int | None = None) -> str:
    """Plain-text tables of relative regret (``whichmodel report --detail``): rows = tasks
    (grouped, with group means) and a ``mean`` row; columns = strategies; one table per budget,
    or only ``budget``. With ``width``, a table wider than that is split into blocks of columns
    (:func:`selection.report.tables.fit_table`)."""
    def table(header: list[str], rows: list[list[str]], n_labels: int) -> str:
        return fit_table(header, rows, n_labels, width or math.inf)

    out = []
    for b in check_budget(report, budget):
        header, rows = regret_rows(report, b)
        n_labels = len(header) - len(strategy_order(report))
        title = f"relative regret, pool '{report['pool']}', B = {b}"
        if "random" in report["strategies"]:
            title += " (random: exact expected regret)"
        out.append(title + "\n" + table(header, rows, n_labels))
    if has_noise(report):
        out.append("mean relative regret [95% interval] (~: within noise of the best)\n"
                   + table(*interval_rows(report), 1))
        out.append("noise of the ground truth per task\n" + table(*task_rows(report), 2))
    summary = _summary_rows(report)
    if summary:
        header = ["score", "mean weighted tau", "mean pearson", "tasks", "mse"]
        out.append(f"rank agreement with {GROUND_TRUTH} (mean over tasks where defined)\n"
                   + table(header, summary, 1))
    claim = claim_line(report)
    if claim:
        out.append(claim)
    skipped = report.get("skipped_tasks") or []
    if skipped:
        out.append(f"skipped tasks (no {GROUND_TRUTH} in the pool): {', '.join(skipped)}")
    if width:  # the sentences too
        out = [textwrap.fill(p, width) if "\n" not in p else p for p in out]
    return "\n\n".join(out) + "\n"


def defined_mean(values: Mapping[str, float | None]) -> tuple[float | None, int]:
    """The mean of the defined values (None if none) and how many there are."""
    defined = [v for v in values.values() if v is not None]
    return (float(np.mean(defined)) if defined else None), len(defined)


def _summary_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """Per proxy and per ChoiceNet version with predictions: mean weighted tau, mean Pearson,
    tasks where tau is defined, and (ChoiceNet) the MSE."""
    rows = []
    for proxy, by_task in (report.get("weighted_tau") or {}).items():
        tau, n = defined_mean(by_task)
        r, _ = defined_mean(report["pearson"][proxy])
        rows.append([proxy, _fmt(tau), _fmt(r), str(n), "-"])
    for version, block in (report.get("choicenet") or {}).items():
        if not block or not block.get("n_pairs"):
            continue
        tau, n = defined_mean(block["weighted_tau"])
        r, _ = defined_mean(block["pearson"])
        mse = "-" if block.get("mse") is None else _fmt(block["mse"], 5)
        rows.append([f"choicenet {version}", _fmt(tau), _fmt(r), str(n), mse])
    return rows


def claim_line(report: Mapping[str, Any]) -> str | None:
    """The ChoiceNet study's v2-over-v1 claim and whether this run reproduced it."""
    c = report.get("choicenet_study_claim") or {}
    if c.get("reduction") is None:
        return None
    verdict = ("reproduced" if c["reproduced"] else "same direction, smaller" if
               c["same_direction"] else "not reproduced")
    return (f"{c['claim']}; here v1 MSE {c['v1_mse']:.4f}, v2 {c['v2_mse']:.4f} "
            f"({c['reduction']:+.0%} reduction): {verdict}")


def _csv_number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def render_csv(report: Mapping[str, Any]) -> str:
    """Long CSV (``CSV_COLUMNS``): one row per strategy, budget and :func:`report_rows` row; group
    ``mean`` rows carry the group's name, the overall ``mean`` an empty group."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for name in strategy_order(report):
        for b in report["budgets"]:
            rel = report["strategies"][name][str(b)]
            ab = report["absolute"][name][str(b)]
            lo = report["log_odds"][name][str(b)]
            for group, task, kind, key in report_rows(report):
                writer.writerow([name, b, task, group, _csv_number(_cell(rel, kind, key)),
                                 _csv_number(_cell(ab, kind, key)),
                                 _csv_number(_cell(lo, kind, key))])
    return buf.getvalue()


def accuracy_table(report: Mapping[str, Any], digits: int, best: Callable[[str], str],
                   other: Callable[[str], str] = lambda text: text
                   ) -> tuple[list[str], list[list[str]]]:
    """The fine-tune test accuracy table every output shows (terminal, Markdown, HTML): one row
    per pool model -- those without a result too, ``-`` where a pair has none -- one column per
    task in :func:`ordered_tasks` order; a task's best cell through ``best`` (bold, ``*``), the
    others through ``other``."""
    acc = report["finetune_test_acc"]
    tasks = ordered_tasks(report)
    models = sorted({m for t in tasks for m in acc[t]} | set(report["models"]))
    rows = []
    for m in models:
        row = [m]
        for t in tasks:
            v = acc[t].get(m)
            text = number(v, digits)
            row.append(best(text) if v is not None and v == max(acc[t].values()) else other(text))
        rows.append(row)
    return ["model", *tasks], rows


def ordered_tasks(report: Mapping[str, Any]) -> list[str]:
    """The reported tasks in the order of :func:`report_rows` (grouped first)."""
    return [key for _, _, kind, key in report_rows(report) if kind == "task"]


def appendix_g_columns(report: Mapping[str, Any]) -> list[str]:
    """The strategies of Appendix G's table, in its order: the oracle, the proxies, task-agnostic."""
    tables = report.get("appendix_g") or {}
    first = next(iter(tables.values()), {})
    return list(next(iter(first.values()), {}))


def render_appendix_g_csv(report: Mapping[str, Any]) -> str:
    """``appendix_g.csv``: long ``pool,task,strategy,budget``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("pool", "task", "strategy", "budget"))
    for pool, by_task in (report.get("appendix_g") or {}).items():
        for task, budgets in by_task.items():
            for strategy, b in budgets.items():
                writer.writerow((pool, task, strategy, b))
    return buf.getvalue()
