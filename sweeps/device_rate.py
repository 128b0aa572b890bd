"""The device rate a cost estimate divides FLOPs by (:mod:`sweeps.cost`): configured, written by
a benchmark, or measured here.

- ``resources.device_tflops: 100`` (the default, :data:`sweeps.config.DEFAULT_DEVICE_TFLOPS`: an
  H100's dense bf16 peak at 10% utilisation) or any number: FLOPs only;
- ``resources.device_tflops: measured``: ``$WHICHMODEL_HOME/device_rate.json``
  (:data:`RATE_FILE`), written by ``python -m benchmarks.gpu`` on the device or by
  ``python -m benchmarks.compute_estimate`` (:func:`write_rate`);
- :func:`measure_rate`: training steps of given architectures on this machine (a GPU, else one
  CPU thread as a trial has), and the framework's overhead per optimizer step and per
  ``Trainer.fit`` (Lightning's loop, the optimizer and scheduler, the fit's set-up), which
  small models on a CPU pay as much as their FLOPs; a configured rate has none (at the paper's
  2,500 steps of batch 512 they are a fraction of a percent).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from sweeps.config import DEFAULT_DEVICE_TFLOPS, SweepConfig
from whichmodel.errors import WhichModelError

RATE_FILE = "device_rate.json"
TRAIN_FACTOR = 3  # a training image: its forward pass and a backward pass of twice the cost


@dataclass(frozen=True)
class Rate:
    """TFLOP/s of one trial's device, the framework's seconds per optimizer step and per fit,
    and where the numbers come from."""

    tflops: float
    source: str
    step_s: float = 0.0
    fit_s: float = 0.0

    def seconds(self, flops: float, steps: float = 0.0, fits: float = 0.0) -> float:
        return flops / (self.tflops * 1e12) + steps * self.step_s + fits * self.fit_s


def rate_of(cfg: SweepConfig, home: Path | None) -> Rate:
    """``resources.device_tflops``: a number, or ``measured`` (the rate file in ``home``)."""
    value = cfg.resources.device_tflops
    if value != "measured":
        default = value == DEFAULT_DEVICE_TFLOPS
        return Rate(float(value), "resources.device_tflops" + (
            " default: an H100's dense bf16 peak (989) at 10% utilisation" if default else ""))
    path = (home or Path(".")) / RATE_FILE
    try:
        data = json.loads(path.read_text())
        return Rate(float(data["tflops"]), f"measured on {data.get('device', '?')} by "
                    f"{data.get('how', '?')} ({path})", float(data.get("step_s", 0.0)),
                    float(data.get("fit_s", 0.0)))
    except FileNotFoundError:
        raise WhichModelError(f"resources.device_tflops is 'measured' but {path} does not exist; "
                              "run python -m benchmarks.gpu on the device (it writes the file) "
                              "or give the device's TFLOP/s as a number") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WhichModelError(f"{path}: unreadable device rate ({exc}); run python -m "
                              "benchmarks.gpu again or give resources.device_tflops a number"
                              ) from None


def write_rate(home: Path, rate: Rate, device: str) -> Path:
    """Record a measured rate for ``resources.device_tflops: measured``."""
    from whichmodel.files import atomic_write_json

    path = Path(home) / RATE_FILE
    atomic_write_json(path, {"tflops": rate.tflops, "step_s": rate.step_s, "fit_s": rate.fit_s,
                             "device": device, "how": rate.source})
    return path


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (1 thread)"


def measure_rate(models, batch: int, steps: int = 20, warmup: int = 3) -> Rate:
    """The training rate of ``models`` (``(backbone, forward FLOPs per image, input size)``,
    each weighing by its time) on this machine: ``steps`` SGD steps of ``batch`` images,
    channels-last, on the GPU if there is one, else one CPU thread; the rate is (3 x forward
    FLOPs x images) over the seconds, the estimate's own convention. Then the framework's
    overhead (:func:`measure_overhead`)."""
    import torch
    import torch.nn.functional as F

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    flops, seconds = 0.0, 0.0
    try:
        for backbone, forward, size in models:
            backbone = backbone.to(device, memory_format=torch.channels_last).train()
            head = torch.nn.Linear(backbone.feature_dim, 10).to(device)
            opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=1e-3)
            x = torch.randn(batch, 3, size, size, device=device).contiguous(
                memory_format=torch.channels_last)
            y = torch.randint(0, 10, (batch,), device=device)
            for i in range(warmup + steps):
                if i == warmup:
                    _sync(device)
                    start = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(head(backbone.features(x)), y).backward()
                opt.step()
            _sync(device)
            seconds += time.perf_counter() - start
            flops += TRAIN_FACTOR * forward * batch * steps
        step_s, fit_s = measure_overhead(batch)
    finally:
        torch.set_num_threads(threads)
    return Rate(flops / seconds / 1e12, f"{steps} training steps of batch {batch} of each of "
                f"{len(models)} architectures, and Lightning's overhead per step and fit, on "
                f"{device_name()}", step_s, fit_s)


def measure_overhead(batch: int, short: int = 5, long: int = 65) -> tuple[float, float]:
    """(seconds per optimizer step, seconds per fit) of the fine-tune's Lightning loop on a
    linear head over 16 features (its FLOPs negligible): from a short and a long fit."""
    import torch

    from lightning_modules.training import LinearHeadModule, batch_loader, make_trainer

    x, y = torch.randn(256, 16), torch.randint(0, 10, (256,))

    def fit(steps: int) -> float:
        start = time.perf_counter()
        make_trainer(steps, accelerator="cpu").fit(LinearHeadModule(16, 10, 0.01, steps),
                                                   batch_loader(x, y, batch, 0, torch.device("cpu")))
        return time.perf_counter() - start

    fit(short)  # warm-up: imports, first-call costs
    t_short, t_long = min(fit(short) for _ in range(2)), min(fit(long) for _ in range(2))
    step = max(0.0, (t_long - t_short) / (long - short))
    return step, max(0.0, t_short - short * step)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
