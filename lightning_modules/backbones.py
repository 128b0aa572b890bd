"""Backbones behind one contract, for zoo models and hub models (timm, torchvision, local folders).

Every model that whichmodel scores or fine-tunes is a :class:`Backbone`:

- ``features(x)``: a float batch ``(N, 3, H, W)`` already preprocessed -> ``(N, feature_dim)``;
- ``feature_dim``: the width of those features;
- ``preprocessing``: ``{"input_size": int, "mean": [3 floats], "std": [3 floats]}`` and
  ``preprocess(images)`` that turns uint8 ``(N, H, W, 3)`` images into the float input;
- ``source_head``: the upstream classifier (``nn.Linear`` on the features) or ``None``
  (LEEP and NCE need its predictions);
- ``block_groups()``: the network cut into ``first``, ``middle`` and ``last`` blocks, for
  surgical fine-tuning (Lee et al. 2022).

Zoo architectures register themselves in :data:`ARCHITECTURES` where they are defined, like
timm's ``@register_model``; a checkpoint is ``model.safetensors`` (backbone and optional
``source_head.*`` tensors) plus ``meta.json`` next to it. Hub models become the same
:class:`Backbone` in :mod:`lightning_modules.hub`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.micro_batch import MicroBatcher, run_with_halving
from whichmodel.errors import WhichModelError
from whichmodel.files import atomic_path, atomic_write_json
from whichmodel.registry import Registry

# Zoo images are rendered at 32 px; the statistics below are the usual ImageNet ones, which the
# hub models use too, so that one preprocessing code path serves both.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckpointError(WhichModelError, ValueError):
    """A checkpoint or its metadata cannot be read or does not fit its architecture."""


class Backbone(nn.Module):
    """A feature extractor with preprocessing and an optional source classifier."""

    def __init__(self, body: nn.Module, feature_dim: int, preprocessing: dict[str, Any],
                 groups: dict[str, list[str]], source_classes: int = 0):
        super().__init__()
        self.body = body
        self.feature_dim = int(feature_dim)
        self.preprocessing = dict(preprocessing)
        self._groups = groups
        self.source_head = nn.Linear(self.feature_dim, source_classes) if source_classes else None
        self.register_buffer("_mean", torch.tensor(self.preprocessing["mean"]).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("_std", torch.tensor(self.preprocessing["std"]).view(1, 3, 1, 1),
                             persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` (or float in [0, 1], NCHW) -> normalised float ``(N, 3, S, S)``."""
        if images.dtype == torch.uint8:
            x = images.permute(0, 3, 1, 2).float().div_(255.0)
        else:
            x = images.float()
        x = x.to(self._mean.device)
        size = int(self.preprocessing["input_size"])
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True)
        return (x - self._mean) / self._std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def source_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.source_head is None:
            raise ValueError("this backbone has no source classifier")
        return self.source_head(self.features(x))

    def block_groups(self) -> dict[str, list[nn.Module]]:
        """``first``, ``middle`` and ``last`` groups of body modules (surgical fine-tuning)."""
        modules = dict(self.body.named_modules())
        return {g: [modules[n] for n in names] for g, names in self._groups.items()}


# --------------------------------------------------------------------------- architectures
ARCHITECTURES: Registry[Callable[..., Backbone]] = Registry("architecture")


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


@ARCHITECTURES.register("cnn")
def build_cnn(width: int = 32, input_size: int = 32, source_classes: int = 0) -> Backbone:
    """A small VGG-style CNN: four stride-2 conv blocks and global pooling."""
    body = nn.Sequential()
    body.add_module("block1", _conv_bn(3, width, 2))
    body.add_module("block2", _conv_bn(width, 2 * width, 2))
    body.add_module("block3", _conv_bn(2 * width, 4 * width, 2))
    body.add_module("block4", _conv_bn(4 * width, 4 * width, 2))
    body.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    groups = {"first": ["block1"], "middle": ["block2", "block3"], "last": ["block4"]}
    return Backbone(body, 4 * width, _prep(input_size), groups, source_classes)


class TimmBody(nn.Module):
    """A timm model with its classifier removed: pooled pre-logits features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


@ARCHITECTURES.register("resnet")
def build_resnet(width: int = 16, input_size: int = 32, source_classes: int = 0) -> Backbone:
    """A narrow ResNet-10 from timm (BasicBlock, one block per stage), random initialisation.

    Created through ``timm.create_model`` as hub ResNets are, with ``pretrained=False``, then given
    the usual small-image stem (one 3x3 stride-2 convolution, no max-pool) so that 32 px inputs
    end at a 2x2 map; the 7x7 stem plus max-pool of ImageNet ResNets leaves 1x1 and barely trains
    at this size. ``zero_init_last=False`` for the same reason: with one block per stage and a few
    hundred steps, zero-initialised residual branches learned too slowly.
    """
    import timm

    channels = tuple(width * m for m in (1, 2, 4, 8))
    model = timm.create_model("resnet18", pretrained=False, num_classes=0, layers=(1, 1, 1, 1),
                              channels=channels, zero_init_last=False)
    stem = model.conv1.out_channels
    model.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=2, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    groups = {"first": ["model.conv1", "model.bn1", "model.layer1"],
              "middle": ["model.layer2", "model.layer3"], "last": ["model.layer4"]}
    return Backbone(TimmBody(model), model.num_features, _prep(input_size), groups,
                    source_classes)


def _prep(input_size: int) -> dict[str, Any]:
    return {"input_size": int(input_size), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def create_backbone(arch: str, source_classes: int = 0, **kwargs: Any) -> Backbone:
    """Build a zoo architecture with random weights (``arch`` from :data:`ARCHITECTURES`)."""
    return ARCHITECTURES.get(arch)(source_classes=source_classes, **kwargs)


def forward_flops(backbone: Backbone, image_size: int) -> int:
    """FLOPs of one image's forward pass through the feature extractor (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        backbone.features(torch.zeros(1, 3, image_size, image_size))
    return int(counter.get_total_flops())


def count_parameters(backbone: Backbone) -> int:
    """Parameters of the feature extractor (the source head excluded)."""
    return sum(p.numel() for p in backbone.body.parameters())


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(backbone: Backbone, directory: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``meta.json`` atomically into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"arch": str(meta.get("arch", ""))})
    atomic_write_json(directory / "meta.json", meta)
    return directory


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; build the zoo first (whichmodel zoo build)") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable metadata ({exc}); rebuild this model") from None
    for key in ("arch", "arch_kwargs", "source_classes"):
        if key not in meta:
            raise CheckpointError(f"{path}: key {key!r} missing; rebuild this model")
    return meta


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    """Every floating-point tensor of a state dict is finite; else a :class:`CheckpointError`
    naming ``where`` (the weight file), the first tensor with NaN or inf and how many more: a
    NaN backbone would otherwise fine-tune to chance and be logged as a result."""
    bad = [(name, t) for name, t in state.items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        name, tensor = bad[0]
        count = int((~torch.isfinite(tensor)).sum())
        more = f"; {len(bad) - 1} more tensors too" if len(bad) > 1 else ""
        raise CheckpointError(f"{where}: weights are not finite: {name!r} holds NaN or inf in "
                              f"{count} of its {tensor.numel()} values{more}; the file is broken "
                              "(re-export or retrain the model)")


def load_checkpoint(directory: str | os.PathLike) -> tuple[Backbone, dict[str, Any]]:
    """Load a zoo checkpoint (safetensors, no pickle) into its architecture."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = read_meta(directory)
    weights = directory / "model.safetensors"
    try:
        tensors = load_file(str(weights))
    except FileNotFoundError:
        raise CheckpointError(f"{weights}: missing; rebuild this model") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{weights}: unreadable checkpoint ({exc}); rebuild this model") from None
    check_finite(tensors, str(weights))
    backbone = create_backbone(meta["arch"], source_classes=int(meta["source_classes"]),
                               **meta["arch_kwargs"])
    try:
        backbone.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{weights}: does not fit architecture {meta['arch']!r} ({first})") from None
    backbone.eval()
    return backbone, meta


@torch.no_grad()
def extract_features(backbone: Backbone, images: Any, batch_size: int = 256,
                     device: str | torch.device | None = None,
                     with_source_probs: bool = False, micro: MicroBatcher | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One frozen forward pass over uint8 NHWC images -> float32 features (and source softmax).

    In chunks of ``batch_size`` images, or of ``micro.size`` (a
    :class:`~lightning_modules.micro_batch.MicroBatcher`, e.g. the probe's cached size on a
    GPU); a chunk that runs out of memory is redone at half the size."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # channels-last: what oneDNN and tensor cores want (the same arithmetic in another order)
    backbone = backbone.to(device, memory_format=torch.channels_last).eval()
    images = torch.as_tensor(images)
    micro = micro or MicroBatcher(max(1, batch_size))
    use_amp = device.type == "cuda"

    def chunk(size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = backbone.preprocess(images[start:start + size].to(device))
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            f = backbone.features(x)
            p = None
            if with_source_probs and backbone.source_head is not None:
                p = torch.softmax(backbone.source_head(f).float(), dim=1).cpu()
        return f.float().cpu(), p

    feats, probs, start = [], [], 0
    while start < len(images):
        f, p = run_with_halving(chunk, micro)
        feats.append(f)
        if p is not None:
            probs.append(p)
        start += len(f)
    out = torch.cat(feats) if feats else torch.empty(0, backbone.feature_dim)
    return out, (torch.cat(probs) if probs else None)
