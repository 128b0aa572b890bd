"""The regret report's files: ``report.html``, ``regret.md|csv|json``, seven PNG figures and
Appendix G's table.

:func:`write_report` renders every file in memory first (:mod:`selection.report.text`,
:mod:`selection.report.plots`), then publishes each one through
:func:`whichmodel.files.atomic_write`, so a failure while rendering writes nothing and a failure
while writing leaves no partial or temporary file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from selection.report import plots as report_plots
from selection.report.html import render_html
from selection.report.sections import format_appendix_g, format_markdown
from selection.report.text import render_appendix_g_csv, render_csv
from whichmodel.files import atomic_write

REPORT_FILES = {"html": "report.html", "md": "regret.md", "csv": "regret.csv",
                "json": "regret.json", "png": "regret.png",
                "png_b2": "regret_b2.png", "png_heatmap": "regret_heatmap.png",
                "png_budget": "regret_budget.png", "png_zero": "zero_regret.png",
                "png_proxies": "proxies.png", "png_compute": "regret_compute.png",
                "appendix_g_md": "appendix_g.md", "appendix_g_csv": "appendix_g.csv"}


def _render_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n"


# Looked up on the modules at call time, not bound here, so a renderer can be replaced in tests.
_RENDERERS = {
    "md": lambda r: format_markdown(r).encode("utf-8"),
    "csv": lambda r: render_csv(r).encode("utf-8"),
    "json": lambda r: _render_json(r).encode("utf-8"),
    "png": lambda r: report_plots.render_png(r),
    "png_b2": lambda r: report_plots.render_png_b2(r),
    "png_heatmap": lambda r: report_plots.render_heatmap_png(r),
    "png_budget": lambda r: report_plots.render_budget_png(r),
    "png_zero": lambda r: report_plots.render_zero_png(r),
    "png_proxies": lambda r: report_plots.render_proxies_png(r),
    "png_compute": lambda r: report_plots.render_compute_png(r),
    "appendix_g_md": lambda r: format_appendix_g(r).encode("utf-8"),
    "appendix_g_csv": lambda r: render_appendix_g_csv(r).encode("utf-8"),
}


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the report's files into ``out_dir`` (created as needed) and return their paths by kind:

    - ``html``: ``report.html``, the whole report on one self-contained page
      (:func:`selection.report.html.render_html`, the figures embedded);
    - ``md``: ``regret.md`` (:func:`selection.report.sections.format_markdown`);
    - ``csv``: ``regret.csv``, long ``strategy,budget,task,group,relative_regret,log_odds_regret``
      with task ``mean`` rows for each group (group = its name) and overall (group empty);
    - ``json``: ``regret.json``, ``json.dumps(report, indent=2, sort_keys=True)``;
    - ``png``: ``regret.png``, regret per task at B = 1 of the handful of strategies
      (task-agnostic, the best proxy, its hybrid, the best learned strategy, random);
    - ``png_b2``: ``regret_b2.png``, the same at B = 2 (a note when B = 2 is not reported);
    - ``png_heatmap``: ``regret_heatmap.png``, every strategy by every task at B = 1 and 2;
    - ``png_budget``: ``regret_budget.png``, the handful's mean regret against B with its
      interval, and the fraction of tasks at zero regret (Figure 7);
    - ``png_zero``: ``zero_regret.png``, fraction of tasks at zero regret against B (Figure 7)
      and the smallest zero-regret budget per task and strategy (Appendix G);
    - ``png_proxies``: ``proxies.png``, fine-tune accuracy against proxy score, one panel per
      proxy;
    - ``png_compute``: ``regret_compute.png``, mean relative regret against total compute, the
      Pareto frontier marked (a note when the records carry no seconds);
    - ``appendix_g_md``, ``appendix_g_csv``: ``appendix_g.md`` / ``.csv``, the smallest zero-regret
      budget of the task-agnostic oracle, each proxy and task-agnostic, per pool and task.
    """
    rendered = {kind: render(report) for kind, render in _RENDERERS.items()}
    rendered["html"] = render_html(report, {REPORT_FILES[k]: v for k, v in rendered.items()
                                            if k.startswith("png")}).encode("utf-8")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / REPORT_FILES[kind] for kind in REPORT_FILES}
    for kind, data in rendered.items():
        atomic_write(paths[kind], data)
    return paths
