"""Every proxy of every public table against the baselines to beat: one table.

    whichmodel benchmark-proxies                         # --records public:all
    whichmodel benchmark-proxies --records public:modelspider10 --records mine.csv,mine_models.csv

Per table (the shipped ``public:`` tables, :mod:`sweeps.public`, or records files), the regret
report (:func:`sweeps.reporting.report_from_tables`) of its proxies, its static rankings
(``static:<column>`` of each metadata column it has) and ``random``: the mean relative regret at
B = 1 .. 3 with its 95% interval, whether the proxy beats the static ranking to beat (the one
of lowest mean regret at that B, ``static_baseline``) and random with probability >= 0.95 (the
report's ``beats_static`` and ``better_than``, from the same draws), and the mean weighted tau
in both conventions. Then one row per proxy name across the tables: its mean rank at B = 1
among each table's entries, how many tables it wins, how many it beats the static baseline on.
The report is the one ``whichmodel report --records`` prints, restricted to those strategies
(a strategy's numbers do not depend on which others are reported).
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from whichmodel.errors import WhichModelError

BUDGETS = (1, 2, 3)
LEVEL = 0.95  # "beats": P(lower mean regret) >= this, on the report's draws
WIDTH = 100
STATIC_COLUMNS = ("params", "imagenet_acc", "feature_dim", "upstream_size")


@dataclass(frozen=True)
class Table:
    name: str
    records: Path
    models: Path | None


def tables_of(refs: list[str]) -> list[Table]:
    """``public:all``, ``public:<name>``, ``RECORDS.csv`` or ``RECORDS.csv,MODELS.csv``; each
    table once, in the order given."""
    from sweeps import public

    out: dict[str, Table] = {}
    for ref in refs:
        if public.is_public(ref):
            for t in public.resolve(ref):
                out.setdefault(t.name, Table(t.name, t.records, t.models))
            continue
        records, _, models = str(ref).partition(",")
        table = Table(Path(records).stem, Path(records), Path(models) if models else None)
        if table.name in out:
            raise WhichModelError(f"--records {ref}: a second table named {table.name!r}; "
                                  "rename one of the files")
        out[table.name] = table
    return list(out.values())


def benchmark_table(table: Table) -> dict[str, Any]:
    """The report of one table restricted to its proxies, static rankings and random, as the
    numbers the benchmark prints."""
    from selection.records import read_models_csv, read_records_csv
    from sweeps.reporting import report_from_tables

    records = read_records_csv(table.records)
    meta = read_models_csv(table.models) if table.models else None
    proxies = sorted({m for m in records["metric"] if str(m).startswith("proxy/")})
    statics = [f"static:{c}" for c in STATIC_COLUMNS
               if meta is not None and c in meta.columns and np.isfinite(
                   np.asarray(meta[c], dtype=float)).any()]
    report = report_from_tables(records, meta, None, max_budget=max(BUDGETS),
                                strategies=[*proxies, *statics, "random"], timings=False,
                                proxy_notes={})  # no note is shown: no need to import torch
    budgets = [str(b) for b in report["budgets"]]
    better = report.get("better_than") or {}

    def beats(name: str, other: str | None, b: str) -> float | None:
        return None if other is None or b not in better else better[b][name].get(other)

    entries = {}
    for name in report["strategy_order"]:
        row: dict[str, Any] = {"regret": {}}
        for b in budgets:
            ci = (report.get("ci") or {}).get(name, {}).get(b) or {}
            base = report["static_baseline"].get(b)
            row["regret"][b] = {
                "mean": report["strategies"][name][b]["mean"], "low": ci.get("low"),
                "high": ci.get("high"),
                "p_beats_static": beats(name, base, b) if name in proxies else None,
                "p_beats_random": beats(name, "random", b) if name != "random" else None}
        if name in proxies:
            row["weighted_tau"] = _mean_defined(report["weighted_tau"][name])
            row["weighted_tau_scipy_default"] = _mean_defined(
                report["weighted_tau_scipy_default"][name])
        entries[name] = row
    return {"records": str(table.records), "models": len(report["models"]),
            "tasks": len(report["tasks"]), "proxies": proxies, "static": statics,
            "static_baseline": report["static_baseline"], "strategies": entries}


def _mean_defined(values: dict[str, float | None]) -> float | None:
    defined = [v for v in values.values() if v is not None]
    return float(np.mean(defined)) if defined else None


def across_tables(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per proxy name: the tables it is in, its mean rank at B = 1 among each table's entries
    (proxies, static rankings, random; ties share the mean rank), wins (first there) and the
    tables where it beats the static baseline with P >= 0.95 at B = 1."""
    from scipy.stats import rankdata

    out: dict[str, dict[str, Any]] = {}
    for result in results.values():
        names = list(result["strategies"])
        means = [result["strategies"][n]["regret"]["1"]["mean"] for n in names]
        ranks = dict(zip(names, rankdata(means, method="average").tolist()))
        for proxy in result["proxies"]:
            row = out.setdefault(proxy, {"tables": 0, "ranks": [], "wins": 0, "beats_static": 0})
            row["tables"] += 1
            row["ranks"].append(ranks[proxy])
            row["wins"] += int(ranks[proxy] == min(ranks.values()))
            p = result["strategies"][proxy]["regret"]["1"]["p_beats_static"]
            row["beats_static"] += int(p is not None and p >= LEVEL)
    for row in out.values():
        row["mean_rank"] = float(np.mean(row.pop("ranks")))
    return dict(sorted(out.items(), key=lambda kv: (kv[1]["mean_rank"], kv[0])))


def run_benchmark(refs: list[str]) -> dict[str, Any]:
    results = {t.name: benchmark_table(t) for t in tables_of(refs)}
    return {"tables": results, "across": across_tables(results), "level": LEVEL,
            "budgets": list(BUDGETS)}


# ------------------------------------------------------------------------------------ text
def _bound(x: float | None) -> str:
    if x is None:
        return "-"
    return "1.00" if x >= 0.9995 else f"{x:.3f}".removeprefix("0")


def _cell(r: dict[str, Any]) -> str:
    if r["mean"] is None:
        return "-"
    marks = ("s" if (r["p_beats_static"] or 0) >= LEVEL else " ") + (
        "r" if (r["p_beats_random"] or 0) >= LEVEL else " ")
    interval = f"[{_bound(r['low'])},{_bound(r['high'])}]" if r["low"] is not None else "-"
    return f"{r['mean']:.3f} {interval:<11} {marks}"  # one width: the marks line up


def _tau(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _baseline_line(result: dict[str, Any]) -> str:
    base = result["static_baseline"]
    if not base:
        return "no static ranking (no model metadata)"
    names = sorted(set(base.values()))
    if len(names) == 1:
        return f"to beat: {names[0]}"
    return "to beat: " + ", ".join(f"{v} (B = {b})" for b, v in base.items())


def _verdict(result: dict[str, Any]) -> str:
    if not result["proxies"]:
        return "no proxy scores published for this table"
    parts = []
    for b in map(str, BUDGETS):
        if b not in result["static_baseline"]:
            continue
        won = [p.removeprefix("proxy/") for p in result["proxies"]
               if (result["strategies"][p]["regret"].get(b, {}).get("p_beats_static") or 0) >= LEVEL]
        parts.append(f"B = {b}: {', '.join(won) or 'none'}")
    if not parts:
        return "no static ranking to beat"
    return f"beat the static baseline at P >= {LEVEL}: " + "; ".join(parts)


def format_benchmark(out: dict[str, Any], width: int = WIDTH) -> str:
    from selection.report.tables import table_lines

    lines = [f"whichmodel benchmark-proxies: {len(out['tables'])} table(s); mean relative regret "
             "over tasks [95% interval]",
             f"s / r: beats the static ranking to beat / random at P >= {LEVEL}; tau: mean "
             "weighted tau (rank=None),",
             "tau_sd: scipy's default (rank=True, SFDA's convention); proxies by mean regret at "
             "B = 1"]
    for name, result in out["tables"].items():
        lines += [""] + textwrap.wrap(f"{name}: {result['models']} models x {result['tasks']} "
                                      f"tasks; {_baseline_line(result)}", width,
                                      subsequent_indent="  ")
        budgets = [b for b in map(str, BUDGETS)
                   if b in next(iter(result["strategies"].values()))["regret"]]
        header = ["strategy", *[f"B = {b}" for b in budgets], "tau", "tau_sd"]
        order = sorted(result["proxies"], key=lambda p: (
            result["strategies"][p]["regret"]["1"]["mean"], p))
        rows = []
        for s in [*order, *result["static"], "random"]:
            row = result["strategies"][s]
            rows.append([s, *[_cell(row["regret"][b]) for b in budgets],
                         _tau(row.get("weighted_tau")), _tau(row.get("weighted_tau_scipy_default"))])
        lines += table_lines(header, rows, 1, width)
        lines += textwrap.wrap(_verdict(result), width, subsequent_indent="  ")
    if out["across"]:
        lines += ["", "across tables (B = 1; rank among each table's proxies, static rankings and "
                      "random; 1 is best):"]
        rows = [[p, str(r["tables"]), f"{r['mean_rank']:.1f}", str(r["wins"]),
                 str(r["beats_static"])] for p, r in out["across"].items()]
        lines += table_lines(["proxy", "tables", "mean rank", "wins", "beats static"], rows, 1,
                             width)
    return "\n".join(line.rstrip() for line in lines)


def cmd_benchmark_proxies(args) -> int:
    out = run_benchmark(args.records or ["public:all"])
    text = (json.dumps(out, indent=2, sort_keys=True) if args.format == "json"
            else format_benchmark(out))
    if args.output and args.output != "-":
        from whichmodel.files import atomic_write

        atomic_write(args.output, text + "\n")
    else:
        print(text)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("benchmark-proxies",
                       help="every proxy of the public tables (or records files) against the "
                            "static rankings and random, one table")
    p.add_argument("--records", action="append", metavar="REF",
                   help="public:all (default), public:<name>, RECORDS.csv or "
                        "RECORDS.csv,MODELS.csv; repeatable")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--output", help="write there instead of printing (- prints)")
    p.set_defaults(func=cmd_benchmark_proxies)
