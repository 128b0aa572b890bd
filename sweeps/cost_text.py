"""A plan's cost as ``whichmodel validate`` and ``submit`` print it (and ``validate --json``), and
durations as users write them (``2h``, ``90m``, ``3600s``).

    whichmodel validate sweeps/configs/vtab1k.yaml --file-only --price-per-gpu-hour 2.5 --gpus 8
"""

from __future__ import annotations

import os
import re
from typing import Any

from sweeps.cost import COLUMNS, PlanCost
from whichmodel.errors import WhichModelError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str, what: str = "--compute-budget") -> float:
    """Seconds of ``2h``, ``90m``, ``3600s``, ``1h30m`` or ``1.5h`` (a bare number: seconds)."""
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        parts = _DURATION.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise WhichModelError(f"{what} {text!r}: write a duration such as 2h, 90m, 3600s or "
                                  "1h30m")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise WhichModelError(f"{what} {text!r}: a duration above zero, e.g. 2h")
    return seconds


def format_duration(seconds: float | None) -> str:
    """``-``, ``4.2s``, ``3m05s``, ``2h10m``, ``822 h``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    total = int(round(seconds))
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 100 * 3600:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{seconds / 3600:,.0f} h"


def uses_gpus(plan) -> bool:
    """Whether the plan's trials ask for a GPU (then device seconds are GPU seconds)."""
    r = plan.cfg.resources
    return r.probe.gpus > 0 or r.finetune.gpus > 0


def parallel_devices(plan, gpus: int | None) -> tuple[int, str]:
    """How many devices share the work: ``gpus`` for a GPU sweep (default 1), else the CPU
    slots of a local Ray (``resources.num_cpus`` over the CPUs a fine-tune takes)."""
    if uses_gpus(plan):
        n = gpus or 1
        return n, f"{n} GPU" + ("s" if n != 1 else "")
    r = plan.cfg.resources
    slots = max(1, int((r.num_cpus or os.cpu_count() or 1) // max(r.finetune.cpus, r.probe.cpus)))
    return slots, f"{slots} CPU trial slot" + ("s" if slots != 1 else "")


def cost_doc(plan, cost: PlanCost, price: float | None = None, gpus: int | None = None
             ) -> dict[str, Any]:
    """The cost as JSON (``validate --json``'s ``cost``): seconds are device seconds."""
    n, what = parallel_devices(plan, gpus)
    hours = cost.total_s / 3600
    return {
        "device_tflops": cost.rate.tflops, "rate_source": cost.rate.source,
        "device": "gpu" if uses_gpus(plan) else "cpu",
        "trials": cost.trials, "keys": cost.keys, "finished_keys": cost.finished,
        "models": {m: {"gflops_per_image": cost.gflops_per_image.get(m),
                       **{f"{c}_s": row[c] for c in COLUMNS}, "total_s": sum(row.values())}
                   for m, row in cost.by_model.items()},
        "total_s": {**{c: v for c, v in cost.totals.items()}, "all": cost.total_s},
        "device_hours": hours, "parallel_devices": n, "parallel_what": what,
        "wall_clock_s": cost.total_s / n,
        "price_per_gpu_hour": price, "money": hours * price if price is not None else None,
        "unknown_models": cost.unknown, "assumed_tasks": cost.assumed_tasks,
    }


def cost_lines(plan, cost: PlanCost, price: float | None = None, gpus: int | None = None,
               per_model: bool = True) -> list[str]:
    """What ``validate`` and ``submit`` print: the trials by kind, the compute per model and
    protocol, the total in device hours, the wall-clock on the devices and the money."""
    doc = cost_doc(plan, cost, price, gpus)
    kinds = ", ".join(f"{k} {v}" for k, v in cost.trials.items()) or "none"
    if cost.finished is None:
        done = "MLflow not asked (--file-only): every key counted"
    else:
        done = f"{cost.finished} of {cost.keys} keys finished in MLflow, not counted again"
    lines = [f"cost estimate: FLOPs per image (torch FlopCounterMode, each model at its input size)"
             f" x images / {cost.rate.tflops:g} TFLOP/s ({cost.rate.source})",
             f"  trials to run: {kinds}; {done}"]
    if per_model and cost.by_model:
        width = max(24, *(len(m) for m in cost.by_model))
        lines.append(f"  {'model':<{width}} {'GFLOP/img':>10} {'probe':>9} {'early-stop':>10} "
                     f"{'fine-tune':>10} {'total':>10}")
        for m, row in cost.by_model.items():
            gflops = cost.gflops_per_image.get(m)
            lines.append(f"  {m:<{width}} {gflops:>10.3f} {format_duration(row['probe']):>9} "
                         f"{format_duration(row['early_stop']):>10} "
                         f"{format_duration(row['finetune']):>10} "
                         f"{format_duration(sum(row.values())):>10}")
        totals = cost.totals
        lines.append(f"  {'total':<{width}} {'':>10} {format_duration(totals['probe']):>9} "
                     f"{format_duration(totals['early_stop']):>10} "
                     f"{format_duration(totals['finetune']):>10} "
                     f"{format_duration(cost.total_s):>10}")
    unit = "GPU-hours" if doc["device"] == "gpu" else "device-hours (CPU: no trial asks for a GPU)"
    line = (f"  total: {doc['device_hours']:,.1f} {unit}; wall-clock on {doc['parallel_what']}: "
            f"~{format_duration(doc['wall_clock_s'])} (perfectly packed)")
    if price is not None:
        line += f"; at ${price:,.2f} per GPU-hour: ${doc['money']:,.2f}"
    lines.append(line)
    if cost.unknown:
        lines.append(f"  not costed (architecture not on this machine): {', '.join(cost.unknown)}")
    if cost.assumed_tasks:
        lines.append(f"  assumed 1,000 test images and 10 classes (folder not here): "
                     f"{', '.join(cost.assumed_tasks)}")
    return lines
