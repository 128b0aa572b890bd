"""The regret report's figures, rendered in memory as PNG bytes.

- :func:`render_png`, :func:`render_png_b2`: relative regret per task and strategy at B = 1 and
  B = 2 (the bar charts of Renggli et al. 2022, Figures 3-6) beside the mean over tasks against
  the budget;
- :func:`render_zero_png`: the fraction of tasks at zero regret against the budget (Figure 7) and
  the smallest zero-regret budget per task and strategy over the whole pool (Appendix G);
- :func:`render_proxies_png`: each proxy's score against the fine-tune test accuracy, per task.

Each reads the dict of :func:`selection.report.compute_report`, in the task and strategy order
of :mod:`selection.report_text`, and draws on matplotlib's Agg canvas without pyplot, so no
figure stays registered anywhere.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from selection.records import GROUND_TRUTH
from selection.report_text import ordered_tasks, strategy_order


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _colors(names: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _note_png(title: str, text: str) -> bytes:
    fig = _figure(6.0, 2.0)
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return _png_bytes(fig)


def _render_regret_png(report: Mapping[str, Any], budget: int) -> bytes:
    """Bars of relative regret per task and strategy at one budget (the paper's Figures 3-6),
    beside the mean over tasks against the budget."""
    names = strategy_order(report)
    tasks = ordered_tasks(report)
    budgets = [int(b) for b in report["budgets"]]
    if budget not in budgets:
        return _note_png(f"relative regret per task, B = {budget}",
                         f"B = {budget} is not reported (budgets: {budgets}); "
                         "raise max_budget or enlarge the pool")
    colors = _colors(names)
    width_in = min(40.0, 6.0 + 0.18 * len(tasks) * max(1, len(names)))
    fig = _figure(width_in, 5.0)
    ax_bar, ax_line = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})

    x = np.arange(len(tasks))
    bar = 0.8 / max(1, len(names))
    for j, n in enumerate(names):
        per_task = report["strategies"][n][str(budget)]["per_task"]
        values = [per_task[t] if per_task[t] is not None else np.nan for t in tasks]
        ax_bar.bar(x - 0.4 + (j + 0.5) * bar, values, bar, label=n, color=colors[n])
    ax_bar.set_xticks(x, tasks, rotation=45, ha="right")
    ax_bar.set_ylabel("relative regret")
    ax_bar.set_title(f"relative regret per task, B = {budget} (pool '{report['pool']}')")
    ax_bar.set_xlim(-0.6, len(tasks) - 0.4)

    for n in names:
        means = [report["strategies"][n][str(b)]["mean"] for b in budgets]
        ax_line.plot(budgets, [np.nan if v is None else v for v in means], marker="o", label=n, color=colors[n])
    ax_line.set_xticks(budgets)
    ax_line.set_xlabel("budget B")
    ax_line.set_ylabel("mean relative regret")
    ax_line.set_title("mean over tasks")
    ax_line.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    return _png_bytes(fig, dpi=110)


def render_png(report: Mapping[str, Any]) -> bytes:
    """``regret.png``: relative regret per task at B = 1 and the mean against the budget."""
    return _render_regret_png(report, 1)


def render_png_b2(report: Mapping[str, Any]) -> bytes:
    """``regret_b2.png``: the same at B = 2 (a note when B = 2 is not reported)."""
    return _render_regret_png(report, 2)


def render_zero_png(report: Mapping[str, Any]) -> bytes:
    """Fraction of tasks at zero regret against the budget (Figure 7), beside the smallest
    zero-regret budget over the whole pool per task and strategy (Appendix G)."""
    names = strategy_order(report)
    tasks = ordered_tasks(report)
    budgets = [int(b) for b in report["budgets"]]
    colors = _colors(names)
    fraction = report.get("zero_regret_fraction") or {}
    full = report.get("zero_regret_budget_full") or {}
    fig = _figure(min(40.0, 7.0 + 0.35 * len(names)), max(4.0, 1.5 + 0.3 * len(tasks)))
    ax_line, ax_heat = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    for n in names:
        if n in fraction:
            ax_line.plot(budgets, [fraction[n][str(b)] for b in budgets], marker="o", label=n, color=colors[n])
    ax_line.set_xticks(budgets)
    ax_line.set_ylim(-0.03, 1.03)
    ax_line.set_xlabel("budget B")
    ax_line.set_ylabel("fraction of tasks with zero regret")
    ax_line.set_title(f"zero regret against budget (pool '{report['pool']}')")
    # Below the panels: with one entry per strategy the legend is taller than the line plot.
    fig.legend(*ax_line.get_legend_handles_labels(), loc="outside lower center",
               ncol=min(6, max(1, len(names))), fontsize="x-small", frameon=False)

    shown = [n for n in names if n in full]
    if shown:
        grid = np.array([[full[n][t] for n in shown] for t in tasks], dtype=float)
        from matplotlib.ticker import MaxNLocator

        image = ax_heat.imshow(grid, aspect="auto", cmap="viridis_r")
        fig.colorbar(image, ax=ax_heat, label="models to fine-tune", ticks=MaxNLocator(integer=True))
        if grid.size <= 200:  # numbers stay legible (and text is slow to draw)
            middle = (np.nanmin(grid) + np.nanmax(grid)) / 2
            for (i, j), v in np.ndenumerate(grid):
                ax_heat.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                             color="black" if v <= middle else "white")
        ax_heat.set_xticks(np.arange(len(shown)), shown, rotation=60, ha="right", fontsize="small")
        ax_heat.set_yticks(np.arange(len(tasks)), tasks, fontsize="small")
    ax_heat.set_title("smallest budget with zero regret (whole pool)")
    return _png_bytes(fig)


def render_proxies_png(report: Mapping[str, Any]) -> bytes:
    """One small scatter per task: each proxy's score (min-max scaled per task, since proxies
    live on different scales) against the fine-tune test accuracy; one colour per proxy."""
    scores = report.get("proxy_scores") or {}
    tasks = ordered_tasks(report)
    if not scores:
        return _note_png("proxy score against fine-tune accuracy", "no proxy scores in the records")
    proxies = list(scores)
    colors = _colors(proxies)
    ncols = min(5, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig = _figure(2.8 * ncols + 1.8, 2.5 * nrows + 0.4)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    acc = report["finetune_test_acc"]
    for ax, task in zip(axes, tasks):
        for p in proxies:
            by_model = scores[p].get(task) or {}
            models = [m for m in by_model if m in acc[task]]
            if not models:
                continue
            x = np.array([by_model[m] for m in models], dtype=float)
            span = float(x.max() - x.min())
            x = (x - x.min()) / span if span > 0 else np.full_like(x, 0.5)
            # plain markers draw much faster than scatter collections
            ax.plot(x, [acc[task][m] for m in models], "o", ms=2.5, alpha=0.7, color=colors[p], label=p)
        ax.set_title(task, fontsize="small")
        ax.tick_params(labelsize="x-small")
        ax.set_xlim(-0.05, 1.05)
    for ax in axes[len(tasks):]:
        ax.set_axis_off()
    fig.supxlabel("proxy score, min-max scaled per task", fontsize="small")
    fig.supylabel(f"{GROUND_TRUTH}", fontsize="small")
    handles = [axes[0].plot([], [], "o", ms=4, color=colors[p], label=p)[0] for p in proxies]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)
    return _png_bytes(fig, dpi=90)
