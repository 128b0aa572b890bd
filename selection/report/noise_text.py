"""The report's noise, rendered (selection/noise.py computes it): each strategy's mean relative
regret with its 95% interval and a mark where it is within noise of the best, and per task the
noise floor and how sure the best model is (``p_best``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

WITHIN = "~"  # within noise of the best non-oracle strategy at that budget
FLOOR = "°"  # a task's regret at or below its noise floor
NOT_BEYOND = "!"  # not shown better than the best static ranking (P < 0.95)


def not_beyond_static(report: Mapping[str, Any], name: str, budget: str) -> bool:
    """The strategy is measured against the best static ranking at this budget and does not beat
    it with probability >= the report's level (0.95)."""
    p = (report.get("beats_static") or {}).get(budget, {}).get(name)
    return p is not None and p < (report.get("noise") or {}).get("level", 0.95)


def static_line(report: Mapping[str, Any], budget: str = "1") -> str | None:
    """Which static ranking is the baseline to beat, and who beats it (one line)."""
    best = (report.get("static_baseline") or {}).get(budget)
    if best is None:
        return None
    mean = report["strategies"][best][budget]["mean"]
    probs = (report.get("beats_static") or {}).get(budget, {})
    known = {n: p for n, p in probs.items() if p is not None}
    head = f"static baseline to beat at B = {budget}: {best} ({mean:.3f})"
    if not known:
        return f"{head}; no noise estimate to test against it"
    level = (report.get("noise") or {}).get("level", 0.95)
    winners = [n for n, p in known.items() if p >= level]
    return (f"{head}; beaten at P >= {level:.2f} by {len(winners)} of {len(known)} proxies and "
            "learned strategies" + (f": {', '.join(winners)}" if winners else
                                    f" ({NOT_BEYOND} on the others)"))


def has_noise(report: Mapping[str, Any]) -> bool:
    return bool(report.get("ci"))


def interval_rows(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """strategy x budget: ``mean [low, high]`` with ``~`` where within noise of the best."""
    budgets = [str(b) for b in report["budgets"]]
    header = ["strategy", *(f"B={b}" for b in budgets)]
    rows = []
    for name in report["strategy_order"]:
        cells = [name]
        for b in budgets:
            mean = report["strategies"][name][b]["mean"]
            ci = report["ci"][name][b]
            mark = f" {WITHIN}" if name in report["within_noise"].get(b, []) else ""
            cells.append(f"{mean:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]{mark}")
        rows.append(cells)
    return header, rows


def task_rows(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per task: the observed best model, its p_best, the runner-up by p_best, the noise floor
    and what was resampled."""
    header = ["task", "best model", "p_best", "next most likely", "noise floor", "resampled"]
    rows = []
    for t in report["tasks"]:
        best = report["best_model"][t]
        p = report["p_best"].get(t)
        floor = report["noise_floor"].get(t)
        if p is None:
            rows.append([t, best, "-", "-", "-", "nothing (one repetition, no predictions)"])
            continue
        other = max((m for m in p if m != best), key=lambda m: p[m], default=None)
        rows.append([t, best, f"{p[best]:.2f}",
                     f"{other} ({p[other]:.2f})" if other else "-", f"{floor:.4f}",
                     report["noise_source"][t]])
    return header, rows


def mark_cell(report: Mapping[str, Any], name: str, budget: int, task: str, text: str) -> str:
    """A per-task regret cell with ``°`` where the regret is not above the task's noise floor."""
    above = (report.get("above_noise_floor") or {}).get(name, {}).get(str(budget), {}).get(task)
    return text + FLOOR if above is False else text


def legend(report: Mapping[str, Any]) -> str:
    noise = report.get("noise") or {}
    return (f"Mean relative regret with its 95% interval ({noise.get('draws', 0):,} bootstrap "
            f"draws, seed {noise.get('seed')}: {noise.get('resampled', '')}; bias-corrected and "
            f"accelerated percentiles). `{WITHIN}`: within noise of the best non-oracle strategy "
            "at that budget (it does not have the lower mean regret with probability >= 0.95). "
            f"In the per-task tables `{FLOOR}` marks a regret at or below the task's noise floor "
            "(the regret that measurement noise alone gives the observed best model).")
