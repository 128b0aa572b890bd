"""Regret report: score every model-search strategy on a pool, and write it out.

:func:`compute_report` turns records (long ``model, task, metric, value``) and optional model
metadata into a JSON-serialisable dict: relative and log-odds regret per strategy, budget B and
task (plus per-group and mean), the smallest zero-regret budget, each strategy's picks, the
fine-tune accuracies and the oracle model per task. :func:`format_table` renders it for a
terminal, :func:`format_markdown` as Markdown, and :func:`write_report` writes ``regret.md``,
``regret.csv``, ``regret.json`` and ``regret.png`` atomically.

Definitions (DESIGN.md, Renggli et al. 2022): for task t the pool is the pool's models that have
a ``finetune_test_acc`` for t (a missing pair is simply not in that task's pool); s* is the best
accuracy in it; a ranking strategy with budget B scores s(S) = the best accuracy among its top B;
``random`` scores the exact expected regret of a uniformly random size-B subset. A budget larger
than a task's pool picks the whole pool (s(S) = s*).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

from selection.records import (
    GROUND_TRUTH,
    POOL_ALL,
    RecordsError,
    aggregate_records,
    index_metadata,
    list_proxy_metrics,
    models_in_pool,
    pivot_metric,
    validate_records,
)
from selection.regret import expected_random_regret, log_odds_regret, relative_regret, zero_regret_budget
from selection.strategies import create_strategy, list_strategies

REPORT_FILES = {"md": "regret.md", "csv": "regret.csv", "json": "regret.json", "png": "regret.png"}
CSV_COLUMNS = ("strategy", "budget", "task", "group", "relative_regret", "log_odds_regret")
MEAN_ROW = "mean"
_LISTED = 10  # model names quoted in an error message


# ----------------------------------------------------------------------------------------------
# computing


def _finite(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _pool_members(records: pd.DataFrame, metadata: pd.DataFrame | None, pool: str,
                  pool_models: list[str] | None) -> list[str]:
    if pool_models is not None:
        if isinstance(pool_models, str):
            raise TypeError(f"pool_models must be a list of model names, not the string {pool_models!r}")
        bad = [m for m in pool_models if not isinstance(m, str) or not m]
        if bad:
            raise ValueError(f"pool {pool!r}: pool_models must be non-empty model names; got {bad!r}")
        return sorted(set(pool_models))
    if pool == POOL_ALL:
        return sorted(records["model"].unique().tolist())
    return models_in_pool(metadata, pool)


def compute_report(
    records: pd.DataFrame,
    metadata: pd.DataFrame | None = None,
    *,
    pool: str = POOL_ALL,
    pool_models: list[str] | None = None,
    task_groups: dict[str, str] | None = None,
    max_budget: int = 3,
    strategies: list[str] | None = None,
    log_odds_eps: float = 1e-4,
) -> dict[str, Any]:
    """Regret of each strategy on each task of ``pool`` for budgets B = 1 .. min(max_budget, pool size).

    ``records`` are validated and repeated rows aggregated by median. The pool's models are
    ``pool_models`` if given, else every model of the records for ``pool="all"``, else the models
    whose metadata ``pools`` field names ``pool``. Per task, the pool is the pool's models with a
    ``finetune_test_acc`` for that task; tasks with none are listed under ``skipped_tasks``.
    Pool size for the budget range is the largest per-task pool.

    ``strategies`` defaults to :func:`selection.strategies.list_strategies` of the proxies present.
    ``task_groups`` maps task -> group (e.g. natural/specialized/structured); tasks it does not
    name get group None and no group mean.

    Returns a JSON-serialisable dict (budget keys are strings, None where no value exists)::

        pool, models, tasks, task_groups, skipped_tasks, budgets, strategy_order,
        strategies / log_odds: {strategy: {"B": {mean, per_task: {task}, per_group: {group}}}},
        zero_regret_budget: {strategy: {task: B or None}}   # smallest reported B with regret 0
        zero_regret_fraction: {strategy: {"B": fraction of tasks with regret 0}},
        picks: {strategy: {task: top max_budget models, or None for random}},
        finetune_test_acc: {task: {model: acc}}, oracle_model: {task: model}
    """
    if isinstance(max_budget, bool) or not isinstance(max_budget, (int, np.integer)) or max_budget < 1:
        raise ValueError(f"max_budget={max_budget!r} must be an integer >= 1")
    clean = validate_records(records, source="records")
    agg = aggregate_records(clean)
    meta = index_metadata(metadata)
    if not (agg["metric"] == GROUND_TRUTH).any():
        raise RecordsError(
            f"records: no '{GROUND_TRUTH}' rows; regret needs the fine-tune test accuracy of the "
            f"pool's models (metrics present: {sorted(agg['metric'].unique().tolist())})"
        )
    truth = pivot_metric(agg, GROUND_TRUTH)
    members = _pool_members(agg, meta, pool, pool_models)

    task_pool: dict[str, list[str]] = {}
    skipped: list[str] = []
    for task in sorted(agg["task"].unique().tolist()):
        models = [m for m in members if m in truth.index and _finite(truth.at[m, task])]
        if models:
            task_pool[task] = models
        else:
            skipped.append(task)
    if not task_pool:
        raise RecordsError(
            f"pool {pool!r}: none of its {len(members)} model(s) {members[:_LISTED]} has a "
            f"'{GROUND_TRUTH}' on any task; check the pool's model names against the records"
        )
    tasks = sorted(task_pool)
    budgets = list(range(1, min(int(max_budget), max(len(v) for v in task_pool.values())) + 1))

    if task_groups is not None and not isinstance(task_groups, Mapping):
        raise TypeError(f"task_groups must map task -> group, got {type(task_groups).__name__}")
    groups: dict[str, str | None] = {t: (task_groups or {}).get(t) for t in tasks}
    group_names = sorted({g for g in groups.values() if g is not None})

    proxies = list_proxy_metrics(agg)
    scores = {m: pivot_metric(agg, m) for m in proxies}
    scores[GROUND_TRUTH] = truth
    names = list(strategies) if strategies is not None else list_strategies(proxies)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"strategies: {duplicates} listed more than once; list each strategy once")
    built = {name: create_strategy(name, scores, meta) for name in names}

    accs = {t: {m: float(truth.at[m, t]) for m in task_pool[t]} for t in tasks}
    s_star = {t: max(accs[t].values()) for t in tasks}
    oracle_model = {t: sorted(accs[t], key=lambda m, t=t: (-accs[t][m], m))[0] for t in tasks}

    rel: dict[str, dict[str, dict[str, float]]] = {}   # strategy -> task -> B -> regret
    logodds: dict[str, dict[str, dict[str, float]]] = {}
    picks: dict[str, dict[str, list[str] | None]] = {}
    for name, strategy in built.items():
        rel[name], logodds[name], picks[name] = {}, {}, {}
        for task in tasks:
            pool_accs = accs[task]
            star = s_star[task]
            if getattr(strategy, "expected", False):
                values = np.array(list(pool_accs.values()))
                rel[name][task] = {str(b): expected_random_regret(values, b, relative_regret) for b in budgets}
                logodds[name][task] = {
                    str(b): expected_random_regret(
                        values, b, lambda s, a: log_odds_regret(s, a, eps=log_odds_eps)) for b in budgets
                }
                picks[name][task] = None
                continue
            ranking = list(strategy.rank(task, list(task_pool[task])))
            if sorted(ranking) != task_pool[task]:
                raise ValueError(
                    f"strategy {name!r} ranked {ranking} on task {task!r}; a ranking must hold every "
                    f"model of the task's pool {task_pool[task]} exactly once"
                )
            rel[name][task], logodds[name][task] = {}, {}
            for b in budgets:
                s_sel = max(pool_accs[m] for m in ranking[:b])
                rel[name][task][str(b)] = float(relative_regret(star, s_sel))
                logodds[name][task][str(b)] = float(log_odds_regret(star, s_sel, eps=log_odds_eps))
            picks[name][task] = ranking[:max_budget]

    def shape(values: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in names:
            out[name] = {}
            for b in map(str, budgets):
                per_task = {t: values[name][t][b] for t in tasks}
                per_group = {g: _mean([per_task[t] for t in tasks if groups[t] == g]) for g in group_names}
                out[name][b] = {"mean": _mean(list(per_task.values())), "per_task": per_task,
                                "per_group": per_group}
        return out

    zero_budget = {name: {t: zero_regret_budget(rel[name][t]) for t in tasks} for name in names}
    zero_fraction = {
        name: {str(b): float(np.mean([abs(rel[name][t][str(b)]) <= 1e-12 for t in tasks])) for b in budgets}
        for name in names
    }
    return {
        "pool": pool,
        "models": members,
        "tasks": tasks,
        "task_groups": groups,
        "skipped_tasks": skipped,
        "budgets": budgets,
        "strategy_order": names,
        "strategies": shape(rel),
        "log_odds": shape(logodds),
        "zero_regret_budget": zero_budget,
        "zero_regret_fraction": zero_fraction,
        "picks": picks,
        "finetune_test_acc": accs,
        "oracle_model": oracle_model,
    }


# ----------------------------------------------------------------------------------------------
# formatting


def _strategy_order(report: Mapping[str, Any]) -> list[str]:
    return list(report.get("strategy_order") or report["strategies"])


def _check_budget(report: Mapping[str, Any], budget: int | None) -> list[int]:
    budgets = [int(b) for b in report["budgets"]]
    if budget is None:
        return budgets
    if int(budget) not in budgets:
        raise ValueError(f"budget {budget!r} is not in the report; budgets reported: {budgets}")
    return [int(budget)]


def _layout(report: Mapping[str, Any]) -> Iterator[tuple[str, str, str, str | None]]:
    """Rows as (group label, task label, kind, key): kind is task / group / mean."""
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


def _has_groups(report: Mapping[str, Any]) -> bool:
    return any(g is not None for g in (report.get("task_groups") or {}).values())


def _regret_rows(report: Mapping[str, Any], budget: int, which: str = "strategies") -> tuple[list[str], list[list[str]]]:
    names = _strategy_order(report)
    grouped = _has_groups(report)
    header = (["group"] if grouped else []) + ["task"] + names
    rows = []
    for group, task, kind, key in _layout(report):
        values = [_fmt(_cell(report[which][n][str(budget)], kind, key)) for n in names]
        rows.append(([group] if grouped else []) + [task] + values)
    return header, rows


def format_table(report: Mapping[str, Any], budget: int | None = None) -> str:
    """Plain-text tables of relative regret: rows = tasks (grouped, with group means) and a
    ``mean`` row; columns = strategies; one table per budget, or only ``budget``."""
    out = []
    for b in _check_budget(report, budget):
        header, rows = _regret_rows(report, b)
        n_labels = len(header) - len(_strategy_order(report))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if i < n_labels else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        title = f"relative regret, pool '{report['pool']}', B = {b}"
        if "random" in report["strategies"]:
            title += " (random: exact expected regret)"
        out.append("\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, rows)]))
    skipped = report.get("skipped_tasks") or []
    if skipped:
        out.append(f"skipped tasks (no {GROUND_TRUTH} in the pool): {', '.join(skipped)}")
    return "\n\n".join(out) + "\n"


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
    names = _strategy_order(report)
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
    for b in _check_budget(report, None):
        header, rows = _regret_rows(report, b)
        parts += [f"## Relative regret, B = {b}", _md_table(header, rows, len(header) - len(names))]

    parts.append("## Smallest budget with zero regret (`-`: not within the budgets reported)")
    header = ["task", *names]
    rows = [[t, *[("-" if report["zero_regret_budget"][n][t] is None else str(report["zero_regret_budget"][n][t]))
                  for n in names]] for t in report["tasks"]]
    parts.append(_md_table(header, rows, 1))

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


def _render_csv(report: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for name in _strategy_order(report):
        for b in report["budgets"]:
            rel = report["strategies"][name][str(b)]
            lo = report["log_odds"][name][str(b)]
            for group, task, kind, key in _layout(report):
                writer.writerow([name, b, task, group, _csv_number(_cell(rel, kind, key)),
                                 _csv_number(_cell(lo, kind, key))])
    return buf.getvalue()


def _ordered_tasks(report: Mapping[str, Any]) -> list[str]:
    return [key for _, _, kind, key in _layout(report) if kind == "task"]


def _render_png(report: Mapping[str, Any]) -> bytes:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = _strategy_order(report)
    tasks = _ordered_tasks(report)
    budgets = [int(b) for b in report["budgets"]]
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    colors = {n: cmap(i % cmap.N) for i, n in enumerate(names)}

    width_in = min(40.0, 6.0 + 0.18 * len(tasks) * max(1, len(names)))
    fig = Figure(figsize=(width_in, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax_bar, ax_line = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})

    x = np.arange(len(tasks))
    bar = 0.8 / max(1, len(names))
    for j, n in enumerate(names):
        per_task = report["strategies"][n]["1"]["per_task"]
        values = [per_task[t] if per_task[t] is not None else np.nan for t in tasks]
        ax_bar.bar(x - 0.4 + (j + 0.5) * bar, values, bar, label=n, color=colors[n])
    ax_bar.set_xticks(x, tasks, rotation=45, ha="right")
    ax_bar.set_ylabel("relative regret")
    ax_bar.set_title(f"relative regret per task, B = 1 (pool '{report['pool']}')")
    ax_bar.set_xlim(-0.6, len(tasks) - 0.4)

    for n in names:
        means = [report["strategies"][n][str(b)]["mean"] for b in budgets]
        ax_line.plot(budgets, [np.nan if v is None else v for v in means], marker="o", label=n, color=colors[n])
    ax_line.set_xticks(budgets)
    ax_line.set_xlabel("budget B")
    ax_line.set_ylabel("mean relative regret")
    ax_line.set_title("mean over tasks")
    ax_line.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``regret.md``, ``regret.csv``, ``regret.json`` and ``regret.png`` into ``out_dir``.

    CSV is long: ``strategy,budget,task,group,relative_regret,log_odds_regret`` with task ``mean``
    rows for each group (group = its name) and overall (group empty). JSON is
    ``json.dumps(report, indent=2, sort_keys=True)``. Everything is rendered in memory first and
    each file is then written to a temporary file in ``out_dir`` and moved into place with
    ``os.replace``, so a failure leaves no partial file. Returns the paths by kind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rendered = {
        "md": format_markdown(report).encode("utf-8"),
        "csv": _render_csv(report).encode("utf-8"),
        "json": (json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8"),
        "png": _render_png(report),
    }
    paths = {kind: out / REPORT_FILES[kind] for kind in REPORT_FILES}
    for kind, data in rendered.items():
        _write_atomic(paths[kind], data)
    return paths
