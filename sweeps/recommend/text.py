"""The decision as a person reads it: ranking, picks, fine-tunes, winner, cost."""

from __future__ import annotations

from typing import Any

from selection.report.tables import number
from whichmodel.durations import format_duration

WIDTH = 100
_SHOWN_PROXIES = 3  # proxy columns in the text ranking (the JSON has them all)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def format_decision(d: dict[str, Any]) -> str:
    """The decision as a person reads it: ranking, picks, fine-tunes, winner, cost."""
    proxies = list(dict.fromkeys(p for row in d["ranking"] for p in row["proxies"]))
    strategy_proxy = d["strategy"].split(":", 1)[-1]
    shown = ([strategy_proxy] if strategy_proxy in proxies else [])
    shown += [p for p in proxies if p not in shown][:_SHOWN_PROXIES - len(shown)]
    src = d.get("strategy_source")
    how = (f" (lowest mean regret at B = {src['budget']} in the latest report: "
           f"{src['mean_regret']:.3f})") if src else ""
    lines = [f"whichmodel recommend: task {d['task']}, pool {d['pool_name']} "
             f"({len(d['pool'])} models), budget {d['budget']}",
             f"strategy {d['strategy']}{how}", ""]
    width = max(len("model"), *(len(r["model"]) for r in d["ranking"]))
    head = f"{'rank':>4}  {'model':<{width}}  {'score':>8}" + "".join(f"  {p:>14}" for p in shown)
    lines.append(head[:WIDTH])
    previous = None
    for i, row in enumerate(d["ranking"], 1):
        tie = "=" if row["tie_group"] == previous else " "
        previous = row["tie_group"]
        pick = "*" if row["model"] in d["picks"] else " "
        cells = "".join(f"  {number(row['proxies'].get(p)):>14}" for p in shown)
        lines.append(f"{i:>3}{tie}{pick} {row['model']:<{width}}  {number(row['score']):>8}{cells}"[:WIDTH])
    lines.append("(* picked; = tied with the row above: ties in the order of their names)")
    if d["strategy"].startswith("hybrid:"):
        lines.append("(the hybrid: 1 is task-agnostic's pick, then the proxy's order)")
    if d.get("note"):
        lines.append(d["note"])
    lines.append("")
    if d["finetuned"]:
        lines.append("fine-tuned:")
        for m, r in d["finetuned"].items():
            lines.append(f"  {m:<{width}}  val {number(r['val_acc'])}  test {number(r['test_acc'])}  "
                         f"({_seconds(r.get('seconds'))})")
        w = d["winner"]
        lines.append(f"winner: {w['model']} (best validation accuracy {number(w['val_acc'])}; test "
                     f"accuracy {number(w['test_acc'])})")
    else:
        lines.append(f"picks (not fine-tuned: --no-finetune): {', '.join(d['picks'])}")
    c = d["cost"]
    lines.append(f"cost: probing {_seconds(c['probe_s'])} for {len(d['pool'])} models; "
                 f"fine-tuning {_seconds(c['finetune_s'])} for {len(d['finetuned'])}")
    if c.get("exhaustive_finetune_s_estimate") is not None:
        est = c["exhaustive_finetune_s_estimate"]
        saved = est - c["finetune_s"] if c["finetune_s"] is not None else None
        lines.append(f"fine-tuning the whole pool: ~{_seconds(est)} (the picks' time scaled by "
                     f"model size); the budget saved ~{_seconds(saved)}")
    if d.get("compute_budget_s") is not None:
        lines.append(f"compute: spent {format_duration(d.get('spent_s'))} of the "
                     f"{format_duration(d['compute_budget_s'])} budget (estimated "
                     f"{format_duration(d.get('estimated_s'))} before running: B = {d['budget']})")
    reused = d["reused"]
    lines.append(f"reused from MLflow: {reused['probe']} probe(s), {reused['finetune']} "
                 f"fine-tune(s); experiment {d['experiment']!r}")
    lines.append(f"decision logged as MLflow run {d.get('run_id', '-')} (recommend:{d['task']})")
    return "\n".join(line[:WIDTH] for line in lines)
