"""The regret report's figures, rendered in memory as PNG bytes, each at most 2,000 pixels wide.

- :func:`render_png`, :func:`render_png_b2`: relative regret per task at B = 1 and B = 2 for a
  handful of strategies (the paper's Figures 3-6): task-agnostic, the best proxy, its hybrid,
  the best learned strategy and random (:func:`selection.report.leaderboard.highlights`), the
  tasks grouped by task group, and their mean with its 95% interval;
- :func:`render_heatmap_png`: relative regret of every strategy on every task at B = 1 and 2,
  the tasks grouped by task group, the strategies in leaderboard order;
- :func:`render_budget_png`: the handful's mean relative regret against the budget with its
  interval band, and the fraction of tasks at zero regret (Figure 7);
- :func:`render_zero_png`: the fraction of tasks at zero regret of every strategy, and the
  smallest zero-regret budget per task and strategy over the whole pool (Appendix G);
- :func:`render_proxies_png`: fine-tune accuracy against proxy score, one panel per proxy (best
  rank agreement first), one colour per task;
- :func:`render_compute_png`: mean relative regret against total compute (log scale) of every
  strategy and budget, the Pareto frontier marked (:mod:`selection.report.costs`).

Each reads the dict of :func:`selection.report.compute.compute_report` and draws on matplotlib's Agg
canvas without pyplot, so no figure stays registered anywhere.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from selection.records import GROUND_TRUTH
from selection.report.costs import SEARCH, frontier, points
from selection.report.leaderboard import highlights, ranked, strategy_kind
from selection.report.text import defined_mean, ordered_tasks, strategy_order

MAX_WIDTH_PX = 2000
HEATMAP_BUDGETS = (1, 2)
MAX_PROXY_PANELS = 9


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels of PNG bytes (from the IHDR chunk)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


def _png_bytes(fig, dpi: int = 100) -> bytes:
    """The figure as PNG, saved again at a lower resolution when it would be wider than
    :data:`MAX_WIDTH_PX` (a tight bounding box can grow past the figure's size)."""
    for _ in range(3):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        width = png_size(buf.getvalue())[0]
        if width <= MAX_WIDTH_PX:
            return buf.getvalue()
        dpi = max(20, int(dpi * MAX_WIDTH_PX / width) - 1)
    raise ValueError(f"figure still {width} px wide at {dpi} dpi")


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


def _nan(value: float | None) -> float:
    return np.nan if value is None else float(value)


def _group_spans(report: Mapping[str, Any], tasks: list[str]) -> list[tuple[str, int, int]]:
    """(group, first index, last index) of each run of tasks of one group, in ``tasks`` order."""
    groups = report.get("task_groups") or {}
    spans: list[tuple[str, int, int]] = []
    for i, t in enumerate(tasks):
        g = groups.get(t) or ""
        if spans and spans[-1][0] == g:
            spans[-1] = (g, spans[-1][1], i)
        else:
            spans.append((g, i, i))
    return spans


def _mark_groups(ax, report: Mapping[str, Any], tasks: list[str]) -> None:
    """Lines between task groups and each group's name above its tasks."""
    spans = _group_spans(report, tasks)
    for g, first, last in spans:
        if first > 0:
            ax.axvline(first - 0.5, color="0.3", lw=1.0)
        if g:
            ax.text((first + last) / 2, 1.01, g, transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize="small", style="italic")


def _render_regret_png(report: Mapping[str, Any], budget: int) -> bytes:
    """Bars of relative regret per task for the handful of strategies at one budget (the
    paper's Figures 3-6), the tasks grouped; the last group of bars is the mean over tasks
    with its 95% interval."""
    budgets = [int(b) for b in report["budgets"]]
    if budget not in budgets:
        return _note_png(f"relative regret per task, B = {budget}",
                         f"B = {budget} is not reported (budgets: {budgets}); "
                         "raise max_budget or enlarge the pool")
    names = highlights(report)
    tasks = ordered_tasks(report)
    colors = _colors(names)
    fig = _figure(min(19.0, 4.0 + 0.5 * (len(tasks) + 1) * max(1, len(names)) / 2.5), 4.8)
    ax = fig.subplots()
    x = np.arange(len(tasks) + 1)
    bar = 0.8 / max(1, len(names))
    b = str(budget)
    for j, n in enumerate(names):
        block = report["strategies"][n][b]
        values = [_nan(block["per_task"][t]) for t in tasks] + [_nan(block["mean"])]
        ax.bar(x - 0.4 + (j + 0.5) * bar, values, bar, label=n, color=colors[n])
        ci = (report.get("ci") or {}).get(n, {}).get(b)
        if ci and block["mean"] is not None:
            low, high = block["mean"] - ci["low"], ci["high"] - block["mean"]
            ax.errorbar(x[-1] - 0.4 + (j + 0.5) * bar, block["mean"],
                        yerr=[[max(0.0, low)], [max(0.0, high)]], fmt="none", ecolor="black",
                        capsize=2, lw=1)
    ax.set_xticks(x, [*tasks, "mean"], rotation=40, ha="right")
    ax.get_xticklabels()[-1].set_fontweight("bold")
    ax.axvline(len(tasks) - 0.5, color="0.3", lw=1.0, ls="--")
    _mark_groups(ax, report, tasks)
    ax.set_xlim(-0.6, len(tasks) + 0.4)
    ax.set_ylabel("relative regret (0: the task's best model)")
    ax.set_title(f"relative regret per task, B = {budget} (pool '{report['pool']}'; "
                 "mean: 95% interval)", pad=18)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return _png_bytes(fig, dpi=100)


def render_png(report: Mapping[str, Any]) -> bytes:
    """``regret.png``: relative regret per task of the handful of strategies at B = 1."""
    return _render_regret_png(report, 1)


def render_png_b2(report: Mapping[str, Any]) -> bytes:
    """``regret_b2.png``: the same at B = 2 (a note when B = 2 is not reported)."""
    return _render_regret_png(report, 2)


def render_heatmap_png(report: Mapping[str, Any]) -> bytes:
    """``regret_heatmap.png``: relative regret, strategy (leaderboard order, bounds last) by
    task (grouped by task group), one panel per budget of :data:`HEATMAP_BUDGETS`."""
    tasks = ordered_tasks(report)
    strategies = ranked(report)
    names = [*strategies, *ranked(report, ["bound"])]
    shown = [b for b in HEATMAP_BUDGETS if b in [int(x) for x in report["budgets"]]]
    label_in = 0.085 * max(len(n) for n in names) + 0.8
    panel_in = min(8.5, 0.45 * len(tasks) + 0.6)
    fig = _figure(label_in + panel_in * len(shown) + 1.2, 1.8 + 0.26 * len(names))
    axes = np.atleast_1d(fig.subplots(1, len(shown), sharey=True, squeeze=False)).ravel()
    image = None
    for ax, b in zip(axes, shown):
        grid = np.array([[_nan(report["strategies"][n][str(b)]["per_task"][t]) for t in tasks]
                         for n in names])
        top = float(np.nanmax(grid)) if np.isfinite(grid).any() else 1.0
        image = ax.imshow(grid, aspect="auto", cmap="magma_r", vmin=0.0, vmax=max(1e-9, top))
        if grid.size <= 600:  # numbers stay legible
            for (i, j), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}".lstrip("0") if v > 0 else "0", ha="center",
                            va="center", fontsize=6, color="white" if v > top / 2 else "black")
        ax.set_xticks(np.arange(len(tasks)), tasks, rotation=60, ha="right", fontsize="small")
        ax.set_title(f"B = {b}", pad=16)
        _mark_groups(ax, report, tasks)
        ax.axhline(len(strategies) - 0.5, color="0.3", lw=1.0, ls="--")  # the bounds below
    axes[0].set_yticks(np.arange(len(names)), names, fontsize="small")
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="relative regret", shrink=0.8)
    fig.suptitle(f"relative regret by strategy and task (pool '{report['pool']}'; best "
                 "strategies at B = 1 first, the bounds below the dashed line)", fontsize="medium")
    return _png_bytes(fig, dpi=100)


def render_budget_png(report: Mapping[str, Any]) -> bytes:
    """``regret_budget.png``: the handful's mean relative regret against the budget with the 95%
    interval as a band, and the fraction of tasks at zero regret against the budget (Figure 7)."""
    names = highlights(report)
    budgets = [int(b) for b in report["budgets"]]
    colors = _colors(names)
    fig = _figure(12.0, 4.4)
    ax_mean, ax_zero = fig.subplots(1, 2)
    fraction = report.get("zero_regret_fraction") or {}
    for n in names:
        means = [_nan(report["strategies"][n][str(b)]["mean"]) for b in budgets]
        ax_mean.plot(budgets, means, marker="o", color=colors[n], label=n)
        ci = (report.get("ci") or {}).get(n)
        if ci:
            ax_mean.fill_between(budgets, [ci[str(b)]["low"] for b in budgets],
                                 [ci[str(b)]["high"] for b in budgets], color=colors[n], alpha=0.15,
                                 lw=0)
        if n in fraction:
            ax_zero.plot(budgets, [fraction[n][str(b)] for b in budgets], marker="o",
                         color=colors[n], label=n)
    for ax in (ax_mean, ax_zero):
        ax.set_xticks(budgets)
        ax.set_xlabel("budget B (models fine-tuned)")
    ax_mean.set_ylim(bottom=0)
    ax_mean.set_ylabel("mean relative regret")
    ax_mean.set_title("mean relative regret over tasks (band: 95% interval)")
    ax_zero.set_ylim(-0.03, 1.03)
    ax_zero.set_ylabel("fraction of tasks with zero regret")
    ax_zero.set_title("tasks where the best model is found (Figure 7)")
    ax_zero.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return _png_bytes(fig, dpi=100)


def render_zero_png(report: Mapping[str, Any]) -> bytes:
    """Fraction of tasks at zero regret against the budget for every strategy (Figure 7),
    beside the smallest zero-regret budget over the whole pool per task and strategy
    (Appendix G)."""
    names = strategy_order(report)
    tasks = ordered_tasks(report)
    budgets = [int(b) for b in report["budgets"]]
    colors = _colors(names)
    fraction = report.get("zero_regret_fraction") or {}
    full = report.get("zero_regret_budget_full") or {}
    fig = _figure(min(19.0, 7.0 + 0.35 * len(names)), max(4.0, 1.5 + 0.3 * len(tasks)))
    ax_line, ax_heat = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    for n in names:
        if n in fraction:
            ax_line.plot(budgets, [fraction[n][str(b)] for b in budgets], marker="o", label=n,
                         color=colors[n])
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
        fig.colorbar(image, ax=ax_heat, label="models to fine-tune",
                     ticks=MaxNLocator(integer=True))
        if grid.size <= 400:  # numbers stay legible (and text is slow to draw)
            middle = (np.nanmin(grid) + np.nanmax(grid)) / 2
            for (i, j), v in np.ndenumerate(grid):
                ax_heat.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                             color="black" if v <= middle else "white")
        ax_heat.set_xticks(np.arange(len(shown)), shown, rotation=60, ha="right", fontsize="small")
        ax_heat.set_yticks(np.arange(len(tasks)), tasks, fontsize="small")
    ax_heat.set_title("smallest budget with zero regret (whole pool)")
    return _png_bytes(fig)


def proxy_order(report: Mapping[str, Any]) -> list[str]:
    """The proxies with scores, best mean weighted tau first (undefined last)."""
    means = mean_taus(report)
    return sorted(report.get("proxy_scores") or {},
                  key=lambda p: (-(means[p] if means[p] is not None else -math.inf), p))


def mean_taus(report: Mapping[str, Any]) -> dict[str, float | None]:
    """Each scored proxy's mean weighted tau over the tasks where it is defined (None if none)."""
    taus = report.get("weighted_tau") or {}
    return {p: defined_mean(taus.get(p) or {})[0] for p in report.get("proxy_scores") or {}}


def render_proxies_png(report: Mapping[str, Any]) -> bytes:
    """One panel per proxy (at most :data:`MAX_PROXY_PANELS`, best mean weighted tau first):
    the fine-tune test accuracy against the proxy's score, min-max scaled per task (proxies
    live on different scales), one colour per task."""
    scores = report.get("proxy_scores") or {}
    if not scores:
        return _note_png("proxy score against fine-tune accuracy", "no proxy scores in the records")
    proxies = proxy_order(report)[:MAX_PROXY_PANELS]
    tasks = ordered_tasks(report)
    colors = _colors(tasks)
    means = mean_taus(report)
    ncols = min(3, len(proxies))
    nrows = math.ceil(len(proxies) / ncols)
    fig = _figure(3.6 * ncols + 2.2, 3.0 * nrows + 0.6)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharey=True)).ravel()
    acc = report["finetune_test_acc"]
    for ax, p in zip(axes, proxies):
        for task in tasks:
            by_model = scores[p].get(task) or {}
            models = [m for m in by_model if m in acc[task]]
            if not models:
                continue
            x = np.array([by_model[m] for m in models], dtype=float)
            span = float(x.max() - x.min())
            x = (x - x.min()) / span if span > 0 else np.full_like(x, 0.5)
            # plain markers draw much faster than scatter collections
            ax.plot(x, [acc[task][m] for m in models], "o", ms=3.5, alpha=0.8,
                    color=colors[task], label=task)
        tau = f"mean weighted tau {means[p]:.2f}" if means[p] is not None else "tau undefined"
        ax.set_title(f"{p}\n{tau}", fontsize="small")
        ax.tick_params(labelsize="x-small")
        ax.set_xlim(-0.05, 1.05)
    for ax in axes[len(proxies):]:
        ax.set_axis_off()
    fig.supxlabel("proxy score, min-max scaled per task", fontsize="small")
    fig.supylabel(f"{GROUND_TRUTH}", fontsize="small")
    handles = [axes[0].plot([], [], "o", ms=4, color=colors[t], label=t)[0] for t in tasks]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False,
               title="task")
    return _png_bytes(fig, dpi=100)


KIND_COLORS = {"proxy": "tab:blue", "hybrid": "tab:cyan", "learned": "tab:purple",
               "baseline": "tab:gray", "bound": "tab:red", "search": "tab:orange"}


def render_compute_png(report: Mapping[str, Any]) -> bytes:
    """``regret_compute.png``: mean relative regret against total compute (decision and the
    picks' fine-tunes, summed over the tasks; log scale) for every strategy and budget, one
    line per strategy through its budgets, coloured by kind; the Pareto frontier as a black
    step line with its points named; the exhaustive search (``per_task_best``) at zero regret."""
    found = points(report)
    if not found:
        return _note_png("mean relative regret against compute",
                         "no compute to show: the records carry no logged seconds (time/...)")
    front = frontier(report)
    fig = _figure(12.0, 6.5)
    ax = fig.subplots()
    by_name: dict[str, list[dict[str, Any]]] = {}
    for p in found:
        by_name.setdefault(p["strategy"], []).append(p)
    seen = set()
    for name, pts in by_name.items():
        kind = "search" if name == SEARCH else strategy_kind(name)
        pts = sorted(pts, key=lambda p: p["budget"])
        xs, ys = [p["total_s"] for p in pts], [p["mean_regret"] for p in pts]
        if name == "per_task_best":  # the reference: every model fine-tuned, zero regret
            ax.plot(xs[:1], ys[:1], "*", ms=14, color=KIND_COLORS["bound"],
                    label="exhaustive search (per_task_best)")
            ax.annotate("exhaustive search", (xs[0], ys[0]), textcoords="offset points",
                        xytext=(-10, 9), fontsize="x-small", ha="right")
            continue
        ax.plot(xs, ys, marker="o", ms=4, lw=0.6, alpha=0.7,
                color=KIND_COLORS.get(kind, "tab:green"), label=kind if kind not in seen else None)
        seen.add(kind)
    fx = [p["total_s"] for p in front]
    fy = [p["mean_regret"] for p in front]
    ax.step(fx, fy, where="post", color="black", lw=1.5, label="Pareto frontier")
    ax.plot(fx, fy, "o", ms=7, mfc="none", mec="black")
    for p in front:
        if p["strategy"] == "per_task_best":
            continue  # named above
        name = p["strategy"]
        text = name if name == SEARCH else f"{name} B={p['budget']}"
        ax.annotate(text, (p["total_s"], p["mean_regret"]), textcoords="offset points",
                    xytext=(5, 5), fontsize="x-small")
    ax.set_xscale("log")
    ax.set_ylim(bottom=-0.01)
    ax.set_xlabel("total compute, seconds summed over the tasks (log scale): the decision and "
                  "the picks' fine-tunes")
    ax.set_ylabel("mean relative regret")
    ax.set_title(f"regret against compute (pool '{report['pool']}', {len(report['tasks'])} "
                 "tasks; one line per strategy through its budgets)")
    ax.legend(loc="upper right", fontsize="small", frameon=False)
    return _png_bytes(fig, dpi=100)
