"""Named pools: the subsets of models a regret report ranges over (Renggli et al. 2022, Sec. 4.2; README, "Pools").

A pool is named in one of three ways, looked up in this order:

1. an explicit list: ``pools={"small": ["cnn-generalist", "resnet-generalist"]}`` (a sweep
   file's ``pools`` key), or ``pool_models=[...]`` for the one pool being reported;
2. ``all``: every model that has a record;
3. a metadata tag: the models whose ``pools`` field (models CSV, ``;``-separated, parsed by
   :func:`selection.records.read_models_csv`) names the pool.

Per task, the report then keeps the pool's models that have a ``finetune_test_acc`` for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from selection.records import METADATA_POOLS, POOL_ALL, index_metadata, models_in_pool, parse_pools

Pools = Mapping[str, Sequence[str]]


def _check_members(pool: str, members: object) -> list[str]:
    if isinstance(members, str) or not isinstance(members, (list, tuple, set, frozenset, pd.Index)):
        raise TypeError(f"pool {pool!r}: the models must be a list of model names, "
                        f"not {type(members).__name__} {members!r}")
    bad = [m for m in members if not isinstance(m, str) or not m.strip()]
    if bad:
        raise ValueError(f"pool {pool!r}: model names must be non-empty strings; got {bad!r}")
    if not members:
        raise ValueError(f"pool {pool!r}: the list of models is empty; name at least one model")
    return sorted(set(members))


def check_pools(pools: Pools | None) -> dict[str, list[str]]:
    """Validate explicit pools (name -> model names); returns sorted, de-duplicated lists."""
    if pools is None:
        return {}
    if not isinstance(pools, Mapping):
        raise TypeError(f"pools must map a pool name to its model names, got {type(pools).__name__}")
    out = {}
    for name, members in pools.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"pools: pool name {name!r} must be a non-empty string")
        out[name] = _check_members(name, members)
    return out


def list_pools(metadata: pd.DataFrame | None = None, pools: Pools | None = None) -> list[str]:
    """Every pool name known: ``all``, then explicit pools and metadata tags, sorted."""
    names = set(check_pools(pools))
    meta = index_metadata(metadata)
    if meta is not None and METADATA_POOLS in meta.columns:
        for value in meta[METADATA_POOLS].tolist():
            names.update(value if isinstance(value, (tuple, list)) else parse_pools(value))
    names.discard(POOL_ALL)
    return [POOL_ALL, *sorted(names)]


def resolve_pool(pool: str, record_models: Sequence[str], metadata: pd.DataFrame | None = None,
                 pools: Pools | None = None, pool_models: Sequence[str] | None = None) -> list[str]:
    """The sorted models of pool ``pool``: ``pool_models`` if given, else ``pools[pool]``, else
    every record model for ``all``, else the models tagged ``pool`` in the metadata.

    Raises :class:`selection.records.RecordsError` when a tag names no model (listing the pools
    present) and TypeError/ValueError for malformed lists.
    """
    if not isinstance(pool, str) or not pool.strip():
        raise ValueError(f"pool name {pool!r} must be a non-empty string, e.g. {POOL_ALL!r}")
    if pool_models is not None:
        return _check_members(pool, pool_models)
    explicit = check_pools(pools)
    if pool in explicit:
        return explicit[pool]
    if pool == POOL_ALL:
        return sorted(set(record_models))
    return models_in_pool(metadata, pool)
