"""The GPU benchmark: ResNet-50 at 224 px in bf16 with channels-last, through the sweep's own code.

    python -m benchmarks.gpu            # on a GPU: 224 px, fine-tune batch 512 (the paper's)
    python -m benchmarks.gpu --tiny     # anywhere: 32 px, batch 8, a few steps (CI runs this)
    python -m benchmarks.gpu --catalog [--steps N]   # every catalog model (gpu_catalog.py)

The last line of stdout is one JSON object:

``extract_images_per_s`` [>= 6,000 on one H100]
    Images/s of :func:`lightning_modules.backbones.extract_features` (the probe trial's frozen
    forward pass: uint8 images from host memory, bf16 autocast on a GPU, channels-last, features
    back to the host), best of ``rounds`` passes over ``extract_images`` images.
``finetune_images_per_s`` [>= 2,000 on one H100]
    Images/s of stage 2 of a fine-tune (:class:`lightning_modules.training.FineTuneModule` with
    :func:`~lightning_modules.training.make_trainer`, ``precision="bf16-mixed"``, batch 512,
    images already on the device as the sweep's :class:`~lightning_modules.training.DeviceBatches`
    keep them), from batch end to batch end with the device synchronised, the first ``warmup``
    steps left out.
``extract_fraction_of_peak`` / ``finetune_fraction_of_peak``
    Achieved FLOP/s (FLOPs of one image counted by ``torch.utils.flop_counter`` for the forward
    pass and for forward + backward) over the device's peak: its dense bf16 peak from the
    vendor's sheet where the device is in ``PEAK_BF16_TFLOPS``, else (the CPU, unknown GPUs) the
    bf16 matmul throughput measured here (``peak_source`` says which); ``matmul_tflops``: that
    measurement, always.
``projected_gpu_hours``
    Hours on one such device for the paper's full fine-tune protocol at the measured fine-tune
    rate: 46 models x 19 tasks x 10 runs (2 learning rates x 5 repetitions) x 2,500 steps x 512
    images (stage 2 only; a ResNet-50 stands in for every model).

``device_tflops``
    The fine-tune rate in the cost estimate's convention (3 x forward FLOPs x images/s, TFLOP/s):
    what ``resources.device_tflops: measured`` reads once ``--write-rate`` has recorded it in
    ``$WHICHMODEL_HOME/device_rate.json`` (:mod:`sweeps.device_rate`).

Also ``device``, ``checks`` (the GPU paths: parameters on the device in channels-last, bf16
activations under autocast, features returned to the host as float32) and ``tiny``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from benchmarks.harness import finite, log, random_images

# Dense bf16 tensor-core peak (TFLOP/s) from the vendors' data sheets, by device-name substring.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0,
                    "L40S": 362.1, "L4": 121.0, "A10G": 70.0}
PAPER = {"models": 46, "tasks": 19, "runs": 10, "steps": 2500, "batch_size": 512}
SIZES = {True: {"size": 32, "batch": 8, "steps": 6, "warmup": 2, "extract": 64, "rounds": 2},
         False: {"size": 224, "batch": 512, "steps": 30, "warmup": 10, "extract": 8192,
                 "rounds": 3}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _backbone(size: int):
    from lightning_modules.hub import load_model

    backbone, _ = load_model("timm:resnet50", pretrained=False)
    backbone.preprocessing["input_size"] = size  # the tiny mode's 32 px, else timm's 224
    return backbone


def flops_per_image(backbone, size: int, device: torch.device) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one image, counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(2, 3, size, size, device=device)
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        backbone.features(x)
    with FlopCounterMode(display=False) as both:
        backbone.features(x).sum().backward()
    backbone.zero_grad(set_to_none=True)
    return fwd.get_total_flops() / 2, both.get_total_flops() / 2


def matmul_tflops(device: torch.device, n: int) -> float:
    """bf16 matmul throughput measured on this device (TFLOP/s), best of 5."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    best = float("inf")
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e12


def measure_extraction(backbone, images: torch.Tensor, device: torch.device,
                       rounds: int) -> dict[str, Any]:
    from lightning_modules.backbones import extract_features

    feats, _ = extract_features(backbone, images[:64], device=device)  # warm-up
    best = float("inf")
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        feats, _ = extract_features(backbone, images, device=device)
        best = min(best, time.perf_counter() - start)
    param = next(backbone.parameters())
    conv = next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))
    return {"images_per_s": len(images) / best, "seconds": best,
            "checks": {"parameters_on": str(param.device),
                       "conv_weight_channels_last":
                           conv.weight.is_contiguous(memory_format=torch.channels_last),
                       "features_on": str(feats.device), "features_dtype": str(feats.dtype)}}


def measure_finetune(backbone, images: torch.Tensor, labels: torch.Tensor, batch: int,
                     steps: int, warmup: int, device: torch.device) -> dict[str, Any]:
    import pytorch_lightning as pl

    from lightning_modules.training import FineTuneModule, batch_loader, make_trainer

    class Stamps(pl.Callback):
        def __init__(self):
            self.t: list[float] = []

        def on_train_batch_end(self, trainer, module, outputs, batch_, batch_idx):
            _sync(device)
            self.t.append(time.perf_counter())

    head = torch.nn.Linear(backbone.feature_dim, 10)
    dtypes: list[str] = []  # what autocast gives the head's logits during training
    head.register_forward_hook(lambda mod, args, out: dtypes.append(str(out.dtype)))
    module = FineTuneModule(backbone, head, lr=0.01, steps=steps)
    stamps = Stamps()
    trainer = make_trainer(steps, accelerator="gpu" if device.type == "cuda" else "cpu",
                           callbacks=[stamps], precision="bf16-mixed")
    trainer.fit(module, batch_loader(images, labels, batch, seed=0, device=device))
    t = stamps.t
    timed = len(t) - 1 - warmup
    seconds = t[-1] - t[warmup]
    return {"images_per_s": batch * timed / seconds, "timed_steps": timed,
            "step_ms": 1000 * seconds / timed,
            "checks": {"precision": str(trainer.precision),
                       "activation_dtype_under_autocast": dtypes[0]}}


def _peak(device: torch.device, measured: float) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_BF16_TFLOPS.items():
            if key in name:
                return tflops, f"data sheet ({key}, dense bf16)"
    return measured, "bf16 matmul measured here"


def run(args) -> dict[str, Any]:
    tiny = args.tiny or not torch.cuda.is_available()
    size = SIZES[tiny]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = _backbone(size["size"])
    fwd, train = flops_per_image(backbone, size["size"], torch.device("cpu"))
    matmul = matmul_tflops(device, 1024 if tiny else 8192)
    peak, source = _peak(device, matmul)
    log(f"gpu bench: device {device}, {size}, matmul {matmul:.2f} TFLOP/s")
    images, labels = random_images(size["extract"], size["size"])
    extract = measure_extraction(backbone, images, device, size["rounds"])
    log(f"extraction: {extract}")
    n_train = size["batch"] * 2
    finetune = measure_finetune(backbone, images[:n_train], labels[:n_train], size["batch"],
                                size["steps"], size["warmup"], device)
    log(f"fine-tune: {finetune}")
    total_images = (PAPER["models"] * PAPER["tasks"] * PAPER["runs"] * PAPER["steps"]
                    * PAPER["batch_size"])
    return {
        "tiny": tiny, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else "cpu", "image_size": size["size"], "finetune_batch_size": size["batch"],
        "extract_images_per_s": extract["images_per_s"],
        "finetune_images_per_s": finetune["images_per_s"],
        "extract_fraction_of_peak": extract["images_per_s"] * fwd / (peak * 1e12),
        "finetune_fraction_of_peak": finetune["images_per_s"] * train / (peak * 1e12),
        "peak_tflops": peak, "peak_source": source, "matmul_tflops": matmul,
        "gflops_per_image": {"forward": fwd / 1e9, "train_step": train / 1e9},
        "projected_gpu_hours": total_images / finetune["images_per_s"] / 3600,
        "projection": {**PAPER, "images": total_images,
                       "note": "stage 2 only, ResNet-50 for every model"
                               + ("; tiny mode: 32 px on this device, not a projection for "
                                  "224 px" if tiny else "")},
        "finetune_step_ms": finetune["step_ms"],
        "device_tflops": finetune["images_per_s"] * 3 * fwd / 1e12,
        "checks": {**extract["checks"], **finetune["checks"]},
        "targets": {"extract_images_per_s": ">= 6000 (one H100)",
                    "finetune_images_per_s": ">= 2000 (one H100)"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="32 px, batch 8, a few steps (the default without a GPU)")
    parser.add_argument("--write-rate", action="store_true",
                        help="record device_tflops for resources.device_tflops: measured "
                             "($WHICHMODEL_HOME/device_rate.json)")
    parser.add_argument("--catalog", action="store_true",
                        help="every model of pools/renggli2022.yaml (benchmarks/gpu_catalog.py)")
    parser.add_argument("--steps", type=int, default=3,
                        help="--catalog: timed fine-tune steps per model (after the first)")
    parser.add_argument("--models", nargs="+", help="--catalog: only these catalog models")
    args = parser.parse_args(argv)
    if args.catalog:
        from benchmarks.gpu_catalog import run_catalog

        return run_catalog(args)
    out = run(args)
    if args.write_rate:
        from sweeps.device_rate import Rate, write_rate
        from sweeps.paths import default_paths

        how = (f"benchmarks.gpu: ResNet-50 fine-tune steps at {out['image_size']} px, batch "
               f"{out['finetune_batch_size']}, bf16")
        log(f"wrote {write_rate(default_paths().home, Rate(out['device_tflops'], how), out['device'])}")
    print(json.dumps(finite(out)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
