"""Reading weight files into state dicts, and naming what does not fit, for the hub loaders.

A weights file is safetensors, or a torch state dict read with ``torch.load(weights_only=True)``
(no pickled code); a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped. Errors
are :class:`~lightning_modules.backbones.CheckpointError` naming the file and, for a state dict
that does not fit, the first mismatching key.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from lightning_modules.backbones import CheckpointError, check_finite


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- safetensors and torch.load raise many types
        raise CheckpointError(f"{path}: unreadable weights ({first_line(exc)})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    check_finite(state, str(path))
    return state


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], where: str,
                           spec: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: does not fit {spec} ({first_mismatch(exc)})") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


_MISSING = re.compile(r'(Missing|Unexpected) key\(s\) in state_dict: ((?:"[^"]*"(?:, )?)+)')
_SIZE = re.compile(r"size mismatch for ([^:\s]+): (.*)")


def first_mismatch(exc: BaseException) -> str:
    """The first mismatching key of a ``load_state_dict`` error, and how many more there are."""
    text = str(exc)
    parts = []
    for kind, keys in _MISSING.findall(text):
        keys = re.findall(r'"([^"]*)"', keys)
        more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
        parts.append(f"{kind.lower()} key {keys[0]!r}{more}")
    sizes = _SIZE.findall(text)
    if sizes:
        key, detail = sizes[0]
        more = f"; {len(sizes) - 1} more size mismatches" if len(sizes) > 1 else ""
        parts.append(f"size mismatch for {key!r}: {detail.strip().rstrip('.')}{more}")
    return "; ".join(parts) if parts else first_line(exc)
