"""What the paper's study costs, projected from FLOP counts: per model and in total.

    python -m benchmarks.study_cost [--config sweeps/configs/vtab1k.yaml] [--rate-tflops 50]

Projections, not measurements, through the one cost model of the project
(:func:`sweeps.cost.estimate_plan`, what ``whichmodel validate`` prints): each model's forward
FLOPs per image at its own input size counted on the meta device, the images each protocol
pushes through it, a training image as 3 forward passes, all at ``--rate-tflops`` (default 50
TFLOP/s: the GPU benchmark's targets for ResNet-50 on one H100, 2,000 images/s fine-tuning and
6,000 images/s extraction, are both about 50 TFLOP/s of bf16 at ResNet-50's 8.2 GFLOP per
image; ``validate``'s default ``resources.device_tflops`` is 100). Device seconds only: a
trial's loading and set-up are not in them. Real architectures reach different fractions of
the peak (NASNet's many small operations less than a ResNet's), so the projections are a
yardstick until ``python -m benchmarks.gpu --catalog`` measures each model on a GPU. The last
line of stdout is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "sweeps" / "configs" / "vtab1k.yaml"
RATE_TFLOPS = 50.0


def projection(config: Path = CONFIG, rate_tflops: float = RATE_TFLOPS) -> dict:
    """GPU-hours per model (by protocol part) and in total for the plan of ``config``."""
    from sweeps.cost import COLUMNS, estimate_plan, model_shape
    from sweeps.device_rate import Rate
    from sweeps.plan import plan_sweep

    plan = plan_sweep(config)
    cost = estimate_plan(plan, Rate(rate_tflops, f"assumed {rate_tflops:g} TFLOP/s"))
    per_model = {}
    for name, row in cost.by_model.items():
        shape = model_shape(name, plan)
        per_model[name] = {"input_size": shape.input_size,
                           "gflops_per_image": cost.gflops_per_image[name],
                           "gpu_hours": sum(row.values()) / 3600,
                           **{f"{c}_gpu_hours": row[c] / 3600 for c in COLUMNS}}
    return {"study_gpu_hours": cost.total_s / 3600,
            "by_part_gpu_hours": {c: s / 3600 for c, s in cost.totals.items()},
            "models": per_model, "rate_tflops": rate_tflops, "tasks": len(plan.tasks),
            "trials": cost.trials,
            "note": "projected from FLOP counts at an assumed rate, not measured"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.study_cost",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--rate-tflops", type=float, default=RATE_TFLOPS)
    args = parser.parse_args(argv)
    out = projection(args.config, args.rate_tflops)
    for name, row in sorted(out["models"].items(), key=lambda kv: -kv[1]["gpu_hours"]):
        print(f"{name:40s} {row['input_size']:4d} px {row['gflops_per_image']:7.1f} GFLOP "
              f"{row['gpu_hours']:8.1f} GPU-h", file=sys.stderr)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
