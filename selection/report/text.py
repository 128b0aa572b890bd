"""The regret report as text: terminal tables, Markdown and CSV.

Each function reads the dict of :func:`selection.report.compute.compute_report` (documented there) and
returns a string: :func:`format_table` for a terminal, :func:`format_markdown` for ``regret.md``,
:func:`render_csv` for ``regret.csv``. Rows are the tasks grouped by task group, each group
followed by its ``mean`` row, then the ungrouped tasks and the overall ``mean``
(:func:`report_rows`); columns follow :func:`strategy_order`. The figures read the same order
(:mod:`selection.report.plots`).
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from selection.records import GROUND_TRUTH
from selection.report.noise_text import has_noise, interval_rows, legend, mark_cell, task_rows
from selection.report.tables import fit_table

CSV_COLUMNS = ("strategy", "budget", "task", "group", "relative_regret", "absolute_regret",
               "log_odds_regret")
MEAN_ROW = "mean"


def strategy_order(report: Mapping[str, Any]) -> list[str]:
    """The report's strategies in reporting order (``strategy_order``, else the ``strategies`` keys)."""
    return list(report.get("strategy_order") or report["strategies"])


def _check_budget(report: Mapping[str, Any], budget: int | None) -> list[int]:
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
    return "-" if value is None or not _finite(value) else f"{value:.{digits}f}"


def _finite(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _has_groups(report: Mapping[str, Any]) -> bool:
    return any(g is not None for g in (report.get("task_groups") or {}).values())


def _regret_rows(report: Mapping[str, Any], budget: int,
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
    for b in _check_budget(report, budget):
        header, rows = _regret_rows(report, b)
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


def _md_escape(text: object) -> str:
    return str(text).replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[str]], n_labels: int) -> str:
    align = ["---" if i < n_labels else "---:" for i in range(len(header))]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(_md_escape(c) if j != 1 else c for c in cells) + " |"
                     for j, cells in enumerate(lines))


def format_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: relative-regret tables per budget, the smallest zero-regret budget
    per task, and the fine-tune test accuracies (models x tasks, best per task in bold)."""
    names = strategy_order(report)
    parts = [
        f"# Regret report: pool `{report['pool']}`",
        f"{len(report['models'])} models, {len(report['tasks'])} tasks, budgets "
        f"{', '.join(map(str, report['budgets']))}.",
        "Relative regret r = (s* - s(S)) / (1 - min(s*, s(S))): s(S) is the best fine-tune test "
        "accuracy among a strategy's top B models, s* the best in the task's pool. "
        "`random` is the exact expected regret over uniformly random size-B subsets.",
    ]
    if report.get("skipped_tasks"):
        parts.append(f"Skipped tasks (no `{GROUND_TRUTH}` in the pool): {', '.join(report['skipped_tasks'])}.")
    if has_noise(report):
        parts += ["## How sure: mean relative regret with 95% intervals", legend(report),
                  _md_table(*interval_rows(report), 1),
                  "## Noise of the ground truth per task (`p_best`: probability that the model "
                  "is the task's best under resampling)", _md_table(*task_rows(report), 2)]
    for b in _check_budget(report, None):
        header, rows = _regret_rows(report, b)
        parts += [f"## Relative regret, B = {b}", _md_table(header, rows, len(header) - len(names))]

    parts.append("## Smallest budget with zero regret (`-`: not within the budgets reported)")
    header = ["task", *names]
    rows = [[t, *[("-" if report["zero_regret_budget"][n][t] is None else str(report["zero_regret_budget"][n][t]))
                  for n in names]] for t in report["tasks"]]
    parts.append(_md_table(header, rows, 1))

    full = report.get("zero_regret_budget_full")
    if full:
        parts.append("## Smallest budget with zero regret over the whole pool (Appendix G; "
                     "`random`: expected regret)")
        rows = [[t, *[str(full[n][t]) for n in names]] for t in report["tasks"]]
        parts.append(_md_table(["task", *names], rows, 1))

    fraction = report.get("zero_regret_fraction")
    if fraction:
        parts.append("## Fraction of tasks at zero regret (Figure 7)")
        budgets = [str(b) for b in report["budgets"]]
        rows = [[n, *[_fmt(fraction[n][b], 3) for b in budgets]] for n in names]
        parts.append(_md_table(["strategy", *(f"B = {b}" for b in budgets)], rows, 1))

    parts += _absolute_and_deltas(report)
    parts += _appendix_g_parts(report)
    nearest = (report.get("nearest_task") or {}).get("nearest")
    if nearest:
        parts.append("## Nearest task by Task2Vec (Appendix H; probe "
                     f"`{report['nearest_task'].get('probe_model')}`)")
        parts.append(_md_table(["task", "nearest task"], [[t, u] for t, u in nearest.items()], 2))
    notes = {p: c for p, c in (report.get("proxy_coverage") or {}).items() if c["pairs"] < c["of"]}
    if notes:
        parts.append("## Proxies without a score on some pairs (no score ranks last)")
        parts.append("\n".join(f"- `{p}`: {c['pairs']} of {c['of']} pairs" + (
            f"; {c['note']}" if c.get("note") else "") for p, c in notes.items()))
    for key, title in (("weighted_tau", "weighted Kendall tau (`scipy.stats.weightedtau(acc, score, "
                                         "rank=None)`, importance by fine-tune rank)"),
                       ("weighted_tau_scipy_default", "weighted Kendall tau, scipy's default "
                        "(`weightedtau(acc, score)`, rank=True: SFDA's convention)"),
                       ("pearson", "Pearson r")):
        table = report.get(key) or {}
        if not table:
            continue
        parts.append(f"## Rank agreement with `{GROUND_TRUTH}`: {title}; `-`: undefined "
                     "(< 2 models or constant values)")
        proxies = list(table)
        rows = [[t, *[_fmt(table[p][t]) for p in proxies]] for t in report["tasks"]]
        rows.append([MEAN_ROW, *[_fmt(defined_mean(table[p])[0]) for p in proxies]])
        parts.append(_md_table(["task", *proxies], rows, 1))

    cn = {v: b for v, b in (report.get("choicenet") or {}).items() if b and b.get("n_pairs")}
    if cn:
        parts.append("## ChoiceNet and the records learners, leave-one-task-out (predicted vs fine-tune "
                     "test accuracy; v3, `choicenet_records` and the ensemble rank, so they have no MSE)")
        rows = []
        for version, block in cn.items():
            tau, n = defined_mean(block["weighted_tau"])
            mse = "-" if block.get("mse") is None else _fmt(block["mse"], 5)
            rows.append([version, mse, str(block["n_pairs"]), _fmt(tau),
                         _fmt(defined_mean(block["pearson"])[0])])
        parts.append(_md_table(["version", "MSE", "pairs", "mean weighted tau", "mean pearson"], rows, 1))
        claim = claim_line(report)
        if claim:
            parts.append(claim + ".")

    parts.append(f"## Fine-tune test accuracy (`{GROUND_TRUTH}`; best per task in bold)")
    acc = report["finetune_test_acc"]
    tasks = list(report["tasks"])
    models = sorted({m for t in tasks for m in acc[t]} | set(report["models"]))
    rows = []
    for m in models:
        row = [m]
        for t in tasks:
            v = acc[t].get(m)
            text = _fmt(v)
            if v is not None and v == max(acc[t].values()):
                text = f"**{text}**"
            row.append(text)
        rows.append(row)
    parts.append(_md_table(["model", *tasks], rows, 1))
    return "\n\n".join(parts) + "\n"


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


def ordered_tasks(report: Mapping[str, Any]) -> list[str]:
    """The reported tasks in the order of :func:`report_rows` (grouped first)."""
    return [key for _, _, kind, key in report_rows(report) if kind == "task"]


def _absolute_and_deltas(report: Mapping[str, Any]) -> list[str]:
    """Mean absolute regret per strategy and budget, and the mean relative and log-odds deltas of
    the paper's comparisons (positive: the first strategy is better)."""
    parts = []
    budgets = [str(b) for b in report["budgets"]]
    absolute = report.get("absolute") or {}
    if absolute:
        parts.append("## Mean absolute regret s* - s(S)")
        rows = [[n, *[_fmt(absolute[n][b]["mean"]) for b in budgets]] for n in strategy_order(report)]
        parts.append(_md_table(["strategy", *(f"B = {b}" for b in budgets)], rows, 1))
    for key, title in (("deltas", "relative delta (Sec. 3, Eq. 2)"),
                       ("log_odds_deltas", "log-odds delta (Appendix C)")):
        table = report.get(key) or {}
        if table:
            parts.append(f"## Mean {title}; positive: the first strategy is better")
            rows = [[pair, *[_fmt(table[pair][b]["mean"]) for b in budgets]] for pair in table]
            parts.append(_md_table(["comparison", *(f"B = {b}" for b in budgets)], rows, 1))
    return parts


def appendix_g_columns(report: Mapping[str, Any]) -> list[str]:
    """The strategies of Appendix G's table, in its order: the oracle, the proxies, task-agnostic."""
    tables = report.get("appendix_g") or {}
    first = next(iter(tables.values()), {})
    return list(next(iter(first.values()), {}))


def _appendix_g_parts(report: Mapping[str, Any]) -> list[str]:
    tables = report.get("appendix_g") or {}
    if not tables:
        return []
    parts = ["## Appendix G: smallest budget with zero regret, per pool (the task-agnostic "
             "oracle, each proxy, task-agnostic)"]
    for pool, by_task in tables.items():
        columns = appendix_g_columns(report)
        rows = [[t, *[str(by_task[t].get(c, "-")) for c in columns]] for t in by_task]
        parts += [f"### Pool `{pool}`", _md_table(["task", *columns], rows, 1)]
    return parts


def format_appendix_g(report: Mapping[str, Any]) -> str:
    """``appendix_g.md``: Appendix G's table, one block per pool."""
    return "\n\n".join([f"# Zero-regret budgets (Renggli et al. 2022, Appendix G): pool "
                         f"`{report['pool']}` and the sweep's named pools",
                         *_appendix_g_parts(report)[1:]]) + "\n"


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
