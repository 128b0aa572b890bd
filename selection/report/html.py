"""``report.html``: the whole report on one self-contained page.

:func:`render_html` reads the dict of :func:`selection.report.compute.compute_report` and the rendered
figures (PNG bytes by file name) and returns one HTML page: the leaderboard, one table per task
group, the figures embedded as ``data:`` URIs, Appendix G's table, the fine-tune accuracy table
and the noise floor. The page has no script, no link and no address of any other host: it opens
from a file, an MLflow artifact view or an e-mail without a request.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

from selection.records import GROUND_TRUTH
from selection.report.leaderboard import group_lines, leaderboard_rows, ranked
from selection.report.noise_text import NOT_BEYOND, WITHIN, has_noise, static_line
from selection.report.sections import (
    Section,
    accuracy_section,
    appendix_g_sections,
    compute_sections,
    noise_floor,
)
from selection.report.tables import number

#: figure file -> caption, in the page's order
FIGURES = {
    "regret.png": "Relative regret per task at B = 1 for task-agnostic, the best proxy, its "
                  "hybrid, the best learned strategy and random (the paper's Figures 3-6); "
                  "the last bars are the mean over tasks with its 95% interval.",
    "regret_b2.png": "The same at B = 2.",
    "regret_budget.png": "Mean relative regret against the budget (band: 95% interval), and the "
                         "fraction of tasks at zero regret (Figure 7).",
    "regret_heatmap.png": "Relative regret of every strategy on every task, grouped by task group.",
    "proxies.png": "Fine-tune accuracy against each proxy's score (one panel per proxy, best "
                   "rank agreement first).",
    "zero_regret.png": "Fraction of tasks at zero regret for every strategy, and the smallest "
                       "zero-regret budget over the whole pool (Appendix G).",
    "regret_compute.png": "Mean relative regret against total compute (log scale; the decision "
                          "and the picks' fine-tunes, summed over the tasks) of every strategy "
                          "and budget; the black step line is the Pareto frontier.",
}

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1400px;
padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}
th,td{border-bottom:1px solid #ddd;padding:0.25em 0.6em;text-align:right;white-space:nowrap}
th{background:#f4f4f4}
td.l,th.l{text-align:left}
tr.within td{background:#eef7ee}
tr.bound td{color:#777}
img{max-width:100%;height:auto;border:1px solid #eee}
figure{margin:1em 0 2em}
figcaption{color:#555;font-size:0.9em}
.scroll{overflow-x:auto}
code{background:#f4f4f4;padding:0 0.2em}
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def table(header: Sequence[str], rows: Sequence[Sequence[str]], n_labels: int = 1,
          row_classes: Sequence[str] | None = None) -> str:
    """An HTML table (label columns left-aligned), in a horizontally scrolling box."""
    def cls(i: int) -> str:
        return ' class="l"' if i < n_labels else ""

    head = "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(header))
    body = []
    for k, row in enumerate(rows):
        rc = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        cells = "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr{rc}>{cells}</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _leaderboard(report: Mapping[str, Any]) -> str:
    header, rows, bounds = leaderboard_rows(report)
    classes = (["within" if r[2].rstrip(" " + NOT_BEYOND).endswith(WITHIN) else "" for r in rows]
               + ["bound"] * len(bounds))
    cells = [[_e(c.strip()) for c in r] for r in rows] + \
            [["bound", *(_e(c.strip()) for c in r[1:])] for r in bounds]
    return table(header, cells, 2, classes)


def _group_tables(report: Mapping[str, Any]) -> list[str]:
    groups = report.get("task_groups") or {}
    names = sorted({g for g in groups.values() if g})
    budgets = [str(b) for b in report["budgets"]]
    order = [*ranked(report), *ranked(report, ["bound"])]
    parts = []
    for g in names:
        tasks = [t for t in report["tasks"] if groups.get(t) == g]
        at_b1 = {n: report["strategies"][n]["1"]["per_group"].get(g) for n in order}
        by_b1 = sorted(order, key=lambda n: (at_b1[n] is None, at_b1[n] or 0.0))  # stable
        rows = [[_e(n), *(number(report["strategies"][n][b]["per_group"].get(g)) for b in budgets)]
                for n in by_b1]
        parts += [f"<h3>{_e(g)} ({len(tasks)} tasks: {_e(', '.join(tasks))})</h3>",
                  table(["strategy", *(f"B = {b}" for b in budgets)], rows)]
    return parts


def section_html(section: Section, raw: bool = False) -> list[str]:
    """A :class:`~selection.report.sections.Section` as a heading, paragraphs and a table;
    ``raw``: the cells are HTML already (escaped where they were built)."""
    tag = f"h{max(2, section.level)}"
    out = [f"<{tag}>{_inline(section.title)}</{tag}>"] if section.title else []
    out += [f"<p>{_inline(p)}</p>" for p in section.text]
    if section.header is not None:
        rows = section.rows if raw else [[_e(c) for c in r] for r in section.rows]
        out.append(table(section.header, rows, section.n_labels))
    return out


def _inline(text: str) -> str:
    """Markdown's inline code (`x`) as <code>, the rest escaped."""
    parts = _e(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _figure(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{_e(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption><code>{_e(name)}</code>: {_e(FIGURES.get(name, ''))}</figcaption></figure>")


def render_html(report: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """The self-contained page (figures: PNG bytes by file name, shown in :data:`FIGURES`
    order)."""
    title = f"whichmodel report: {report.get('experiment', report['pool'])}"
    noisy = has_noise(report)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        # no request to any host, not even this one: images are data: URIs, nothing else loads
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">",
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        *(f"<p><b>Warning:</b> {_e(w)}.</p>" for w in report.get("warnings", [])),
        f"<p>Pool <code>{_e(report['pool'])}</code>: {len(report['models'])} models, "
        f"{len(report['tasks'])} tasks, budgets {_e(', '.join(map(str, report['budgets'])))}. "
        "Relative regret r = (s* - s(S)) / (1 - min(s*, s(S))): s(S) is the best fine-tune test "
        "accuracy among a strategy's top B models, s* the best of the task's pool; 0 means the "
        "strategy found the task's best model.</p>",
        '<h2 id="leaderboard">Leaderboard</h2>',
        "<p>Mean relative regret over the tasks" + (" with its 95% interval" if noisy else "")
        + ", sorted by B = 1. " + (f"<code>{WITHIN}</code> (green rows at B = 1): within noise "
                                   "of the best strategy. " if noisy else "")
        + "<i>bound</i>: reads the task's own results (not a strategy one can use)."
        + (f" <code>{NOT_BEYOND}</code>: not shown better than the best static ranking "
           "(ranking every task by one metadata column; P &lt; 0.95). "
           + _e(static_line(report)) + "." if static_line(report) else "") + "</p>",
        _leaderboard(report),
        "<h2>By task group</h2>",
        "<ul>" + "".join(f"<li>{_e(line)}</li>" for line in group_lines(report, 10_000)) + "</ul>",
        *_group_tables(report),
        "<h2>Figures</h2>",
        *(_figure(name, figures[name]) for name in FIGURES if name in figures),
    ]
    for section in compute_sections(report):  # what each strategy spent, the frontier marked
        parts += section_html(section)
    if report.get("appendix_g"):
        parts += ["<h2>Smallest budget with zero regret over the whole pool (Appendix G)</h2>"]
        for section in appendix_g_sections(report):
            parts += section_html(section)
    parts += section_html(accuracy_section(report, 3, lambda text: f"<b>{_e(text)}</b>", _e),
                          raw=True)
    if noisy:
        floor = noise_floor(report)
        floor.text = ["<i>p_best</i>: the probability that the observed best model is the task's "
                      "best under resampling; <i>noise floor</i>: the expected relative regret of "
                      "the observed best model from measurement noise alone."]
        parts += [f"<h2>{_inline(floor.title)}</h2>", f"<p>{floor.text[0]}</p>",
                  table(floor.header, [[_e(c) for c in r] for r in floor.rows], 2)]
    if report.get("skipped_tasks"):
        parts.append(f"<p>Skipped tasks (no <code>{GROUND_TRUTH}</code> in the pool): "
                     f"{_e(', '.join(report['skipped_tasks']))}.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
