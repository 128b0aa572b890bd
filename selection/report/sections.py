"""The report's sections: titled tables built once from the report dict, rendered as Markdown
(``regret.md``, ``appendix_g.md``) and as HTML (``report.html`` shows a subset of them).

A :class:`Section` is a title, optional paragraphs and optional table (header, rows, how many
label columns); its cells are plain text, and a renderer escapes them (``best`` cells carry their
mark, ``**`` in Markdown, ``<b>`` in HTML, through the ``mark`` callable a builder takes).
:func:`markdown_sections` lists every section of ``regret.md`` in order; :func:`format_markdown`
renders them; the HTML page (:mod:`selection.report.html`) takes the ones it shows from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from selection.records import GROUND_TRUTH
from selection.report.costs_text import compute_table
from selection.report.noise_text import has_noise, interval_rows, legend, task_rows
from selection.report.tables import number
from selection.report.text import (
    MEAN_ROW,
    accuracy_table,
    appendix_g_columns,
    check_budget,
    claim_line,
    defined_mean,
    regret_rows,
    strategy_order,
)

AGREEMENT = (("weighted_tau", "weighted Kendall tau (`scipy.stats.weightedtau(acc, score, "
                              "rank=None)`, importance by fine-tune rank)"),
             ("weighted_tau_scipy_default", "weighted Kendall tau, scipy's default "
              "(`weightedtau(acc, score)`, rank=True: SFDA's convention)"),
             ("pearson", "Pearson r"))


@dataclass
class Section:
    """A titled block: paragraphs, then a table (``header`` None: none)."""

    title: str
    text: list[str] = field(default_factory=list)
    header: list[str] | None = None
    rows: list[list[str]] = field(default_factory=list)
    n_labels: int = 1
    level: int = 2  # heading level in Markdown (## or ###)


def _budget_header(report: Mapping[str, Any], first: str) -> list[str]:
    return [first, *(f"B = {b}" for b in report["budgets"])]


def intro(report: Mapping[str, Any]) -> Section:
    text = [f"{len(report['models'])} models, {len(report['tasks'])} tasks, budgets "
            f"{', '.join(map(str, report['budgets']))}.",
            "Relative regret r = (s* - s(S)) / (1 - min(s*, s(S))): s(S) is the best fine-tune "
            "test accuracy among a strategy's top B models, s* the best in the task's pool. "
            "`random` is the exact expected regret over uniformly random size-B subsets."]
    if report.get("skipped_tasks"):
        text.append(f"Skipped tasks (no `{GROUND_TRUTH}` in the pool): "
                    f"{', '.join(report['skipped_tasks'])}.")
    text[:0] = [f"**Warning:** {w}." for w in report.get("warnings", [])]
    return Section(f"Regret report: pool `{report['pool']}`", text, level=1)


def noise_sections(report: Mapping[str, Any]) -> list[Section]:
    if not has_noise(report):
        return []
    return [Section("How sure: mean relative regret with 95% intervals", [legend(report)],
                    *interval_rows(report), 1),
            noise_floor(report)]


def noise_floor(report: Mapping[str, Any]) -> Section:
    """Per task: the observed best model, how sure it is, the noise floor."""
    return Section("Noise floor of the ground truth per task (`p_best`: probability that the model is "
                   "the task's best under resampling)", [], *task_rows(report), 2)


def regret_sections(report: Mapping[str, Any]) -> list[Section]:
    out = []
    for b in check_budget(report, None):
        header, rows = regret_rows(report, b)
        out.append(Section(f"Relative regret, B = {b}", [], header, rows,
                           len(header) - len(strategy_order(report))))
    return out


def zero_regret_sections(report: Mapping[str, Any]) -> list[Section]:
    names = strategy_order(report)
    zero = report["zero_regret_budget"]
    out = [Section("Smallest budget with zero regret (`-`: not within the budgets reported)", [],
                   ["task", *names],
                   [[t, *("-" if zero[n][t] is None else str(zero[n][t]) for n in names)]
                    for t in report["tasks"]])]
    full = report.get("zero_regret_budget_full")
    if full:
        out.append(Section("Smallest budget with zero regret over the whole pool (Appendix G; "
                           "`random`: expected regret)", [], ["task", *names],
                           [[t, *(str(full[n][t]) for n in names)] for t in report["tasks"]]))
    fraction = report.get("zero_regret_fraction")
    if fraction:
        budgets = [str(b) for b in report["budgets"]]
        out.append(Section("Fraction of tasks at zero regret (Figure 7)", [],
                           _budget_header(report, "strategy"),
                           [[n, *(number(fraction[n][b], 3) for b in budgets)] for n in names]))
    return out


def absolute_and_delta_sections(report: Mapping[str, Any]) -> list[Section]:
    """Mean absolute regret per strategy and budget, and the mean relative and log-odds deltas of
    the paper's comparisons (positive: the first strategy is better)."""
    out = []
    budgets = [str(b) for b in report["budgets"]]
    absolute = report.get("absolute") or {}
    if absolute:
        out.append(Section("Mean absolute regret s* - s(S)", [], _budget_header(report, "strategy"),
                           [[n, *(number(absolute[n][b]["mean"], 4) for b in budgets)]
                            for n in strategy_order(report)]))
    for key, title in (("deltas", "relative delta (Sec. 3, Eq. 2)"),
                       ("log_odds_deltas", "log-odds delta (Appendix C)")):
        table = report.get(key) or {}
        if table:
            out.append(Section(f"Mean {title}; positive: the first strategy is better", [],
                               _budget_header(report, "comparison"),
                               [[pair, *(number(table[pair][b]["mean"], 4) for b in budgets)]
                                for pair in table]))
    return out


def appendix_g_sections(report: Mapping[str, Any]) -> list[Section]:
    """One table per pool: the smallest zero-regret budget of the oracle, each proxy and
    task-agnostic (Appendix G)."""
    columns = appendix_g_columns(report)
    return [Section(f"Pool `{pool}`", [], ["task", *columns],
                    [[t, *(str(by_task[t].get(c, "-")) for c in columns)] for t in by_task],
                    level=3)
            for pool, by_task in (report.get("appendix_g") or {}).items()]


def nearest_task_section(report: Mapping[str, Any]) -> list[Section]:
    nearest = (report.get("nearest_task") or {}).get("nearest")
    if not nearest:
        return []
    return [Section("Nearest task by Task2Vec (Appendix H; probe "
                    f"`{report['nearest_task'].get('probe_model')}`)", [],
                    ["task", "nearest task"], [[t, u] for t, u in nearest.items()], 2)]


def coverage_section(report: Mapping[str, Any]) -> list[Section]:
    notes = {p: c for p, c in (report.get("proxy_coverage") or {}).items() if c["pairs"] < c["of"]}
    if not notes:
        return []
    return [Section("Proxies without a score on some pairs (no score ranks last)",
                    ["\n".join(f"- `{p}`: {c['pairs']} of {c['of']} pairs"
                               + (f"; {c['note']}" if c.get("note") else "")
                               for p, c in notes.items())])]


def agreement_sections(report: Mapping[str, Any]) -> list[Section]:
    out = []
    for key, title in AGREEMENT:
        table = report.get(key) or {}
        if not table:
            continue
        proxies = list(table)
        rows = [[t, *(number(table[p][t], 4) for p in proxies)] for t in report["tasks"]]
        rows.append([MEAN_ROW, *(number(defined_mean(table[p])[0], 4) for p in proxies)])
        out.append(Section(f"Rank agreement with `{GROUND_TRUTH}`: {title}; `-`: undefined "
                           "(< 2 models or constant values)", [], ["task", *proxies], rows))
    return out


def learned_sections(report: Mapping[str, Any]) -> list[Section]:
    blocks = {v: b for v, b in (report.get("choicenet") or {}).items() if b and b.get("n_pairs")}
    if not blocks:
        return []
    rows = [[version, number(block.get("mse"), 5), str(block["n_pairs"]),
             number(defined_mean(block["weighted_tau"])[0], 4),
             number(defined_mean(block["pearson"])[0], 4)] for version, block in blocks.items()]
    claim = claim_line(report)
    return [Section("ChoiceNet and the records learners, leave-one-task-out (predicted vs "
                    "fine-tune test accuracy; v3, `choicenet_records` and the ensemble rank, so "
                    "they have no MSE)", [], ["version", "MSE", "pairs", "mean weighted tau",
                                               "mean pearson"], rows),
            *([Section("", [claim + "."], level=0)] if claim else [])]


def compute_sections(report: Mapping[str, Any]) -> list[Section]:
    """What each strategy spent in compute (:func:`selection.report.costs_text.compute_table`);
    none without logged seconds."""
    table = compute_table(report)
    return [] if table is None else [Section(*table)]


def accuracy_section(report: Mapping[str, Any], digits: int, mark: Callable[[str], str],
                     other: Callable[[str], str] = lambda text: text) -> Section:
    """The fine-tune test accuracy table (:func:`selection.report.text.accuracy_table`)."""
    return Section(f"Fine-tune test accuracy (`{GROUND_TRUTH}`; best per task in bold)", [],
                   *accuracy_table(report, digits, mark, other), 1)


def markdown_sections(report: Mapping[str, Any]) -> list[Section]:
    """Every section of ``regret.md``, in order."""
    appendix = appendix_g_sections(report)
    return [intro(report), *noise_sections(report), *regret_sections(report),
            *zero_regret_sections(report), *absolute_and_delta_sections(report),
            *compute_sections(report),
            *([Section("Appendix G: smallest budget with zero regret, per pool (the task-agnostic "
                       "oracle, each proxy, task-agnostic)")] + appendix if appendix else []),
            *nearest_task_section(report), *coverage_section(report),
            *agreement_sections(report), *learned_sections(report),
            accuracy_section(report, 4, lambda text: f"**{text}**")]


# ------------------------------------------------------------------------------------ Markdown
def md_escape(text: object) -> str:
    return str(text).replace("|", "\\|")


def md_table(header: list[str], rows: list[list[str]], n_labels: int) -> str:
    align = ["---" if i < n_labels else "---:" for i in range(len(header))]
    return "\n".join("| " + " | ".join(cells) + " |"
                     for cells in [[md_escape(c) for c in header], align,
                                   *([md_escape(c) for c in r] for r in rows)])


def to_markdown(sections: list[Section]) -> str:
    parts = []
    for s in sections:
        if s.title:
            parts.append(f"{'#' * s.level} {s.title}")
        parts += s.text
        if s.header is not None:
            parts.append(md_table(s.header, s.rows, s.n_labels))
    return "\n\n".join(parts) + "\n"


def format_markdown(report: Mapping[str, Any]) -> str:
    """``regret.md``: the report as Markdown (:func:`markdown_sections`)."""
    return to_markdown(markdown_sections(report))


def format_appendix_g(report: Mapping[str, Any]) -> str:
    """``appendix_g.md``: Appendix G's table, one block per pool."""
    return to_markdown([Section(f"Zero-regret budgets (Renggli et al. 2022, Appendix G): pool "
                                f"`{report['pool']}` and the sweep's named pools", level=1),
                        *appendix_g_sections(report)])
