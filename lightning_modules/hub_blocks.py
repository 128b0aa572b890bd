"""The structure of hub networks: first, middle and last block groups, for surgical fine-tuning
(Lee et al. 2022), and torchvision's auxiliary heads, which a backbone leaves out.

Over the network without its classifier:

- ResNets (``layer1`` .. ``layer4``, timm and torchvision): the stem (every parameterised child
  before ``layer1``) and ``layer1`` first, ``layer2`` + ``layer3`` middle, ``layer4`` (and anything
  parameterised after it) last;
- otherwise the network is cut into ordered *units*: its parameterised top-level children, where
  a unit holding more than half of all parameters is replaced by its parameterised children,
  repeatedly (so ViT ``blocks``, EfficientNet stages, torchvision ``features`` become units);
  then the units split into thirds by count (cuts at ``round(n/3)`` and ``round(2n/3)``).
  Parameters owned directly by the root (ViT ``cls_token``, ``pos_embed``) belong to no module
  and so to no group: they stay frozen when one group trains.
"""

from __future__ import annotations

import torch
from torch import nn


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def hub_block_groups(model: nn.Module, prefix: str = "") -> dict[str, list[str]]:
    """``first`` / ``middle`` / ``last`` module names (``prefix`` + name) by the rule of the module
    docstring: ResNet stages when there are ``layer1`` .. ``layer4``, else thirds of the units."""
    children = [(n, m) for n, m in model.named_children() if _has_params(m)]
    names = [n for n, _ in children]
    if all(f"layer{i}" in names for i in range(1, 5)):
        i1, i4 = names.index("layer1"), names.index("layer4")
        groups = {"first": names[:i1 + 1], "middle": ["layer2", "layer3"], "last": names[i4:]}
    else:
        units = _units(model, children)
        n = len(units)
        a, b = (round(n / 3), round(2 * n / 3)) if n >= 3 else (min(n, 1), min(n, 1))
        groups = {"first": units[:a], "middle": units[a:b], "last": units[b:]}
    return {g: [prefix + n for n in names] for g, names in groups.items()}


def _units(model: nn.Module, children: list[tuple[str, nn.Module]]) -> list[str]:
    total = parameter_count(model)
    units = list(children)
    while True:
        for i, (name, module) in enumerate(units):
            kids = [(f"{name}.{k}", c) for k, c in module.named_children() if _has_params(c)]
            if kids and parameter_count(module) > total / 2:
                units[i:i + 1] = kids
                break
        else:
            return [n for n, _ in units]


# Auxiliary classifiers (built by default without weights; a tuple from forward in training
# mode): features need the main path only, as torchvision drops them with its own weights.
AUX_HEADS = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}


def torchvision_random(name: str, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """``get_model(name, weights=None)``; auxiliary heads only where ``state`` has them (a
    weights file saved with them loads strictly), dropped after loading (:func:`drop_aux`)."""
    from torchvision.models import get_model

    if name not in AUX_HEADS:
        return get_model(name, weights=None)
    aux = state is not None and any(k.startswith(AUX_HEADS[name]) for k in state)
    return get_model(name, weights=None, aux_logits=aux, init_weights=state is None)


def drop_aux(name: str, model: nn.Module) -> None:
    for attr in AUX_HEADS.get(name, ()):
        model.aux_logits = False
        setattr(model, attr, None)
