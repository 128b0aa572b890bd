"""What the paper's study costs, projected from FLOP counts: per trial, per model, in total.

    python -m benchmarks.study_cost [--config sweeps/configs/vtab1k.yaml] [--rate-tflops 50]

Projections, not measurements. Each model's forward FLOPs per image at its own input size are
counted by ``torch.utils.flop_counter`` on the meta device (no weights, nothing computed); a
training step is taken as 3 x the forward pass (forward + backward). Every FLOP is assumed to
run at ``--rate-tflops`` (default 50 TFLOP/s: the GPU benchmark's targets for ResNet-50 on one
H100, 2,000 images/s fine-tuning and 6,000 images/s extraction, are both about 50 TFLOP/s of
bf16 at ResNet-50's 8.2 GFLOP per image), plus ``PROBE_FIXED_S`` per probe trial for the
feature proxies and ``TRIAL_FIXED_S`` per trial for loading the model and the task. Real
architectures reach different fractions of the peak (NASNet's many small operations less than a
ResNet's), so the projections are a yardstick until ``python -m benchmarks.gpu --catalog``
measures each model on a GPU.

Trials, as ``sweeps.plan.expand_jobs`` lays them out for ``vtab1k.yaml`` (``finetune.trials:
per_run``): per (model, task) a probe (one frozen pass over train800 + val200 + the task's full
test split, then the proxies), an early-stop trial (a frozen pass over train800 and val200, then
lrs x repeats x steps of the effective batch, each evaluated on val200) and lrs x repeats
fine-tune runs (a frozen pass over train800 for the head stage, ``steps`` of the effective
batch, then val200 and the test split). The last line of stdout is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import cache
from pathlib import Path

from sweeps.plan import Job

CONFIG = Path(__file__).resolve().parents[1] / "sweeps" / "configs" / "vtab1k.yaml"
RATE_TFLOPS = 50.0
PROBE_FIXED_S = 20.0  # the feature proxies of one probe (the linear proxy's 2,500 x 10 heads)
TRIAL_FIXED_S = 15.0  # loading the model and the task, building the Trainer


@cache
def forward_flops(spec: str) -> tuple[int, float]:
    """(input size, forward FLOPs of one image) of a hub model, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lightning_modules.hub import build_architecture

    with torch.device("meta"):
        backbone, _ = build_architecture(spec)
    size = int(backbone.preprocessing["input_size"])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        backbone.eval().features(torch.zeros(1, 3, size, size, device="meta"))
    return size, float(counter.get_total_flops())


def test_size(task: str) -> int:
    from lightning_modules.tasks import get_task

    return int(get_task(f"vtab:{task}").info.test_size or 10_000)


class CostModel:
    """Seconds of each trial of a plan on one GPU at ``rate_tflops``."""

    def __init__(self, plan, rate_tflops: float = RATE_TFLOPS):
        self.plan, self.rate = plan, rate_tflops * 1e12
        self.specs = {m: plan.model_refs[m]["spec"] for m in plan.models}

    def images_s(self, model: str, images: float, train: bool = False) -> float:
        _, fwd = forward_flops(self.specs[model])
        return images * fwd * (3 if train else 1) / self.rate

    def seconds(self, job: Job) -> float:
        cfg, m = self.plan.cfg, job.model
        if job.kind == "probe":
            return (TRIAL_FIXED_S + PROBE_FIXED_S
                    + self.images_s(m, 1000 + test_size(job.task)))
        if job.kind == "early_stop":
            es = cfg.probe.early_stop
            runs = len(es.lrs) * es.repeats
            return (TRIAL_FIXED_S + self.images_s(m, 1000)
                    + runs * (self.images_s(m, es.steps * es.batch_size, train=True)
                              + self.images_s(m, 200)))
        f = cfg.finetune
        return len(job.runs) * (TRIAL_FIXED_S + self.images_s(m, 800)
                                + self.images_s(m, f.steps * f.batch_size, train=True)
                                + self.images_s(m, 200 + test_size(job.task)))

    def gpu_seconds(self, job: Job) -> float:
        r = self.plan.cfg.resources
        return self.seconds(job) * (r.probe.gpus if job.kind == "probe" else r.finetune.gpus)


def projection(config: Path = CONFIG, rate_tflops: float = RATE_TFLOPS) -> dict:
    """GPU-hours per model and in total for the plan of ``config`` (the JSON line's content)."""
    from sweeps.plan import expand_jobs, plan_sweep

    plan = plan_sweep(config)
    cost = CostModel(plan, rate_tflops)
    per_model: dict[str, dict] = {}
    for job in expand_jobs(plan.cfg, plan.keys()):
        size, fwd = forward_flops(cost.specs[job.model])
        row = per_model.setdefault(job.model, {"input_size": size, "gflops_per_image": fwd / 1e9,
                                               "gpu_hours": 0.0})
        row["gpu_hours"] += cost.gpu_seconds(job) / 3600
        row[f"{job.kind}_gpu_hours"] = row.get(f"{job.kind}_gpu_hours", 0.0) \
            + cost.gpu_seconds(job) / 3600
    return {"study_gpu_hours": sum(r["gpu_hours"] for r in per_model.values()),
            "models": per_model, "rate_tflops": rate_tflops, "tasks": len(plan.tasks),
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
