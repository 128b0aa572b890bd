"""Registries of models, tasks and pools, resolved against a sweep file with named errors.

Models come from three places, all behind one backbone contract:

- the zoo file's entries (pre-trained by the project, under ``$WHICHMODEL_HOME/zoo``);
- hub specs (:mod:`lightning_modules.hub`): ``timm:<name>[.<tag>]``, ``torchvision:<name>`` and
  ``local:<path>``, written as a plain string (named after the spec: ``timm:resnet50.a1_in1k`` ->
  ``resnet50.a1_in1k``, ``torchvision:resnet50`` -> ``torchvision-resnet50``, ``local:dir/m`` ->
  ``m``) or as an entry ``{name, spec, weights, pretrained, meta}``;
- a catalog file's entries (``catalog:``, e.g. ``pools/renggli2022.yaml``), by name.

Tasks are the offline suite's, VTAB-1k tasks written ``vtab:<name>`` (read from ``data.root``),
both looked up in :mod:`lightning_modules.tasks`, or ImageFolder entries ``{name, path, group}``.

A resolved model or task is a plain dict (a *ref*) that travels to the Tune trials with the sweep's
settings; :func:`load_model_ref` and :func:`load_task_ref` turn refs into backbones and task data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sweeps.catalog import load_catalog, pool_listed
from sweeps.config import (
    HUB_PREFIXES,
    ConfigError,
    ModelEntry,
    PoolDefinition,
    SweepConfig,
    TaskEntry,
)
from sweeps.paths import Paths
from sweeps.zoo_config import ZooConfig
from whichmodel.errors import WhichModelError
from whichmodel.names import within

VTAB_PREFIX = "vtab:"


def _collect(kind: str, items: list, resolve_one, source: Path
             ) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Names in order and a ref per name, from ``resolve_one(i, item) -> (name, ref)``; a name
    listed twice or an empty list is a ConfigError naming the key."""
    names, refs = [], {}
    for i, item in enumerate(items):
        name, ref = resolve_one(i, item)
        if name in refs:
            raise ConfigError(f"{source}: key '{kind}[{i}]': {name!r} listed twice")
        names.append(name)
        refs[name] = ref
    if not names:
        raise ConfigError(f"{source}: key '{kind}': empty list; name at least one or write 'all'")
    return names, refs


def spec_name(spec: str) -> str:
    """The model name a bare hub spec gets (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "timm":
        return rest.replace("/", "-")
    if kind == "torchvision":
        return f"torchvision-{rest}"
    return Path(rest.rstrip("/")).name


def _hub_ref(entry: ModelEntry, base: Path) -> dict[str, Any]:
    spec, weights = entry.spec, entry.weights
    if spec.startswith("local:"):
        spec = "local:" + str((base / spec[len("local:"):]).resolve())
    if weights is not None:
        weights = str((base / weights).resolve())
    return {"source": "hub", "spec": spec, "weights": weights, "pretrained": entry.pretrained,
            "meta": dict(entry.meta)}


def resolve_model_refs(cfg: SweepConfig, zoo: ZooConfig | None, source: Path
                       ) -> tuple[list[str], dict[str, dict[str, Any]], dict[str, Any]]:
    """The sweep's models in order, a ref per model, and the catalog's pool definitions."""
    base = source.parent
    known: dict[str, dict[str, Any]] = {}
    if zoo is not None:
        known.update({m.name: {"source": "zoo"} for m in zoo.models})
    catalog_pools: dict[str, Any] = {}
    if cfg.catalog:
        path = base / cfg.catalog
        catalog = load_catalog(path)
        known.update({m.name: _hub_ref(m, path.parent) for m in catalog.models})
        catalog_pools = dict(catalog.pools)
    if cfg.models == "all":  # the catalog's models if there is one, else the zoo's
        if cfg.catalog:
            chosen = {n: r for n, r in known.items() if r["source"] == "hub"}
            return list(chosen), chosen, catalog_pools
        if not known:
            raise ConfigError(f"{source}: key 'models': 'all' but there is no zoo file "
                              f"({base / cfg.zoo}); list the models")
        return list(known), known, catalog_pools

    def one(i: int, item) -> tuple[str, dict[str, Any]]:
        if isinstance(item, ModelEntry):
            return item.name, _hub_ref(item, base)
        if item.startswith(HUB_PREFIXES):
            name = spec_name(item)
            return name, _hub_ref(ModelEntry(name=_safe(name, source, i), spec=item), base)
        if item in known:
            return item, known[item]
        hint = "" if zoo is not None else f" (no zoo file at {base / cfg.zoo})"
        raise ConfigError(f"{source}: key 'models[{i}]': unknown model {item!r}{hint}; "
                          f"known: {', '.join(known) or 'none'}; or write a hub spec "
                          "timm:<name>, torchvision:<name>, local:<path>")

    names, refs = _collect("models", cfg.models, one, source)
    return names, refs, catalog_pools


def _safe(name: str, source: Path, i: int) -> str:
    from whichmodel.names import name_problem

    why = name_problem(name)
    if why is not None:
        raise ConfigError(f"{source}: key 'models[{i}]': the spec gives the model name {name!r}, "
                          f"which {why}; write an entry {{name: ..., spec: ...}}")
    return name


def resolve_task_refs(cfg: SweepConfig, source: Path
                      ) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The sweep's tasks in order and a ref per task."""
    from lightning_modules.tasks import list_tasks

    offline = list_tasks(kind="offline")
    if cfg.tasks == "all":
        return offline, {t: {"source": "offline"} for t in offline}
    def one(i: int, item) -> tuple[str, dict[str, Any]]:
        if isinstance(item, TaskEntry):
            return item.name, {"source": "imagefolder", "group": item.group,
                               "path": str((source.parent / item.path).resolve())}
        if item.startswith(VTAB_PREFIX):
            name = item[len(VTAB_PREFIX):]
            if item not in list_tasks(kind="vtab"):
                known = [t[len(VTAB_PREFIX):] for t in list_tasks(kind="vtab")]
                raise ConfigError(f"{source}: key 'tasks[{i}]': unknown VTAB-1k task {name!r}; "
                                  f"known: {', '.join(known)}")
            return name, {"source": "vtab"}
        if item in offline:
            return item, {"source": "offline"}
        raise ConfigError(f"{source}: key 'tasks[{i}]': unknown task {item!r}; known: "
                          f"{', '.join(offline)}, vtab:<name> for VTAB-1k, or an ImageFolder "
                          "entry {name, path, group}")

    return _collect("tasks", cfg.tasks, one, source)


def resolve_pools(cfg: SweepConfig, models: list[str], source: Path,
                  catalog_pools: dict[str, Any] | None = None,
                  metadata: dict[str, dict[str, Any]] | None = None) -> dict[str, list[str]]:
    """Named pools over the sweep's models: the catalog's (keeping the members this sweep runs;
    a pool left empty is dropped), then the sweep's. A definition is ``all``, a list, or a rule
    over ``metadata`` with optional listed models, inside an earlier pool (``within``)."""
    from selection.pools import check_listed, check_rule_keys, pool_members

    metadata = metadata or {}
    known = sorted({k for meta in metadata.values() for k, v in meta.items() if v is not None})
    pools: dict[str, list[str]] = {}
    for name, definition in (catalog_pools or {}).items():
        if isinstance(definition, PoolDefinition):
            kept = pool_members(models, metadata, rule=definition.rule,
                                listed=[m for m in definition.models if m in models],
                                within=_within(pools, models, definition.within, source, name))
        else:
            kept = [m for m in definition if m in models]
        if kept:
            pools[name] = kept
    for name, definition in cfg.pools.items():
        if definition == "all":
            pools[name] = list(models)
            continue
        listed, key = pool_listed(name, definition)
        check_listed(source, key, listed, models, f"in this sweep's models ({', '.join(models)})")
        if isinstance(definition, PoolDefinition):
            if definition.rule is not None:
                check_rule_keys(source, f"pools.{name}.rule", definition.rule, known)
            pools[name] = pool_members(models, metadata, rule=definition.rule, listed=listed,
                                       within=_within(pools, models, definition.within, source,
                                                      name))
        else:
            pools[name] = list(listed)
    return pools


def _within(pools: dict[str, list[str]], models: list[str], within: str | None, source: Path,
            name: str) -> list[str] | None:
    if within is None or within == "all":
        return None
    if within not in pools:
        raise ConfigError(f"{source}: key 'pools.{name}.within': {within!r} is not a pool defined "
                          f"before it; known: {', '.join(['all', *pools])}")
    return pools[within]


def uses_rules(cfg: SweepConfig, catalog_pools: dict[str, Any]) -> bool:
    return any(isinstance(d, PoolDefinition) and d.rule
               for d in [*cfg.pools.values(), *catalog_pools.values()])


def model_metadata(models: list[str], refs: dict[str, dict[str, Any]], zoo: ZooConfig | None,
                   *, structure: bool) -> dict[str, dict[str, Any]]:
    """What is known of each model before it is opened: a hub entry's ``meta``; a zoo model's
    arch, objective, upstream families and upstream size. ``structure``: also its backbone
    parameters and feature width, counted on the architecture without weights where the
    metadata lacks them (pool rules read them)."""
    out = {}
    for name in models:
        ref = refs.get(name, {"source": "zoo"})
        if ref.get("source", "zoo") == "zoo" and zoo is not None:
            m = zoo.model(name)
            size = zoo.source.n_train * len(m.upstream)
            meta = {"arch": m.arch, "objective": m.objective, "upstream": list(m.upstream),
                    "upstream_size": size if m.objective != "none" else 0}
        else:
            meta = dict(ref.get("meta") or {})
        if structure and ("params" not in meta or "feature_dim" not in meta):
            meta = {**_structure(name, ref, zoo), **meta}
        out[name] = meta
    return out


def _structure(name: str, ref: dict[str, Any], zoo: ZooConfig | None) -> dict[str, Any]:
    """Backbone parameters (no classifier) and feature width, from the architecture alone."""
    if ref.get("source", "zoo") == "zoo":
        from lightning_modules.backbones import count_parameters, create_backbone

        m = zoo.model(name)
        backbone = create_backbone(m.arch, input_size=zoo.image_size, **m.arch_kwargs)
        return {"params": count_parameters(backbone), "feature_dim": backbone.feature_dim}
    from lightning_modules.backbones import CheckpointError
    from lightning_modules.hub import structure

    try:
        return structure(ref["spec"])  # a bad spec: ModelSpecError, naming the spec
    except OSError as exc:
        raise CheckpointError(f"model {name!r}: {exc}") from None


def model_pools(pools: dict[str, list[str]], model: str) -> list[str]:
    return sorted(p for p, members in pools.items() if model in members)


def model_dir(paths: Paths, model: str) -> Path:
    return within(paths.zoo_root, model)


def load_model_ref(name: str, ref: dict[str, Any], zoo_root: str | Path):
    """(backbone, metadata) of a resolved model."""
    if ref.get("source", "zoo") == "zoo":
        from lightning_modules.backbones import load_checkpoint

        return load_checkpoint(Path(zoo_root) / name)
    from lightning_modules.hub import load_model

    return load_model(ref["spec"], weights=ref.get("weights"), meta=ref.get("meta") or None,
                      pretrained=ref.get("pretrained", True))


def load_task_ref(name: str, ref: dict[str, Any], data_root: str | Path, image_size: int,
                  seed: int, download: bool = False):
    """The splits of a resolved task (built and cached on first use)."""
    return get_ref_task(name, ref).load(data_root, image_size=image_size, seed=seed,
                                        download=download)


def get_ref_task(name: str, ref: dict[str, Any]):
    """The :class:`~lightning_modules.task_data.Task` of a resolved task (ImageFolders cached
    under ``<data_root>/cache``)."""
    from lightning_modules.tasks import get_task, imagefolder_task

    source = ref.get("source", "offline")
    if source == "imagefolder":
        return imagefolder_task(name, ref["path"], ref["group"])
    return get_task(VTAB_PREFIX + name if source == "vtab" else name)


def check_task_ref(name: str, ref: dict[str, Any], data_root: str | Path,
                   download: bool = False) -> None:
    """A WhichModelError naming the task, the path and the fix when a resolved task's data is not
    there (``Task.check``: decodes nothing, writes nothing)."""
    from lightning_modules.task_data import DatasetError

    try:
        get_ref_task(name, ref).check(data_root, download=download)  # DatasetError names the path
    except OSError as exc:
        raise DatasetError(f"task {name!r}: {exc}") from None


def task_group(name: str, ref: dict[str, Any]) -> str:
    return get_ref_task(name, ref).info.group


def check_models(models: list[str], paths: Paths, zoo_file: Path,
                 refs: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Open every model before anything starts (zoo checkpoints, hub weights); their metadata."""
    from lightning_modules.backbones import CheckpointError

    metas = {}
    for name in models:
        ref = (refs or {}).get(name, {"source": "zoo"})
        if ref.get("source", "zoo") == "zoo":
            directory = model_dir(paths, name)
            if not directory.is_dir():
                raise WhichModelError(f"{directory}: model {name!r} is not built; run "
                                      f"'whichmodel zoo build {zoo_file}' first")
        try:
            _, metas[name] = load_model_ref(name, ref, paths.zoo_root)  # CheckpointError names the file
        except OSError as exc:
            raise CheckpointError(f"model {name!r}: {exc}") from None
    return metas
