"""An effective batch in micro-batches that fit: gradient accumulation and out-of-memory recovery.

The protocol's batch (``finetune.batch_size``, the paper's 512) is the *effective* batch: one
optimizer step sees all of it. On a device where it does not fit at once, each step runs it in
micro-batches of ``size`` examples, each micro-batch's loss weighted by its share of the batch
(``len(micro) / len(batch)``), the gradients summed by autograd, then one optimizer step: the
gradient of the mean loss over the whole batch, up to float rounding
(:func:`accumulate_gradients`). BatchNorm is the exception: it normalises each micro-batch by
its own statistics and updates its running statistics once per micro-batch, a departure from
one forward pass over the whole batch that the runs' params state (``finetune/micro_batch``).

:class:`MicroBatcher` holds the size of one kind of work (a training step, a frozen forward
pass) on one device. ``auto``: it starts at the size a :class:`MicroBatchCache` remembers for the
key (architecture, input size, precision, device name), else at the effective batch, and
:func:`run_with_halving` halves it whenever the device runs out of memory, redoing the same work
(the same step of the same batch, so a run keeps its number of optimizer steps); the size that
worked is remembered for the next trial on the same kind of device. A fixed size (``micro_batch:
N``) starts there and still halves rather than fail.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from whichmodel.files import atomic_write_json

CACHE_FILE = "micro_batch.json"  # under $WHICHMODEL_HOME


def halvings(n: int) -> list[int]:
    """``n``, ``n // 2``, ... down to 1: the sizes the search tries."""
    out = [max(1, int(n))]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    """A device (or host) allocation that failed: worth a smaller micro-batch, not a failed trial."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text
                                             or "can't allocate memory" in text)


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def cache_key(kind: str, arch: str, input_size: int, precision: str, device: str) -> str:
    """``kind|arch|input size|precision|device name``: what decides whether a size fits."""
    return f"{kind}|{arch}|{int(input_size)}|{precision}|{device}"


class MicroBatchCache:
    """Sizes that worked, one JSON file (``$WHICHMODEL_HOME/micro_batch.json``), keyed by
    :func:`cache_key`. Read at each lookup, written atomically: trials on one node share it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def read(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: int(v) for k, v in data.items() if isinstance(v, int) and v >= 1}

    def get(self, key: str) -> int | None:
        return self.read().get(key)

    def put(self, key: str, size: int) -> None:
        data = self.read()
        if data.get(key) == size:
            return
        data[key] = int(size)
        atomic_write_json(self.path, data)


class MicroBatcher:
    """The micro-batch of one kind of work; ``size`` never exceeds the effective batch.

    ``fixed``: a size the config names (``micro_batch: N``); None (``auto``): the cached size
    for ``key``, else the effective batch. ``shrinks`` counts the halvings so far."""

    def __init__(self, effective: int, fixed: int | None = None,
                 cache: MicroBatchCache | None = None, key: str | None = None):
        self.effective, self.cache, self.key = int(effective), cache, key
        start = fixed or (cache.get(key) if cache is not None and key else None) or effective
        self.size = max(1, min(int(start), self.effective))
        self.shrinks = 0
        self._confirmed = False

    @property
    def accumulation(self) -> int:
        """Micro-batches per effective batch."""
        return -(-self.effective // self.size)

    def shrink(self) -> int:
        """Halve the size after an out-of-memory error (remembered for the key)."""
        self.size = max(1, self.size // 2)
        self.shrinks += 1
        self._remember()
        return self.size

    def confirm(self) -> None:
        """The size worked: remember it for the next trial with the same key (once)."""
        if not self._confirmed:
            self._confirmed = True
            self._remember()

    def _remember(self) -> None:
        if self.cache is not None and self.key:
            self.cache.put(self.key, self.size)


def accumulate_gradients(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                         inputs: torch.Tensor, labels: torch.Tensor, size: int,
                         backward: Callable[[torch.Tensor], None]) -> torch.Tensor:
    """Backward of the batch's mean loss in micro-batches of ``size``; returns the loss
    (detached, on the device: reading it would wait for the device).

    ``loss_fn(x, y)`` is a micro-batch's mean loss; weighted by ``len(x) / len(inputs)`` the
    micro-batches' losses sum to the batch's mean loss, and so do their gradients."""
    n, total = len(inputs), None
    for start in range(0, n, size):
        x, y = inputs[start:start + size], labels[start:start + size]
        loss = loss_fn(x, y) * (len(x) / n)
        backward(loss)
        total = loss.detach() if total is None else total + loss.detach()
    return total


def run_with_halving(work: Callable[[int], Any], batcher: MicroBatcher,
                     before_retry: Callable[[], None] | None = None) -> Any:
    """``work(size)`` at the batcher's size; on an out-of-memory error, undo with
    ``before_retry()``, free the device's cached blocks, halve the size and run it again.
    An out-of-memory error at size 1 is raised: nothing smaller exists."""
    while True:
        try:
            result = work(batcher.size)
            batcher.confirm()
            return result
        except Exception as exc:  # noqa: BLE001 -- only out-of-memory errors are retried
            if not is_out_of_memory(exc) or batcher.size == 1:
                raise
        # outside the except block: the failed attempt's frames (and tensors) are released
        if before_retry is not None:
            before_retry()
        free_device_memory()
        batcher.shrink()


def free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def snapshot_buffers(module: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of the floating and integer buffers (BatchNorm's running statistics and counts)
    that a forward pass in training mode changes; :func:`restore_buffers` puts them back."""
    return [(b, b.detach().clone()) for b in module.buffers()]


def restore_buffers(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for buffer, copy in saved:
            buffer.copy_(copy)
