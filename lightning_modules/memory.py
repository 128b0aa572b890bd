"""Memory of a fine-tune step, known before launch: an estimate per micro-batch, from shapes.

The peak of a training step (SGD with momentum, as :class:`~lightning_modules.training.
FineTuneModule` runs it) is estimated as

    parameters + gradients + momentum (one copy each of the trainable parameters)
    + the tensors autograd saves for the backward pass (``saved_tensors_hooks``: every storage
      counted once, parameters left out; at micro-batch b: fixed + b x per image)
    + TRANSIENT x the largest saved tensor (a gradient in flight during the backward pass)

The saved tensors are traced on PyTorch's ``meta`` device: the model's real forward pass, with
shapes and dtypes but no data and no arithmetic, so every catalog model at its own input size
(331 px NASNet-A Large, 600 px EfficientNet-B7) is traced in a second or two on a CPU, where one
real step of NASNet-A Large at micro-batch 1 took 38 s here. It is traced at micro-batches 2 and 4
and scaled linearly. ``bf16-mixed`` is traced under :class:`CudaAutocastOnMeta`, CUDA autocast's
casting rules written as a ``TorchFunctionMode`` (CUDA's own autocast does not run on the meta
device): convolutions and matrix products in bfloat16 (their inputs and weights cast, as
autograd then saves them), normalisations other than BatchNorm, softmax and losses in float32,
everything else in the dtype it gets. ``benchmarks/memory.py`` checks the estimate against a
measured peak: the process's resident memory on the CPU, ``torch.cuda.max_memory_allocated`` on
a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from lightning_modules.backbones import Backbone

GIB = 1024 ** 3
#: Gradients in flight during the backward pass, in units of the largest saved tensor. Measured
#: on the CPU (``benchmarks/memory.py``) the peak was parameters, gradients, momentum and the
#: saved tensors with almost nothing more (autograd frees saved tensors as the backward pass
#: goes); one largest tensor is kept as a margin for the gradient in flight.
TRANSIENT = 1.0
#: Of a GPU's memory, what a training step may use: the CUDA context (~0.5 GiB), cuDNN's
#: workspaces and the caching allocator's fragmentation take the rest.
USABLE_FRACTION, CONTEXT_GIB = 0.9, 0.5

# CUDA autocast (torch/csrc/autocast): ops that run in the lower precision, ops that run in fp32.
LOWER_PRECISION = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                   F.conv_transpose3d, F.linear, F.prelu, F.scaled_dot_product_attention,
                   torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.einsum,
                   torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.mm, torch.Tensor.bmm}
FLOAT32 = {F.layer_norm, F.group_norm, F.softmax, F.log_softmax, F.softplus, F.cross_entropy,
           F.nll_loss, torch.softmax, torch.log_softmax, torch.exp, torch.log, torch.pow,
           torch.rsqrt, torch.Tensor.softmax, torch.Tensor.log_softmax, torch.Tensor.exp,
           torch.Tensor.log, torch.Tensor.pow, torch.Tensor.rsqrt}


class CudaAutocastOnMeta(TorchFunctionMode):
    """CUDA autocast's casts, applied above autograd so that autograd saves the cast tensors
    (as it does under real autocast); for tracing memory on the meta device."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = self.dtype if func in LOWER_PRECISION else torch.float32 if func in FLOAT32 \
            else None
        if target is not None:
            def cast(a):
                return a.to(target) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            args = tuple(cast(a) for a in args)
            kwargs = {k: cast(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


@dataclass(frozen=True)
class StepMemory:
    """Bytes of one fine-tune step's pieces; :meth:`peak` at a micro-batch."""

    params: int  # every parameter, float32
    trainable: int  # the trainable ones (their gradients and momentum)
    saved_fixed: int  # saved tensors that do not grow with the batch (cast weights)
    saved_per_image: int
    largest_per_image: int  # the largest saved tensor, per image

    def peak(self, micro_batch: int) -> int:
        return int(self.params + 2 * self.trainable + self.saved_fixed
                   + micro_batch * (self.saved_per_image + TRANSIENT * self.largest_per_image))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def trace_saved(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                exclude: set[int]) -> tuple[int, int]:
    """(total, largest) bytes of the storages autograd saves in ``loss_fn(x)``, each storage
    once, those in ``exclude`` (the parameters' storages) left out."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in exclude:
            seen[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(x)
    return sum(seen.values()), max(seen.values(), default=0)


def estimate_step_memory(backbone: Backbone, input_size: int, precision: str = "32-true",
                         num_classes: int = 10) -> StepMemory:
    """Trace a training step's saved tensors at micro-batches 2 and 4 (on whatever device the
    backbone is: ``meta`` for an estimate, the CPU to compare with a real run) and scale.

    Trainable parameters are those with ``requires_grad`` (``set_trainable`` first for a
    surgical fine-tune); the backbone is put in training mode, as stage 2 runs it."""
    device = next(backbone.parameters()).device
    head = nn.Linear(backbone.feature_dim, num_classes, device=device)
    backbone.to(memory_format=torch.channels_last).train()  # as stage 2 runs it
    params = [p for p in backbone.parameters()] + list(head.parameters())
    exclude = {p.untyped_storage()._cdata for p in params}

    def loss(x: torch.Tensor) -> torch.Tensor:
        y = torch.zeros(len(x), dtype=torch.long, device=device)
        return F.cross_entropy(head(backbone.features(x)), y)

    def traced(batch: int) -> tuple[int, int]:
        x = torch.zeros(batch, 3, input_size, input_size, device=device)
        x = x.contiguous(memory_format=torch.channels_last)
        if precision.startswith(("bf16", "16")):
            dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
            with CudaAutocastOnMeta(dtype):
                return trace_saved(loss, x, exclude)
        return trace_saved(loss, x, exclude)

    (two, big2), (four, big4) = traced(2), traced(4)  # 2, not 1: BatchNorm needs 2 on 1x1 maps
    per_image = max(0, (four - two) // 2)
    return StepMemory(params=sum(p.numel() * p.element_size() for p in params),
                      trainable=sum(p.numel() * p.element_size() for p in params
                                    if p.requires_grad),
                      saved_fixed=max(0, two - 2 * per_image), saved_per_image=per_image,
                      largest_per_image=max(-(-big2 // 2), -(-big4 // 4)))


def usable_bytes(gpu_memory_gib: float) -> float:
    """What a step may use of a GPU of ``gpu_memory_gib`` (see :data:`USABLE_FRACTION`)."""
    return (USABLE_FRACTION * gpu_memory_gib - CONTEXT_GIB) * GIB


def micro_batch_for(memory: StepMemory, effective: int, budget_bytes: float) -> int | None:
    """The largest of ``effective``, ``effective // 2``, ... 1 whose peak fits the budget (the
    sizes the search on a GPU tries); None when even 1 does not fit."""
    size = max(1, int(effective))
    while True:
        if memory.peak(size) <= budget_bytes:
            return size
        if size == 1:
            return None
        size //= 2
