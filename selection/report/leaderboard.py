"""The report at a glance: the leaderboard, one line per task group, tables fitted to a width.

:func:`format_leaderboard` is what ``whichmodel report`` prints by default (at most
:data:`WIDTH` columns): one row per strategy with its mean relative regret at B = 1, 2, 3 and
the 95% interval, sorted by B = 1, ``~`` on the strategies within noise of the best; the bounds
(strategies that read the task's own results) below it; then one line per task group; then
where the files are. :func:`leaderboard_markdown` is the same leaderboard in Markdown (the report
run's MLflow description). :func:`highlights` names the handful of
strategies the figures show (:mod:`selection.report.plots`).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from selection.report.noise_text import NOT_BEYOND, WITHIN, has_noise, not_beyond_static, static_line
from selection.report.tables import WIDTH, clip, table_lines

LEADER_BUDGETS = 3  # B = 1, 2, 3
BOUNDS = ("task_agnostic_oracle", "per_task_best")  # read the task's own results
BASELINES = ("task_agnostic", "random")  # and every static:<column> ranking


def strategy_kind(name: str) -> str:
    """``bound``, ``baseline``, ``proxy``, ``hybrid`` or ``learned`` (every other strategy:
    ChoiceNet, nearest task, the records learners, the leave-one-task-out oracle)."""
    if name in BOUNDS:
        return "bound"
    if name in BASELINES or name.startswith("static:"):
        return "baseline"
    if name.startswith("proxy/"):
        return "proxy"
    if name.startswith("hybrid:"):
        return "hybrid"
    return "learned"


def _order(report: Mapping[str, Any]) -> list[str]:
    return list(report.get("strategy_order") or report["strategies"])


def _mean(report: Mapping[str, Any], name: str, budget: int) -> float:
    block = report["strategies"][name].get(str(budget)) or {}
    value = block.get("mean")
    return math.inf if value is None else float(value)


def ranked(report: Mapping[str, Any], kinds: Sequence[str] | None = None) -> list[str]:
    """Strategies (of ``kinds``, default all but the bounds) by mean relative regret at B = 1,
    then B = 2, B = 3, then name."""
    budgets = [int(b) for b in report["budgets"]][:LEADER_BUDGETS]
    names = [n for n in _order(report)
             if (strategy_kind(n) in kinds if kinds else strategy_kind(n) != "bound")]
    return sorted(names, key=lambda n: ([_mean(report, n, b) for b in budgets], n))


def highlights(report: Mapping[str, Any]) -> list[str]:
    """The figures' handful: task-agnostic, the best proxy, its hybrid, the best learned
    strategy and random (those the report has), in that order."""
    proxies, learned = ranked(report, ["proxy"]), ranked(report, ["learned"])
    wanted = ["task_agnostic", *proxies[:1], *(f"hybrid:{p}" for p in proxies[:1]), *learned[:1],
              "random"]
    names = _order(report)
    return [n for n in dict.fromkeys(wanted) if n in names]


def _cell(report: Mapping[str, Any], name: str, budget: str) -> str:
    mean = report["strategies"][name][budget]["mean"]
    if mean is None:
        return "-"
    ci = (report.get("ci") or {}).get(name, {}).get(budget)
    text = f"{mean:.3f}" + (f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else "")
    return (text + (WITHIN if name in (report.get("within_noise") or {}).get(budget, []) else " ")
            + (NOT_BEYOND if not_beyond_static(report, name, budget) else " "))


def leaderboard_rows(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(header, ranked rows, bound rows): rank, strategy and one cell per budget up to B = 3."""
    budgets = [str(b) for b in report["budgets"]][:LEADER_BUDGETS]
    header = ["#", "strategy", *(f"B = {b}" for b in budgets)]
    rows = [[str(i), n, *(_cell(report, n, b) for b in budgets)]
            for i, n in enumerate(ranked(report), 1)]
    bounds = [["", n, *(_cell(report, n, b) for b in budgets)] for n in ranked(report, ["bound"])]
    return header, rows, bounds


def group_lines(report: Mapping[str, Any], width: int = WIDTH) -> list[str]:
    """One line per task group (and ``all tasks``): its tasks and, at B = 1, the best
    strategies' mean relative regret beside task-agnostic's and random's."""
    groups = report.get("task_groups") or {}
    names = sorted({g for g in groups.values() if g})
    order = ranked(report)
    out = []
    for g in [*names, None]:
        tasks = [t for t in report["tasks"] if groups.get(t) == g] if g else list(report["tasks"])
        if not tasks:
            continue

        def value(n: str, g=g) -> float:
            block = report["strategies"][n]["1"]
            v = block["per_group"].get(g) if g else block["mean"]
            return math.inf if v is None else float(v)

        best = sorted(order, key=value)[:2]  # stable: ties keep the report's order
        base = [n for n in BASELINES if n in order and n not in best]
        label = f"{g or 'all tasks'} ({len(tasks)})"

        def cells(shown: list[str], value=value) -> str:
            return ", ".join(f"{n} {value(n):.3f}" for n in shown if math.isfinite(value(n)))

        line = f"{label:<15} best {cells(best)}; {cells(base)}"
        if len(line) > width:  # the runner-up gives way before anything is clipped
            line = f"{label:<15} best {cells(best[:1])}; {cells(base)}"
        out.append(clip(line, width))
    return out


def format_leaderboard(report: Mapping[str, Any], files: Sequence[str] = (),
                       width: int = WIDTH) -> str:
    """The default terminal report, no line wider than ``width``: the leaderboard, the bounds,
    one line per task group, where the files are."""
    header, rows, bounds = leaderboard_rows(report)
    noisy = has_noise(report)
    title = (f"leaderboard: mean relative regret over {len(report['tasks'])} tasks"
             + (" [95% interval]" if noisy else "") + f", pool '{report['pool']}', by B = 1")
    out = [line for w in report.get("warnings", [])
           for line in textwrap.wrap(f"warning: {w}", width, subsequent_indent="  ")]
    out.append(clip(title, width))
    if noisy:
        out.append(clip(f"{WITHIN}: within noise of the best (not beaten at P >= 0.95); "
                         "0 is the best model of every task", width))
    static = static_line(report)
    if static:  # wrapped, not clipped: the names of the strategies that beat it matter
        out += textwrap.wrap(static, width, subsequent_indent="  ")
    table = table_lines(header, rows + bounds, 2, width)
    if bounds:
        table.insert(2 + len(rows), "bounds (they read the task's own results):")
    out += table
    out += ["", clip("by task group (mean relative regret at B = 1):", width),
            *group_lines(report, width)]
    from selection.report.costs_text import compute_lines

    compute = compute_lines(report, width)
    out += ["", *compute] if compute else []
    if files:
        out += ["", *_file_lines(files, width)]
    return "\n".join(out) + "\n"


def _file_lines(files: Sequence[str], width: int) -> list[str]:
    first, *rest = [str(f) for f in files]
    lines = [clip(f"open: {first}", width)]
    line = "also:"
    for name in rest:
        name = name.rsplit("/", 1)[-1]
        if len(line) + 1 + len(name) > width:
            lines.append(line)
            line = "     "
        line += " " + name
    return lines + ([line] if rest else [])


MARKDOWN_LIMIT = 8000  # MLflow's longest tag value (the description is a tag)


def leaderboard_markdown(report: Mapping[str, Any], limit: int = MARKDOWN_LIMIT) -> str:
    """The leaderboard as Markdown (the report run's MLflow description), at most ``limit``
    characters: the rows that do not fit are left to ``report.html``, and it says so."""
    header, rows, bounds = leaderboard_rows(report)
    rows = rows + [["bound", *r[1:]] for r in bounds]
    lines = [header, ["---:", "---", *["---:"] * (len(header) - 2)], *rows]
    md_rows = ["| " + " | ".join(c.strip().replace("|", "\\|") for c in r) + " |" for r in lines]
    budget = limit - 1500  # the title, the legend and the group lines
    kept, size = [], 0
    for row in md_rows:
        if size + len(row) + 1 > budget:
            md_rows = kept + [f"\n{len(md_rows) - len(kept)} more rows in report.html"]
            break
        kept.append(row)
        size += len(row) + 1
    table = "\n".join(md_rows)
    legend = (f"Mean relative regret over {len(report['tasks'])} tasks"
              + (" [95% interval]" if has_noise(report) else "") + f", pool `{report['pool']}`, "
              f"sorted by B = 1; `{WITHIN}`: within noise of the best; `bound`: reads the task's "
              "own results."
              + (f" `{NOT_BEYOND}`: not shown better than the best static ranking; "
                 f"{static_line(report)}." if static_line(report) else ""))
    groups = "\n".join(f"- {line}" for line in group_lines(report, 10_000))
    text = (f"## Which strategy finds the best model: `{report.get('experiment', report['pool'])}`"
            f"\n\n{legend}\n\n{table}\n\nBy task group:\n\n{groups}\n")
    return text if len(text) <= limit else text[:limit - 1] + "…"
