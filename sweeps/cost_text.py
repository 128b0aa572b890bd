"""A plan's cost as ``whichmodel validate`` and ``submit`` print it (and ``validate --json``).

    whichmodel validate sweeps/configs/vtab1k.yaml --file-only --price-per-gpu-hour 2.5 --gpus 8
"""

from __future__ import annotations

import os
from typing import Any

from sweeps.cost import COLUMNS, PlanCost
from whichmodel.durations import format_duration


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


def add_cost_options(parser) -> None:
    """``--price-per-gpu-hour`` and ``--gpus`` of ``validate`` and ``submit``."""
    parser.add_argument("--price-per-gpu-hour", type=float, metavar="X",
                        help="also print the money: GPU-hours x X")
    parser.add_argument("--gpus", type=int, metavar="N",
                        help="GPUs the cluster gives the sweep, for the wall-clock (default 1)")


def validate_cost(plan, paths, args) -> PlanCost:
    """``validate``'s cost: every key with ``--file-only`` (no server asked), else the keys
    MLflow has not finished."""
    from sweeps.cost import plan_cost

    uri = None if args.file_only else paths.tracking_uri(args.tracking_uri)
    return plan_cost(plan, paths.home, uri)


def print_submit_cost(args, paths) -> None:
    """``submit`` prints the sweep's cost before it submits (every key: the cluster's MLflow is
    not asked from here)."""
    from sweeps.cost import plan_cost
    from sweeps.plan import plan_sweep

    plan = plan_sweep(args.config)
    print("\n".join(cost_lines(plan, plan_cost(plan, paths.home), args.price_per_gpu_hour,
                               args.gpus)), flush=True)
