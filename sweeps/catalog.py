"""A catalog file (``catalog:`` in a sweep file, e.g. ``sweeps/configs/pools/renggli2022.yaml``):
hub model entries, named pools (lists or rules over the entries' metadata) and a study's models
mapped to the entries; loaded and checked like a sweep file (one-line errors naming the key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from sweeps.config import ModelEntry, Name, PoolDefinition, Strict
from sweeps.config_read import ConfigError, format_validation_error, read_yaml


class PaperModel(Strict):
    """One model of a paper's study and its public equivalent (None: there is none)."""

    paper_model: str
    feature_dim: int | None = None
    params: int | None = None
    imagenet_acc: float | None = Field(None, ge=0, le=1)
    equivalent: str | None = None
    note: str = ""


class Catalog(Strict):
    """A models-and-pools file: hub model entries, named pools (lists or rules over the entries'
    metadata) and the study's models mapped to the entries."""

    description: str = ""
    models: list[ModelEntry] = []
    pools: dict[Name, list[str] | PoolDefinition] = {}
    mapping: list[PaperModel] = []


def load_catalog(path: str | Path) -> Catalog:
    from selection.pools import check_listed, check_rule_keys

    path, data = read_yaml(path)
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(path, err, Catalog)) from None
    names = [m.name for m in catalog.models]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{path}: key 'models[{i}].name': model {name!r} listed twice")
    for pool, members in catalog.pools.items():
        listed, key = pool_listed(pool, members)
        check_listed(path, key, listed, names, "one of this file's models")
    check_within(path, catalog.pools)
    # what a rule can read before a model is opened: its entry's meta, and the parameters and
    # feature width counted on the architecture (sweeps.refs.model_metadata)
    known = {"params", "feature_dim"} | {k for m in catalog.models for k in m.meta}
    for pool, members in catalog.pools.items():
        if isinstance(members, PoolDefinition) and members.rule is not None:
            check_rule_keys(path, f"pools.{pool}.rule", members.rule, sorted(known))
    for i, paper in enumerate(catalog.mapping):
        if paper.equivalent is not None and paper.equivalent not in names:
            raise ConfigError(f"{path}: key 'mapping[{i}].equivalent': {paper.equivalent!r} is not "
                              "one of this file's models")
    return catalog


def pool_listed(name: str, definition: list[str] | PoolDefinition) -> tuple[list[str], str]:
    """The models a pool definition lists and the key they sit at."""
    if isinstance(definition, PoolDefinition):
        return definition.models, f"pools.{name}.models"
    return definition, f"pools.{name}"


def check_within(path: Path, pools: dict[str, Any], earlier: tuple[str, ...] = ()) -> None:
    """A pool's ``within`` names a pool defined before it (or ``all``)."""
    seen = {"all", *earlier}
    for name, definition in pools.items():
        within = getattr(definition, "within", None)
        if within is not None and within not in seen:
            raise ConfigError(f"{path}: key 'pools.{name}.within': {within!r} is not a pool defined "
                              f"above it; known: {', '.join(sorted(seen))}")
        seen.add(name)
