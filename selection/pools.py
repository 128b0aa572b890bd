"""Named pools: the subsets of models a regret report ranges over (Renggli et al. 2022, Sec. 4.2).

A pool is defined by a **rule over model metadata**, an explicit list, or both
(:func:`pool_members`): the paper's pools are rules, evaluated for any catalog -- ``ResNet-50``
is ``params <= 24.0e6`` (backbone parameters at most ResNet-50 V2's, its 23.8 M experts
included), ``Dim2048`` is ``feature_dim <= 2048``, ``ImNetAccuracies`` is ``upstream ==
imagenet-1k and imagenet_acc``. A rule is clauses joined by ``and``, alternatives joined by
``or`` (``and`` binds tighter); a clause is ``key OP value`` (OP one of ``<= < >= > == !=``; the
value a number or a bare word), ``key`` (present and not empty or false) or ``not key``. A model
whose metadata lacks a compared key does not match. A list value (``upstream: [a, b]``) equals a
word only when it is that one word.

For a report, a pool is then named in one of three ways, looked up in this order:

1. an explicit list: ``pools={"small": ["cnn-generalist", "resnet-generalist"]}`` (a sweep
   file's ``pools`` key), or ``pool_models=[...]`` for the one pool being reported;
2. ``all``: every model that has a record;
3. a metadata tag: the models whose ``pools`` field (models CSV, ``;``-separated, read by
   :func:`pool_tags`) names the pool (:func:`models_in_pool`).

A sweep or catalog file's pool that lists a model the file does not have is refused by
:func:`check_listed`, naming the file and key.

Per task, the report then keeps the pool's models that have a ``finetune_test_acc`` for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from selection.records import METADATA_POOLS, POOL_ALL, RecordsError, index_metadata
from whichmodel.errors import ConfigError

Pools = Mapping[str, Sequence[str]]


class PoolError(ConfigError, ValueError):
    """A pool names a model that is not there (one line, exit 2)."""


def pool_tags(value: object) -> tuple[str, ...]:
    """The pool names of one metadata ``pools`` field: ``;``-separated text, or already a
    list/tuple; anything else (NaN, empty) is no pool."""
    if isinstance(value, (tuple, list)):
        return tuple(str(v) for v in value)
    if not isinstance(value, str):
        return ()
    return tuple(p.strip() for p in value.split(";") if p.strip())


def models_in_pool(metadata: pd.DataFrame | None, pool: str) -> list[str]:
    """Sorted models whose metadata ``pools`` field names ``pool``.

    Raises :class:`~selection.records.RecordsError` when there is no ``pools`` column or no model
    is in the pool.
    """
    metadata = index_metadata(metadata)
    if metadata is None or METADATA_POOLS not in metadata.columns:
        raise RecordsError(
            f"pool {pool!r}: no model metadata with a '{METADATA_POOLS}' column; pass the pool's "
            f"models explicitly or add a '{METADATA_POOLS}' column (';'-separated names) to the "
            "models CSV")
    members = [str(m) for m, v in metadata[METADATA_POOLS].items() if pool in pool_tags(v)]
    if not members:
        known = sorted({p for v in metadata[METADATA_POOLS].tolist() for p in pool_tags(v)})
        raise RecordsError(f"pool {pool!r}: no model lists it in '{METADATA_POOLS}'; pools "
                           f"present: {known}")
    return sorted(members)


def check_listed(source: object, key: str, listed: Sequence[str], models: Sequence[str],
                 what: str) -> None:
    """Every model a pool lists (``listed``, at ``key`` of ``source``) is one of ``models``;
    :class:`PoolError` naming the first that is not, e.g. ``vtab1k.yaml: key 'pools.small[2]':
    model 'x' is not one of this file's models``."""
    known = set(models)
    for i, m in enumerate(listed):
        if m not in known:
            raise PoolError(f"{source}: key '{key}[{i}]': model {m!r} is not {what}")


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


# ------------------------------------------------------------------------------------- rules
_OPS = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b, "<": lambda a, b: a < b, ">": lambda a, b: a > b}
_GRAMMAR = ("write clauses joined by 'and' / 'or': 'key OP value' (OP one of <= < >= > == !=), "
            "'key' or 'not key', e.g. 'params <= 24.0e6 and feature_dim <= 2048'")


def _parse_value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def parse_rule(text: str) -> list[list[tuple[str, str, float | str | None]]]:
    """A rule as alternatives of clauses ``(key, op, value)``; op ``has``/``not`` for the bare
    forms. ValueError naming the clause and the grammar."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty pool rule; {_GRAMMAR}")
    alternatives = []
    for alternative in text.split(" or "):
        clauses = []
        for clause in alternative.split(" and "):
            words = clause.split()
            if len(words) == 1:
                clauses.append((words[0], "has", None))
            elif len(words) == 2 and words[0] == "not":
                clauses.append((words[1], "not", None))
            elif len(words) == 3 and words[1] in _OPS:
                clauses.append((words[0], words[1], _parse_value(words[2])))
            else:
                raise ValueError(f"pool rule {text!r}: cannot read {clause.strip()!r}; {_GRAMMAR}")
        alternatives.append(clauses)
    return alternatives


def _present(value: object) -> bool:
    if value is None or value is False or value == "" or value == [] or value == ():
        return False
    return not (isinstance(value, float) and value != value)


def _clause(meta: Mapping[str, object], key: str, op: str, value) -> bool:
    have = meta.get(key)
    if op == "has":
        return _present(have)
    if op == "not":
        return not _present(have)
    if not _present(have):
        return False
    if isinstance(have, (list, tuple)):
        have = have[0] if len(have) == 1 else ",".join(map(str, have))
    if isinstance(value, float):
        try:
            return bool(_OPS[op](float(have), value))
        except (TypeError, ValueError):
            return False
    return bool(_OPS[op](str(have), value)) if op in ("==", "!=") else False


def rule_keys(rule: str) -> list[str]:
    """The metadata keys a rule reads, in order, each once."""
    keys = [key for clauses in parse_rule(rule) for key, _, _ in clauses]
    return list(dict.fromkeys(keys))


def check_rule_keys(source: object, key: str, rule: str, known: Sequence[str]) -> None:
    """Every key ``rule`` reads is one the models' metadata has (``known``); else a
    :class:`PoolError` naming the rule, the key and the keys that exist -- a misspelled key
    (``paramz <= 1.0e6``) would otherwise give a pool that silently matches no model."""
    for name in rule_keys(rule):
        if name not in known:
            raise PoolError(f"{source}: key '{key}': rule {rule!r} reads {name!r}, which no "
                            f"model's metadata has; keys that exist: {', '.join(sorted(known))}")


def rule_matches(rule: str, meta: Mapping[str, object]) -> bool:
    return any(all(_clause(meta, *c) for c in clauses) for clauses in parse_rule(rule))


def pool_members(models: Sequence[str], metadata: Mapping[str, Mapping[str, object]], *,
                 rule: str | None = None, listed: Sequence[str] = (),
                 within: Sequence[str] | None = None) -> list[str]:
    """The models of a pool definition, in the order of ``models``: those of ``within`` (default
    every model) that match ``rule``, together with the ``listed`` ones."""
    base = list(models) if within is None else [m for m in models if m in set(within)]
    chosen = {m for m in base if rule is not None and rule_matches(rule, metadata.get(m, {}))}
    chosen |= set(listed)
    return [m for m in models if m in chosen]
