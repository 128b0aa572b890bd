"""The report's compute as people read it: the terminal's lines naming the frontier
(:func:`compute_lines`) and the table of what each strategy spent (:func:`compute_table`, a
section of ``report.html`` and ``regret.md``). The numbers are :mod:`selection.report.costs`'."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from typing import Any

from selection.report.costs import EARLY_STOP, SEARCH
from whichmodel.durations import format_duration

EXHAUSTIVE_LABEL = "per_task_best"  # the exhaustive search: fine-tune every model


def label(name: str) -> str:
    return "exhaustive search (per_task_best)" if name == EXHAUSTIVE_LABEL else name


def _point(p: Mapping[str, Any]) -> str:
    budget = "" if p["strategy"] in (EXHAUSTIVE_LABEL, SEARCH) else f" B={p['budget']}"
    return f"{label(p['strategy'])}{budget} {format_duration(p['total_s'])} {p['mean_regret']:.3f}"


def probe_ratio(report: Mapping[str, Any]) -> tuple[str, float, float] | None:
    """(proxy, its decision seconds, the exhaustive fine-tunes' seconds) of the cheapest proxy
    that reads features (the paper's "orders of magnitude" claim, for this sweep)."""
    compute = report.get("compute") or {}
    full = ((compute.get(EXHAUSTIVE_LABEL) or {}).get("1") or {}).get("decision_s")
    probes = {n: by_b["1"]["decision_s"] for n, by_b in compute.items()
              if n.startswith("proxy/") and n != EARLY_STOP and "1" in by_b
              and by_b["1"]["decision_s"] is not None}
    if not full or not probes:
        return None
    name = min(probes, key=lambda n: (probes[n], n))
    return name, probes[name], full


def compute_lines(report: Mapping[str, Any], width: int) -> list[str]:
    """The terminal's compute lines (none without logged seconds): the frontier's strategies
    with their total compute and mean relative regret, and what probing cost against
    fine-tuning the whole pool."""
    front = report.get("compute_frontier") or []
    if not front:
        return []
    n = len(report.get("tasks") or [])
    lines = _wrap_items(f"compute frontier over {n} tasks (least mean relative regret for its "
                        "total compute, from the seconds the runs logged):",
                        [_point(p) for p in front], width)
    ratio = probe_ratio(report)
    if ratio:
        name, probe, full = ratio
        lines += textwrap.wrap(f"probing the pool for {name} took {format_duration(probe)}: "
                               f"1/{full / probe:,.0f} of fine-tuning every model "
                               f"({format_duration(full)})" if probe > 0 else "", width,
                               subsequent_indent="  ")
    return lines


def _wrap_items(head: str, items: list[str], width: int) -> list[str]:
    """``head`` wrapped, then the items comma-separated, none broken across lines."""
    lines = textwrap.wrap(head, width, subsequent_indent="  ")
    for i, item in enumerate(items):
        item += "," if i < len(items) - 1 else ""
        if len(lines[-1]) + 1 + len(item) <= width:
            lines[-1] += " " + item
        else:
            lines.append("  " + item)
    return lines


def compute_table(report: Mapping[str, Any]
                  ) -> tuple[str, list[str], list[str], list[list[str]]] | None:
    """(title, paragraphs, header, rows): what each strategy spent (decision and total at each
    budget, the frontier marked ``*``), cheapest total at B = 1 first; None without logged
    seconds (:func:`selection.report.sections.compute_sections` makes it a section)."""
    compute = report.get("compute") or {}
    if not compute:
        return None
    budgets = [str(b) for b in report["budgets"]]
    front = {(p["strategy"], str(p["budget"])) for p in report.get("compute_frontier") or []}

    def total(name: str, b: str) -> float:
        value = ((compute[name].get(b) or {}).get("total_s"))
        return math.inf if value is None else value

    def cell(name: str, b: str) -> str:
        block = compute[name].get(b)
        if block is None:
            return ""
        return format_duration(block["total_s"]) + (" *" if (name, b) in front else "")

    order = sorted(compute, key=lambda n: (total(n, "1"), n))
    rows = [[label(n), format_duration((compute[n].get("1") or {}).get("decision_s")),
             *(cell(n, b) for b in budgets)] for n in order]
    n_tasks = len(report.get("tasks") or [])
    text = [f"Compute summed over the {n_tasks} tasks, from the seconds the runs logged: the "
            "decision (the pool's probes for a task-aware strategy, a learner's fit, every "
            "fine-tune for the exhaustive search) and the expected fine-tunes of the B picks "
            "(`-`: a pair without logged seconds). `*`: on the frontier, no strategy has lower "
            "mean relative regret for as little compute (`regret_compute.png`)."]
    ratio = probe_ratio(report)
    if ratio and ratio[1] > 0:
        text.append(f"Probing the pool for `{ratio[0]}` took {format_duration(ratio[1])}, "
                    f"1/{ratio[2] / ratio[1]:,.0f} of fine-tuning every model "
                    f"({format_duration(ratio[2])}).")
    return ("Compute: what each strategy spent", text,
            ["strategy", "decision", *(f"total B = {b}" for b in budgets)], rows)
