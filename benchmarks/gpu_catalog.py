"""The GPU benchmark over the catalog: every model of ``pools/renggli2022.yaml`` on one GPU.

    python -m benchmarks.gpu --catalog [--steps N] [--models NAME ...]   # on a GPU, < 8 min (H100)
    python -m benchmarks.gpu --catalog --tiny                            # the code path on a CPU

One JSON line per model, then a summary line (the last line of stdout). Per model, with random
weights at its own input size, bf16 autocast and channels-last, through the sweep's own code:

``extract_images_per_s``, ``extract_micro_batch``
    :func:`~lightning_modules.backbones.extract_features` over ``EXTRACT_IMAGES`` images in
    chunks found by the search (from 512, halved on out-of-memory errors).
``finetune_images_per_s``, ``micro_batch``, ``accumulation``
    stage 2 of a fine-tune (:class:`~lightning_modules.training.FineTuneModule`, bf16-mixed) at
    the paper's effective batch of 512 with ``micro_batch: auto``: the search from 512 runs in
    the first step (out-of-memory errors halve it), then ``--steps`` steps are timed.
``peak_memory_gib``, ``estimated_peak_gib``, ``estimate_rel_error``
    ``torch.cuda.max_memory_allocated`` over the timed steps, against
    :func:`lightning_modules.memory.estimate_step_memory` at the chosen micro-batch.
``gpu_hours``
    the paper's protocol (vtab1k.yaml's probes, early-stop and fine-tune trials over its 19
    tasks) on one such GPU: the project's cost model (:mod:`sweeps.cost`) at the TFLOP/s the
    measured fine-tune rate implies, and ``projected_gpu_hours`` (at 50 TFLOP/s) beside it.

The summary: the device, the models, the total measured GPU-hours and the seconds spent. A
model whose turn comes after the run has used more than its share of ``BUDGET_S`` (7 minutes)
times one step instead of ``--steps``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from benchmarks.harness import GIB, finite, log, random_images

EXTRACT_IMAGES = {False: 2048, True: 16}
BUDGET_S = 420  # the whole run's target, under the 8 minutes one H100 may take
EFFECTIVE = {False: 512, True: 8}
SIZE_TINY = 32


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_model(name: str, spec: str, tiny: bool, steps: int, device: torch.device
                  ) -> dict[str, Any]:
    import pytorch_lightning as pl

    from lightning_modules.backbones import extract_features
    from lightning_modules.hub import build_architecture
    from lightning_modules.memory import estimate_step_memory
    from lightning_modules.micro_batch import MicroBatcher
    from lightning_modules.training import FineTuneModule, batch_loader, make_trainer

    torch.manual_seed(0)
    with torch.device("meta"):
        meta_backbone, _ = build_architecture(spec)
    backbone, _ = build_architecture(spec)
    size = SIZE_TINY if tiny else int(backbone.preprocessing["input_size"])
    backbone.preprocessing["input_size"] = meta_backbone.preprocessing["input_size"] = size
    effective = EFFECTIVE[tiny]
    images, labels = random_images(max(EXTRACT_IMAGES[tiny], 2 * effective), size)

    micro_x = MicroBatcher(effective)
    extract_features(backbone, images[:effective], device=device, micro=micro_x)  # search, warm-up
    _sync()
    start = time.perf_counter()
    extract_features(backbone, images[:EXTRACT_IMAGES[tiny]], device=device, micro=micro_x)
    _sync()
    extract_rate = EXTRACT_IMAGES[tiny] / (time.perf_counter() - start)

    class Stamps(pl.Callback):
        def __init__(self):
            self.t: list[float] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            _sync()
            self.t.append(time.perf_counter())
            if len(self.t) == 1 and device.type == "cuda":  # after the search's first step
                torch.cuda.reset_peak_memory_stats(device)

    micro = MicroBatcher(effective)
    module = FineTuneModule(backbone, torch.nn.Linear(backbone.feature_dim, 10), 0.01,
                            steps + 1, micro=micro)
    stamps = Stamps()
    make_trainer(steps + 1, accelerator="gpu" if device.type == "cuda" else "cpu",
                 callbacks=[stamps], precision="bf16-mixed").fit(
        module, batch_loader(images[:2 * effective], labels[:2 * effective], effective, seed=0,
                             device=device))
    finetune_rate = effective * steps / (stamps.t[-1] - stamps.t[0])
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    estimate = estimate_step_memory(meta_backbone, size, "bf16-mixed").peak(micro.size)
    return {"model": name, "input_size": size, "effective_batch": effective,
            "extract_images_per_s": extract_rate, "extract_micro_batch": micro_x.size,
            "finetune_images_per_s": finetune_rate, "micro_batch": micro.size,
            "accumulation": micro.accumulation, "oom_halvings": micro.shrinks,
            "peak_memory_gib": peak / GIB if peak is not None else None,
            "estimated_peak_gib": estimate / GIB,
            "estimate_rel_error": abs(estimate - peak) / peak if peak else None,
            "timed_steps": steps}


def measured_gpu_hours(plan, name: str, gflops_per_image: float, finetune_rate: float) -> float:
    """The model's trials of the plan on one GPU through the project's cost model
    (:func:`sweeps.cost.estimate_plan`) at the TFLOP/s its measured fine-tune rate implies
    (images/s x 3 forward passes' FLOPs per training image)."""
    from sweeps.cost import estimate_plan
    from sweeps.device_rate import TRAIN_FACTOR, Rate

    tflops = finetune_rate * TRAIN_FACTOR * gflops_per_image / 1e3
    keys = [k for k in plan.keys() if k[0] == name]
    return estimate_plan(plan, Rate(tflops, "measured fine-tune rate"), keys=keys).total_s / 3600


def run_catalog(args) -> int:
    from benchmarks.study_cost import CONFIG, projection
    from sweeps.plan import plan_sweep

    started = time.perf_counter()
    tiny = args.tiny or not torch.cuda.is_available()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plan = plan_sweep(CONFIG)
    names = args.models or plan.models
    projected = projection(CONFIG)["models"] if not tiny else {}
    total, rows = 0.0, []
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        # within the budget (8 minutes on one H100): fewer timed steps once the models so far
        # used their share of it
        spent, share = t0 - started, BUDGET_S * i / len(names)
        steps = args.steps if spent <= share else 1
        row = measure_model(name, plan.model_refs[name]["spec"], tiny, steps, device)
        row["gpu_hours"] = None if tiny else measured_gpu_hours(
            plan, name, projected[name]["gflops_per_image"], row["finetune_images_per_s"])
        row["projected_gpu_hours"] = projected.get(name, {}).get("gpu_hours")
        row["seconds"] = time.perf_counter() - t0
        total += row["gpu_hours"] or 0.0
        rows.append(row)
        print(json.dumps(finite(row)), flush=True)
        log(f"{name}: {row['seconds']:.0f} s")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps(finite({
        "summary": True, "device": device_name, "tiny": tiny, "models": len(rows),
        "study_gpu_hours": total if not tiny else None,
        "note": "tiny: 32 px, batch 8 on this device; its GPU-hours are no projection" if tiny
        else "the paper's protocol over vtab1k.yaml at each model's measured rates",
        "precision": "bf16-mixed", "channels_last": True,
        "steps_per_model": [r["timed_steps"] for r in rows],
        "seconds": time.perf_counter() - started})), flush=True)
    return 0
