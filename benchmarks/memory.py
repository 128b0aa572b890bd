"""Micro-batches and the memory estimate, checked on the CPU.

    python -m benchmarks.memory            # about a minute on 2 cores

The last line of stdout is one JSON object:

``accumulation_grad_max_abs_diff`` [<= 1e-5]
    The largest difference between the gradients of one batch of 32 and those of 4 accumulated
    micro-batches of 8 (:func:`lightning_modules.micro_batch.accumulate_gradients` through
    :meth:`~lightning_modules.training.FineTuneModule.micro_batch_loss`), on a model without
    BatchNorm (timm's ``test_vit``, LayerNorm), float32 on the CPU.
``memory_estimate_rel_error`` [<= 0.25]
    The worst, over two small models (``--models``), of |estimate - measured| / measured for the
    peak of one fine-tune step (forward, backward, SGD-with-momentum step) at micro-batch
    ``--batch``: the estimate is :func:`lightning_modules.memory.estimate_step_memory` traced on
    the meta device at micro-batches 2 and 4 and scaled; the measurement is the peak resident
    memory (``VmHWM``, reset through ``/proc/self/clear_refs``) of a fresh process running the
    step after a warm-up step, above its resident memory just before, plus the parameters and
    momentum it already held. ``tracemalloc`` cannot see PyTorch's allocator (it traces Python's
    own), so resident memory it is; glibc's malloc is pinned to return freed tensors to the
    system at once (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) so that resident
    memory follows live tensors. Per model: ``estimate_gib``, ``measured_gib``, ``rel_error``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.harness import GIB, finite, log

MODELS = ("timm:resnet18", "timm:mobilenetv2_100")


def _resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _module(spec: str, size: int, device: str | None = None):
    from lightning_modules.hub import build_architecture
    from lightning_modules.training import FineTuneModule

    if device == "meta":
        with torch.device("meta"):
            backbone, _ = build_architecture(spec)
    else:
        backbone, _ = build_architecture(spec)
    backbone.preprocessing["input_size"] = size
    return backbone, FineTuneModule(backbone, torch.nn.Linear(backbone.feature_dim, 10,
                                                              device=device), 0.01, 10)


def measure_step(spec: str, size: int, batch: int) -> dict[str, float]:
    """In this process: the peak resident memory of one fine-tune step (see the docstring)."""
    import gc

    from lightning_modules.micro_batch import accumulate_gradients

    torch.manual_seed(0)
    torch.set_num_threads(1)
    backbone, module = _module(spec, size)
    module.to(memory_format=torch.channels_last)
    module.set_modes()
    opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    labels = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        accumulate_gradients(module.micro_batch_loss, images, labels, batch, lambda t: t.backward())
        opt.step()

    step()  # warm-up: momentum buffers, oneDNN's kernels
    opt.zero_grad(set_to_none=True)
    gc.collect()
    held = sum(p.numel() * p.element_size() for p in module.parameters()) * 2  # + momentum
    before = _resident_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # the peak starts from here
    step()
    peak = _peak_resident_bytes()
    return {"measured_bytes": peak - before + held, "resident_before": before}


def estimate(spec: str, size: int, batch: int) -> int:
    from lightning_modules.memory import estimate_step_memory

    backbone, _ = _module(spec, size, device="meta")
    return estimate_step_memory(backbone, size, "32-true").peak(batch)


def accumulation_diff(seed: int = 0) -> float:
    """Max |grad(one batch of 32) - grad(4 micro-batches of 8)| on timm's test_vit (no BatchNorm)."""
    from lightning_modules.hub import build_architecture
    from lightning_modules.micro_batch import accumulate_gradients
    from lightning_modules.training import FineTuneModule

    torch.manual_seed(seed)
    backbone, _ = build_architecture("timm:test_vit")
    module = FineTuneModule(backbone, torch.nn.Linear(backbone.feature_dim, 10), 0.01, 1)
    module.set_modes()
    size = backbone.preprocessing["input_size"]
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (32, size, size, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (32,), generator=g)
    grads = []
    for micro in (32, 8):
        module.zero_grad(set_to_none=True)
        accumulate_gradients(module.micro_batch_loss, images, labels, micro,
                             lambda t: t.backward())
        grads.append([p.grad.clone() for p in module.parameters() if p.grad is not None])
    return max(float((a - b).abs().max()) for a, b in zip(*grads))


def run(args) -> dict:
    out: dict = {"accumulation_grad_max_abs_diff": accumulation_diff(),
                 "accumulation": "test_vit, 4 x 8 vs 32, float32, CPU", "models": {}}
    log(f"accumulation: {out['accumulation_grad_max_abs_diff']:.2e}")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0",
           "OMP_NUM_THREADS": "1"}
    errors = []
    for spec in args.models:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--measure", spec,
                               "--size", str(args.size), "--batch", str(args.batch)],
                              env=env, capture_output=True, text=True, check=True)
        measured = json.loads(proc.stdout.strip().splitlines()[-1])["measured_bytes"]
        est = estimate(spec, args.size, args.batch)
        err = abs(est - measured) / measured
        errors.append(err)
        out["models"][spec] = {"estimate_gib": est / GIB, "measured_gib": measured / GIB,
                               "rel_error": err}
        log(f"{spec}: estimate {est / GIB:.3f} GiB, measured {measured / GIB:.3f} GiB "
            f"({err:+.1%})")
    out.update(memory_estimate_rel_error=max(errors), image_size=args.size,
               micro_batch=args.batch, precision="32-true", device="cpu",
               measured_as="peak resident memory of a step in a fresh process (VmHWM)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--size", type=int, default=160, help="input size (px)")
    parser.add_argument("--batch", type=int, default=32, help="the micro-batch measured")
    parser.add_argument("--measure", metavar="SPEC", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure_step(args.measure, args.size, args.batch)), flush=True)
        return 0
    print(json.dumps(finite(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
