"""Pre-trained models from the hubs (timm, torchvision) and local folders, as :class:`Backbone`.

Specs (:func:`parse_model_spec`):

- ``timm:<name>[.<tag>]`` -- ``timm.create_model(name, pretrained=...)`` with the model's own
  classifier (``num_classes`` kept). Pretrained weights come through timm's own code path from
  the Hugging Face hub, which honours ``HF_HUB_OFFLINE`` and the local HF cache
  (``$HF_HUB_CACHE``, default ``$HF_HOME/hub``). ``weights=<file>`` (safetensors or a torch
  state dict) goes through *the same* path (``pretrained_cfg_overlay=dict(file=...)``): a local
  file and a hub download differ only in where the bytes come from.
- ``torchvision:<name>`` -- ``torchvision.models.get_model(name, weights=<default weights>)``; the
  bytes come from torch.hub's cache, ``$TORCH_HOME/hub/checkpoints/<file of the weights' URL>``.
  ``weights=<file>`` loads a local state dict (safetensors, or ``torch.load(weights_only=True)``)
  strictly into ``get_model(name, weights=None)``. ``HF_HUB_OFFLINE=1`` stops torchvision
  downloads too: a missing cache file is then an error, never a download.
- ``local:<path>`` -- a folder with ``model.safetensors`` + ``meta.json``: a whichmodel zoo
  checkpoint (:func:`~lightning_modules.backbones.load_checkpoint`), or a ``meta.json`` whose
  ``arch`` is a hub spec (``{"arch": "timm:resnet18", ...}``). The tensors are then either the
  hub model's own state dict (what a ``weights=`` file holds, loaded the same way) or a saved
  hub :class:`Backbone` (keys ``body.*`` and optional ``source_head.*``, as
  :func:`~lightning_modules.backbones.save_checkpoint` writes after a fine-tune).

The backbone: ``features`` are the pooled pre-logits features (timm's
``forward_head(pre_logits=True)``; torchvision's network with its final ``nn.Linear`` replaced by
``nn.Identity``); that classifier (a linear layer, or the 1x1 convolution on pooled features of
timm's ResNetV2 and BiT) with its trained weights becomes ``source_head`` (LEEP, NCE), ``None``
when the weights are random (``pretrained=False``) or there is no such classifier (SqueezeNet's
convolution: its globally pooled ``features`` module is the backbone). Preprocessing is the
weights' own: timm's ``pretrained_cfg`` (``input_size``, ``mean``, ``std``), torchvision's
``weights.transforms()`` (crop size, mean, std). Models come back in eval mode, on the CPU.

Block groups (surgical fine-tuning): ResNet stages, else thirds of the network's units
(:mod:`lightning_modules.hub_blocks`).

Metadata (second return value of :func:`load_model`): ``arch`` (the spec; for ``local:`` the
checkpoint's own ``arch``), ``spec``, ``source`` (timm, torchvision, zoo), ``weights`` (file, hub
id or torchvision weights name; ``None`` for random weights), ``feature_dim``, ``params`` (the
backbone without its classifier, Renggli et al. 2022's convention: timm's ``num_classes=0``
count), ``source_classes``,
``input_size``, ``preprocessing``, ``imagenet_acc`` (a fraction; torchvision's ImageNet-1K acc@1 /
100, ``None`` for timm, whose package ships no accuracies), ``upstream`` (datasets, from the timm
tag, e.g. ``fb_in22k_ft_in1k`` -> imagenet-21k, imagenet-1k, or torchvision's weights name) and
``upstream_size`` (images of the largest upstream dataset; ``None`` when one is of unknown
size). A ``weights=`` file is taken for a copy of the spec's pretrained weights (that is what
"only the bytes' origin differs" means), so it inherits the library's claims; describe other
weights with ``meta=``. Random weights claim nothing (``imagenet_acc`` None, ``upstream`` [],
``upstream_size`` 0). Then ``meta.json`` (for ``local:``), then ``meta=``, win over the library's
values -- except the loaded network's own facts (``arch``, ``spec``, ``feature_dim``,
``source_classes``, ``input_size``, ``preprocessing``), which nothing overrides.

Errors name the spec and the file: :class:`ModelSpecError` (a bad spec, an unknown model with
close matches, an unknown tag); ``CheckpointError`` (a weights file missing, unreadable, or not
fitting the architecture, naming the first mismatching key); :class:`WeightsUnavailableError`
(a ``CheckpointError``: hub weights neither cached nor downloadable; pre-download them or pass
``weights:``).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from lightning_modules.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    CheckpointError,
    TimmBody,
    check_finite,
    load_checkpoint,
)
from lightning_modules.hub_blocks import drop_aux, hub_block_groups, parameter_count, torchvision_random
from lightning_modules.state_dicts import first_line, first_mismatch, load_state_dict_strict, read_state_dict
from whichmodel.accuracy import check_accuracy
from whichmodel.errors import WhichModelError

__all__ = ["ModelSpecError", "WeightsUnavailableError", "parse_model_spec", "load_model"]

SPEC_FORMS = "timm:<name>[.<tag>], torchvision:<name> or local:<path>"
HUB_KINDS = ("timm", "torchvision")
# Facts of the loaded network: metadata (meta.json, meta=) may not contradict them.
STRUCTURAL_KEYS = ("arch", "spec", "feature_dim", "source_classes", "input_size", "preprocessing")

# Upstream datasets named by timm tag tokens, with their training-set sizes where well known
# (ILSVRC-2012 train; the ImageNet-21k "fall11" release, which timm tags in21k or in22k).
UPSTREAM_TAGS: dict[str, tuple[str, int | None]] = {
    "in1k": ("imagenet-1k", 1_281_167),
    "in21k": ("imagenet-21k", 14_197_122),
    "in22k": ("imagenet-21k", 14_197_122),
    "in12k": ("imagenet-12k", None),
}


class ModelSpecError(WhichModelError, ValueError):
    """A model spec that cannot name a model: bad form, unknown model or tag."""


class WeightsUnavailableError(CheckpointError):
    """Hub weights that are neither in the local cache nor downloadable (offline)."""


# --------------------------------------------------------------------------- specs
_TIMM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*(\.[A-Za-z0-9][A-Za-z0-9_\-]*)?")
_TV_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*")


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``timm:<name>[.<tag>]`` | ``torchvision:<name>`` | ``local:<path>`` -> ``(kind, name)``."""
    kind, sep, rest = str(spec).partition(":")
    ok = bool(sep) and (
        (kind == "timm" and _TIMM_NAME.fullmatch(rest))
        or (kind == "torchvision" and _TV_NAME.fullmatch(rest))
        or (kind == "local" and rest.strip() != ""))
    if not ok:
        raise ModelSpecError(f"model spec {spec!r}: write {SPEC_FORMS}")
    return kind, rest


def _close_matches(name: str, known: list[str], extra: list[str] = ()) -> str:
    matches = list(dict.fromkeys([*difflib.get_close_matches(name, known, n=5, cutoff=0.6),
                                  *extra]))[:8]
    return ", ".join(matches) if matches else "none"


# --------------------------------------------------------------------------- entry point
def load_model(spec: str, weights: str | os.PathLike | None = None,
               meta: dict[str, Any] | None = None, pretrained: bool = True
               ) -> tuple[Backbone, dict[str, Any]]:
    """A hub or local model as a :class:`Backbone` (eval mode, CPU) and its metadata.

    ``weights``: a local weight file read through the hub's own loading path instead of the hub
    cache. ``pretrained=False``: the architecture at random initialisation (a control).
    ``meta``: metadata that wins over the library's (see the module docstring).
    """
    kind, name = parse_model_spec(spec)
    if weights is not None and not pretrained:
        raise ModelSpecError(f"model spec {spec!r}: weights={str(weights)!r} with "
                             "pretrained=False (random weights); drop one of them")
    if kind == "local":
        if weights is not None or not pretrained:
            raise ModelSpecError(f"model spec {spec!r}: a local: folder carries its own weights; "
                                 "drop weights= and pretrained=False")
        backbone, info = _load_local(spec, Path(name).expanduser())
    else:
        if weights is not None:
            weights = _existing_file(spec, weights)
        backbone, info = _load_hub(spec, kind, name, weights, pretrained)
    facts = {"arch": info.pop("arch", spec), "spec": spec, "feature_dim": backbone.feature_dim,
             "source_classes": backbone.source_head.out_features if backbone.source_head else 0,
             "input_size": int(backbone.preprocessing["input_size"]),
             "preprocessing": dict(backbone.preprocessing)}
    out: dict[str, Any] = {"imagenet_acc": None, "upstream": [], "upstream_size": None}
    meta_file = info.pop("meta_file", {})
    out.update(info)  # the library's view of the weights
    out.update(meta_file)  # local: the folder's meta.json
    out.update(meta or {})
    out.update(facts)
    _check_imagenet_acc(spec, out["imagenet_acc"])
    # weights the libraries' own loaders read (hub caches, a timm weights file) are checked
    # here; safetensors and state-dict files already were, naming the file
    check_finite(backbone.state_dict(), str(weights) if weights is not None else
                 out.get("weights") or spec)
    return backbone.cpu().eval(), out


def structure(spec: str) -> dict[str, int]:
    """A hub model's backbone parameters (without its classifier) and feature width, from its
    architecture alone (random weights: nothing is read or downloaded)."""
    kind, name = parse_model_spec(spec)
    if kind == "local":
        meta = json.loads((Path(name).expanduser() / "meta.json").read_text())
        return {k: int(meta[k]) for k in ("params", "feature_dim") if k in meta}
    backbone, info = build_architecture(spec)
    return {"params": int(info["params"]), "feature_dim": int(backbone.feature_dim)}


def build_architecture(spec: str) -> tuple[Backbone, dict[str, Any]]:
    """A hub model's architecture with random weights on the default device (under
    ``torch.device("meta")``: shapes only, what the memory estimate traces); nothing is read or
    downloaded. A ``local:`` folder builds the hub ``arch`` its ``meta.json`` names."""
    kind, name = parse_model_spec(spec)
    if kind == "local":
        arch = json.loads((Path(name).expanduser() / "meta.json").read_text()).get("arch", "")
        kind, name = parse_model_spec(arch)
        spec = arch
    return _load_hub(spec, kind, name, None, pretrained=False)


def _check_imagenet_acc(spec: str, acc: Any) -> None:
    """Strategies rank fractions: a percentage (76.1) from meta= or meta.json would win them all."""
    try:
        check_accuracy(acc, f"model spec {spec!r}: metadata imagenet_acc")
    except ValueError as exc:
        raise ModelSpecError(f"{exc} (e.g. 0.761, not 76.1)") from None


def _existing_file(spec: str, weights: str | os.PathLike) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file for {spec!r} not found"
                              + (" (a directory; name the file)" if path.is_dir() else ""))
    return path


def _load_hub(spec: str, kind: str, name: str, weights: Path | None, pretrained: bool
              ) -> tuple[Backbone, dict[str, Any]]:
    if kind == "timm":
        return _load_timm(spec, name, weights, pretrained)
    return _load_torchvision(spec, name, weights, pretrained)


# --------------------------------------------------------------------------- timm
def _load_timm(spec: str, name: str, weights: Path | None, pretrained: bool
               ) -> tuple[Backbone, dict[str, Any]]:
    import timm

    base, _, tag = name.partition(".")
    if not timm.is_model(base):
        raise ModelSpecError(
            f"model spec {spec!r}: timm has no model {base!r}; close matches: "
            f"{_close_matches(base, timm.list_models(), timm.list_models(f'*{base}*')[:5])}")
    if tag and name not in timm.list_pretrained(f"{base}.*"):
        tags = ", ".join(timm.list_pretrained(f"{base}.*")) or "none"
        raise ModelSpecError(f"model spec {spec!r}: timm has no weights tagged {tag!r} for "
                             f"{base}; known: {tags}")
    load = pretrained or weights is not None
    overlay = {"file": str(weights)} if weights is not None else None
    if pretrained and weights is None:
        _check_timm_cache(spec, name)
    try:
        model = timm.create_model(name, pretrained=load, pretrained_cfg_overlay=overlay)
    except Exception as exc:  # noqa: BLE001 -- classified, re-raised when not a weights problem
        where = str(weights) if weights is not None else _timm_hub_id(name)
        raise _weights_error(exc, spec, where) from None
    cfg = model.pretrained_cfg
    info = {"source": "timm",
            "weights": str(weights) if weights is not None else
            (f"hf-hub:{cfg.get('hf_hub_id')}" if load else None)}
    if load:
        info.update(_timm_upstream(cfg.get("tag") or ""))
    else:
        info.update(upstream=[], upstream_size=0)
    head = model.get_classifier()
    linear = isinstance(head, nn.Linear) or (isinstance(head, nn.Conv2d)  # ResNetV2's, BiT's
                                             and head.kernel_size == (1, 1) and head.groups == 1)
    trained_head = load and linear
    feature_dim = head.weight.shape[1] if linear else int(
        getattr(model, "head_hidden_size", None) or model.num_features)
    source_head = _copy_linear(head) if trained_head else None
    model.reset_classifier(0)
    prep = {"input_size": int(cfg["input_size"][-1]), "mean": [float(v) for v in cfg["mean"]],
            "std": [float(v) for v in cfg["std"]]}
    body = TimmBody(model)
    backbone = _backbone(body, feature_dim, prep, hub_block_groups(model, "model."), source_head)
    info["params"] = parameter_count(body)  # the backbone without its classifier
    return backbone, info


def _timm_hub_id(name: str) -> str:
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return f"hf-hub:{hub_id}" if hub_id else f"timm weights of {name}"


def _check_timm_cache(spec: str, name: str) -> None:
    """Offline: fail clearly, before timm tries, when the hub weights are not in the HF cache."""
    if not _offline():
        return
    from huggingface_hub import constants, try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:  # no HF weights: timm's own error follows
        return
    repo, _, revision = cfg.hf_hub_id.partition("@")
    files = ([cfg.hf_hub_filename] if cfg.hf_hub_filename
             else ["model.safetensors", "pytorch_model.bin"])
    for filename in files:
        if isinstance(try_to_load_from_cache(repo, filename, revision=revision or None), str):
            return
    raise WeightsUnavailableError(
        f"{spec}: pretrained weights hf-hub:{cfg.hf_hub_id} are not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 forbids downloading them; pre-download "
        f"them on a connected machine with the same HF_HOME (e.g. `hf download {repo}`), or pass a "
        "local file as weights:")


def _timm_upstream(tag: str) -> dict[str, Any]:
    found = [UPSTREAM_TAGS[t] for t in tag.split("_") if t in UPSTREAM_TAGS]
    names = list(dict.fromkeys(n for n, _ in found))
    sizes = [s for _, s in found]
    size = max(sizes) if sizes and all(s is not None for s in sizes) else None
    return {"upstream": names, "upstream_size": size}


# --------------------------------------------------------------------------- torchvision
def _load_torchvision(spec: str, name: str, weights: Path | None, pretrained: bool
                      ) -> tuple[Backbone, dict[str, Any]]:
    import torchvision
    from torchvision.models import get_model, get_model_weights, list_models

    known = list_models(module=torchvision.models)
    if name not in known:
        raise ModelSpecError(f"model spec {spec!r}: torchvision has no classification model "
                             f"{name!r}; close matches: {_close_matches(name, known)}")
    default = get_model_weights(name).DEFAULT
    if weights is not None:
        state = read_state_dict(weights)
        model = torchvision_random(name, state)
        load_state_dict_strict(model, state, str(weights), spec)
        drop_aux(name, model)
        source = str(weights)
    elif pretrained:
        file = os.path.basename(urlparse(default.url).path)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / file
        if not cached.is_file() and _offline():
            raise WeightsUnavailableError(
                f"{spec}: pretrained weights {default} are not in torch.hub's cache ({cached}) and "
                "HF_HUB_OFFLINE=1 forbids downloading them; pre-download them on a connected "
                f"machine with the same TORCH_HOME (torchvision.models.get_model({name!r}, "
                "weights='DEFAULT')), or pass a local file as weights:")
        try:
            model = get_model(name, weights=default)
        except Exception as exc:  # noqa: BLE001 -- classified, re-raised when not a weights problem
            raise _weights_error(exc, spec, str(cached)) from None
        source = f"{type(default).__name__}.{default.name}"
    else:
        model = torchvision_random(name)
        source = None
    info = {"source": "torchvision", "weights": source}
    if source is not None:
        info.update(_torchvision_meta(default))
    else:
        info.update(upstream=[], upstream_size=0)
    backbone = _torchvision_backbone(model, _torchvision_prep(default), source is not None)
    info["params"] = parameter_count(backbone.body)  # the backbone without its classifier
    return backbone, info


def _torchvision_meta(weights_enum: Any) -> dict[str, Any]:
    meta = weights_enum.meta
    acc = meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    upstream, size = ["imagenet-1k"], 1_281_167
    if "SWAG" in weights_enum.name:  # weakly supervised on Instagram, then fine-tuned (Singh 2022)
        upstream, size = ["instagram-3.6b", "imagenet-1k"], 3_600_000_000
    return {"imagenet_acc": None if acc is None else float(acc) / 100.0,
            "upstream": upstream, "upstream_size": size}


def _torchvision_prep(weights_enum: Any) -> dict[str, Any]:
    t = weights_enum.transforms()
    crop = getattr(t, "crop_size", [224])
    return {"input_size": int(crop[0] if isinstance(crop, (list, tuple)) else crop),
            "mean": [float(v) for v in getattr(t, "mean", IMAGENET_MEAN)],
            "std": [float(v) for v in getattr(t, "std", IMAGENET_STD)]}


def _torchvision_backbone(model: nn.Module, prep: dict[str, Any], trained: bool) -> Backbone:
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    last_name, last = leaves[-1]
    if isinstance(last, nn.Linear):
        source_head = _copy_linear(last) if trained else None
        model.set_submodule(last_name, nn.Identity())
        return _backbone(model, last.in_features, prep, hub_block_groups(model), source_head)
    if not isinstance(getattr(model, "features", None), nn.Module):
        raise ModelSpecError(f"{type(model).__name__}: neither a final nn.Linear classifier nor a "
                             "features module; not supported as a backbone")
    body = nn.Sequential()
    body.add_module("features", model.features)
    body.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    with torch.no_grad():
        size = int(prep["input_size"])
        feature_dim = body.eval()(torch.zeros(1, 3, size, size)).shape[1]
    return _backbone(body, feature_dim, prep, hub_block_groups(body), None)


# --------------------------------------------------------------------------- local folders
def _load_local(spec: str, directory: Path) -> tuple[Backbone, dict[str, Any]]:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such folder (from {spec!r}); local:<path> names a "
                              "folder with model.safetensors and meta.json")
    meta_path, weights = directory / "meta.json", directory / "model.safetensors"
    try:
        meta_file = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{meta_path}: missing; {spec!r} needs model.safetensors and "
                              "meta.json") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable metadata ({exc})") from None
    arch = meta_file.get("arch") if isinstance(meta_file, dict) else None
    if not isinstance(arch, str):
        raise CheckpointError(f"{meta_path}: key 'arch' missing; write a zoo architecture or a "
                              "hub spec (timm:<name>, torchvision:<name>)")
    if not arch.startswith(tuple(f"{k}:" for k in HUB_KINDS)):
        backbone, zoo_meta = load_checkpoint(directory)
        return backbone, {**zoo_meta, "source": "zoo", "weights": str(weights)}
    try:
        kind, name = parse_model_spec(arch)
    except ModelSpecError as exc:
        raise CheckpointError(f"{meta_path}: key 'arch': {exc}") from None
    weights = _existing_file(spec, weights)
    if _is_backbone_state(weights):  # a saved hub Backbone (save_checkpoint after a fine-tune)
        backbone, info = _load_hub(arch, kind, name, None, pretrained=False)
        state = read_state_dict(weights)
        head = state.get("source_head.weight")
        backbone.source_head = nn.Linear(head.shape[1], head.shape[0]) if head is not None else None
        load_state_dict_strict(backbone, state, str(weights), arch)
        info.update(upstream=[], upstream_size=None)  # unknown unless meta.json says
    else:  # the hub model's own state dict, as a weights= file
        backbone, info = _load_hub(arch, kind, name, weights, pretrained=True)
    meta_file = {k: v for k, v in meta_file.items() if k not in STRUCTURAL_KEYS}
    info.update(arch=arch, weights=str(weights), meta_file=meta_file)
    return backbone, info


def _is_backbone_state(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return any(k.startswith("body.") for k in f.keys())
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: unreadable checkpoint ({first_line(exc)})") from None


# --------------------------------------------------------------------------- shared pieces
def _backbone(body: nn.Module, feature_dim: int, prep: dict[str, Any],
              groups: dict[str, list[str]], source_head: nn.Linear | None) -> Backbone:
    backbone = Backbone(body, feature_dim, prep, groups,
                        source_classes=source_head.out_features if source_head is not None else 0)
    if source_head is not None:
        backbone.source_head.load_state_dict(source_head.state_dict())
    return backbone


def _copy_linear(layer: nn.Linear | nn.Conv2d) -> nn.Linear:
    """A linear classifier's copy; a 1x1 convolution on pooled features is one too."""
    weight = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    copy = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
    copy.load_state_dict({"weight": weight, **({"bias": layer.bias} if layer.bias is not None
                                               else {})})
    return copy


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub read it at import, or as the environment says now."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE) or env


def _weights_error(exc: Exception, spec: str, where: str) -> Exception:
    """Turn an exception raised while loading pretrained weights into a named, actionable one."""
    from urllib.error import URLError

    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, URLError,
                        ConnectionError, TimeoutError)):
        return WeightsUnavailableError(
            f"{spec}: pretrained weights {where} are not in the local cache and could not be "
            f"downloaded ({first_line(exc)}); pre-download them on a connected machine with the "
            "same HF_HOME / TORCH_HOME, or pass a local file as weights:")
    if isinstance(exc, FileNotFoundError):
        return CheckpointError(f"{where}: weights file for {spec!r} not found")
    text = str(exc)
    if "No pretrained weights exist" in text:
        return CheckpointError(f"{spec}: the library has no pretrained weights for this model; "
                               "write pretrained: false or pass a local file as weights:")
    if isinstance(exc, RuntimeError) and ("state_dict" in text or text.startswith("Pretrained ")):
        return CheckpointError(f"{where}: does not fit {spec} ({first_mismatch(exc)})")
    if isinstance(exc, (RuntimeError, EOFError, OSError)) or type(exc).__name__ in (
            "SafetensorError", "UnpicklingError"):
        return CheckpointError(f"{where}: cannot load weights for {spec} ({first_line(exc)})")
    return exc
