"""Registries of models, tasks and pools, resolved against a sweep file with named errors.

Models are the zoo file's entries (built under ``$WHICHMODEL_HOME/zoo``); tasks are the offline
suite's (:mod:`lightning_modules.tasks`). Hub specs (``timm:``, ``torchvision:``, ``local:``) plug
in here later behind the same backbone contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sweeps.config import ConfigError, SweepConfig, WhichModelError, ZooConfig
from sweeps.paths import Paths


def _resolve(kind: str, requested: list[str] | str, known: list[str], source: Path) -> list[str]:
    if requested == "all":
        return list(known)
    seen, out = set(), []
    for i, name in enumerate(requested):
        if name not in known:
            raise ConfigError(f"{source}: key '{kind}[{i}]': unknown {kind[:-1]} {name!r}; "
                              f"known: {', '.join(known)}")
        if name in seen:
            raise ConfigError(f"{source}: key '{kind}[{i}]': {name!r} listed twice")
        seen.add(name)
        out.append(name)
    if not out:
        raise ConfigError(f"{source}: key '{kind}': empty list; name at least one or write 'all'")
    return out


def resolve_models(cfg: SweepConfig, zoo: ZooConfig, source: Path) -> list[str]:
    return _resolve("models", cfg.models, [m.name for m in zoo.models], source)


def resolve_tasks(cfg: SweepConfig, source: Path) -> list[str]:
    from lightning_modules.tasks import list_tasks

    return _resolve("tasks", cfg.tasks, list_tasks(), source)


def resolve_pools(cfg: SweepConfig, models: list[str], source: Path) -> dict[str, list[str]]:
    pools = {}
    for name, members in cfg.pools.items():
        if members == "all":
            pools[name] = list(models)
            continue
        for i, m in enumerate(members):
            if m not in models:
                raise ConfigError(f"{source}: key 'pools.{name}[{i}]': model {m!r} is not in this "
                                  f"sweep's models ({', '.join(models)})")
        pools[name] = list(members)
    return pools


def model_pools(pools: dict[str, list[str]], model: str) -> list[str]:
    return sorted(p for p, members in pools.items() if model in members)


def model_dir(paths: Paths, model: str) -> Path:
    return paths.zoo_root / model


def check_models(models: list[str], paths: Paths, zoo_file: Path) -> dict[str, dict[str, Any]]:
    """Open every model's checkpoint before anything starts; returns their metadata."""
    from lightning_modules.backbones import CheckpointError, load_checkpoint

    metas = {}
    for name in models:
        directory = model_dir(paths, name)
        if not directory.is_dir():
            raise WhichModelError(f"{directory}: model {name!r} is not built; run "
                                  f"'whichmodel zoo build {zoo_file}' first")
        try:
            _, metas[name] = load_checkpoint(directory)
        except CheckpointError as exc:
            raise WhichModelError(str(exc)) from None
    return metas
