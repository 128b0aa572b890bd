"""Model-search strategies: given a task and the pool's models, which to fine-tune first.

A strategy ranks the pool for a task (best first); with budget B it fine-tunes the top B.
Strategies come from a registry, like timm's ``create_model``::

    names = list_strategies(proxies)             # ["task_agnostic", *proxies, *hybrids, "oracle", "random"]
    names = list_strategies(proxies, predicted=["choicenet_v1"])   # ... *hybrids, "choicenet_v1", ...
    strategy = create_strategy("hybrid:proxy/linear", scores, metadata)
    strategy.rank("cifar100", ["vit_b16", "resnet50", ...])

``scores`` maps a metric to its pivot table (index model, columns task), as made by
:func:`selection.records.pivot_metric`, and includes ``finetune_test_acc``.

The strategies (Renggli et al. 2022, Sec. 3):

- ``task_agnostic`` -- upstream metadata only; the same order for every task.
- ``proxy/<name>`` -- task-aware: one proxy score on the task (linear probe, kNN, LogME ...).
- ``hybrid:proxy/<name>`` -- the top-1 task-agnostic model, then the proxy's order of the rest.
- ``choicenet_v1``, ``choicenet_v2`` (any name of a *predicted-accuracy* table in ``scores``) --
  meta-learned: rank by ChoiceNet's predicted fine-tune accuracy for the task, made by a net that
  never saw the task's results (leave-one-task-out, :mod:`lightning_modules.choicenet`);
- ``oracle`` -- the fine-tune test accuracy itself (a lower bound on regret: always 0).
- ``random`` -- not a ranking (``expected = True``): the report uses the exact expected regret
  of a uniformly random size-B subset (:func:`selection.regret.expected_random_regret`).

Ties are broken by model name, ascending, everywhere, so every ranking is deterministic; models
without a value rank after all that have one. Other strategies can be added with
:func:`register_strategy`, or logged as a ``proxy/...`` metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd

from selection.records import GROUND_TRUTH, PROXY_PREFIX, index_metadata

TASK_AGNOSTIC = "task_agnostic"
ORACLE = "oracle"
RANDOM = "random"
HYBRID_PREFIX = "hybrid:"
#: the meta-learned strategies; their score tables are predicted accuracies, not records.
CHOICENET_V1 = "choicenet_v1"
CHOICENET_V2 = "choicenet_v2"
#: task-agnostic ranking keys, compared lexicographically, each descending (higher is better).
TASK_AGNOSTIC_KEYS: tuple[str, ...] = ("imagenet_acc", "upstream_size", "params")

Scores = Mapping[str, pd.DataFrame]
Factory = Callable[[Scores, "pd.DataFrame | None"], "Strategy"]


@runtime_checkable
class Strategy(Protocol):
    """Ranks a task's pool, best first. ``expected`` strategies (random) are not rankings."""

    name: str

    def rank(self, task: str, models: list[str]) -> list[str]:
        """Every model of ``models`` exactly once, best first."""
        ...


class UnknownStrategyError(KeyError):
    """No strategy of that name; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


def _score(value: object) -> float | None:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


@dataclass(frozen=True, eq=False)
class TaskAgnosticStrategy:
    """Rank by upstream metadata: ``imagenet_acc``, then ``upstream_size``, then ``params``.

    Compared lexicographically, each descending; a model missing a key ranks after every model
    that has it (at that key); remaining ties by name. The order ignores the task. If there is no
    metadata, or it has none of the keys, models are ranked by name alone -- a deterministic but
    arbitrary order, the weakest baseline.
    """

    metadata: pd.DataFrame | None = None
    keys: tuple[str, ...] = TASK_AGNOSTIC_KEYS
    name: str = TASK_AGNOSTIC
    expected: bool = False
    _values: dict = field(init=False, repr=False, compare=False)
    _n_keys: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        meta = index_metadata(self.metadata)
        present = [k for k in self.keys if meta is not None and k in meta.columns]
        values: dict[str, tuple[float | None, ...]] = {}
        if meta is not None:
            for model, row in meta.iterrows():
                values[str(model)] = tuple(_score(row[k]) for k in present)
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_n_keys", len(present))

    def _key(self, model: str) -> tuple:
        parts: list[object] = []
        for v in self._values.get(model, (None,) * self._n_keys):
            parts.extend((1, 0.0) if v is None else (0, -v))
        return (*parts, model)

    def rank(self, task: str, models: list[str]) -> list[str]:
        return sorted(models, key=self._key)


@dataclass(frozen=True, eq=False)
class ScoreStrategy:
    """Rank by one score table (a proxy, or the ground truth for the oracle) on the task.

    Descending; models without a finite value for the task rank after all that have one (and a
    task absent from the table ranks every model by name); ties by name.
    """

    name: str
    table: pd.DataFrame
    expected: bool = False

    def rank(self, task: str, models: list[str]) -> list[str]:
        models = list(models)
        if not models or task not in self.table.columns:
            return sorted(models)
        # one reindex per task and a lexsort: (has no value, -score, name), all ascending
        values = pd.to_numeric(self.table[task], errors="coerce").reindex(models).to_numpy(dtype=float)
        missing = ~np.isfinite(values)
        order = np.lexsort((np.array(models, dtype=str), np.where(missing, 0.0, -values), missing))
        return [models[i] for i in order]


@dataclass(frozen=True, eq=False)
class HybridStrategy:
    """Top-1 task-agnostic model, then the proxy's ranking of the rest (B = 1 is task-agnostic)."""

    name: str
    agnostic: TaskAgnosticStrategy
    proxy: ScoreStrategy
    expected: bool = False

    def rank(self, task: str, models: list[str]) -> list[str]:
        if not models:
            return []
        first = self.agnostic.rank(task, models)[0]
        return [first, *self.proxy.rank(task, [m for m in models if m != first])]


@dataclass(frozen=True, eq=False)
class RandomStrategy:
    """Uniformly random size-B subsets. Not a ranking: ``expected = True`` tells the report to use
    the exact expected regret (:func:`selection.regret.expected_random_regret`)."""

    name: str = RANDOM
    expected: bool = True

    def rank(self, task: str, models: list[str]) -> list[str]:
        raise TypeError(
            "the random strategy has no ranking; score it with "
            "selection.regret.expected_random_regret(accuracies, budget)"
        )


_REGISTRY: dict[str, Factory] = {}


def register_strategy(name: str, factory: Factory) -> None:
    """Add a named strategy: ``factory(scores, metadata) -> Strategy``.

    Registered names are listed by :func:`list_strategies` after the hybrids.
    """
    reserved = {TASK_AGNOSTIC, ORACLE, RANDOM}
    if name in reserved or name.startswith((PROXY_PREFIX, HYBRID_PREFIX)):
        raise ValueError(f"register_strategy: {name!r} is built in or reserved; choose another name")
    if name in _REGISTRY:
        raise ValueError(f"register_strategy: {name!r} is already registered")
    _REGISTRY[name] = factory


def list_strategies(proxies: Sequence[str], predicted: Sequence[str] = ()) -> list[str]:
    """Strategy names for these proxy metrics and predicted-accuracy tables (e.g. ChoiceNet's):
    ``["task_agnostic", *proxies, *("hybrid:" + p), *predicted, *registered, "oracle", "random"]``."""
    proxies = list(proxies)
    return [TASK_AGNOSTIC, *proxies, *(HYBRID_PREFIX + p for p in proxies), *predicted, *_REGISTRY,
            ORACLE, RANDOM]


def check_predicted_name(name: object) -> str:
    """A predicted-accuracy table's name, which becomes its strategy's name: a non-empty string
    that is no built-in or registered strategy, proxy, hybrid or the ground truth."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"predictions: name {name!r} must be a non-empty string without surrounding "
                         "whitespace, e.g. 'choicenet_v1'")
    if name in {TASK_AGNOSTIC, ORACLE, RANDOM, GROUND_TRUTH} or name in _REGISTRY or \
            name.startswith((PROXY_PREFIX, HYBRID_PREFIX)):
        raise ValueError(f"predictions: name {name!r} is a built-in, registered or proxy strategy "
                         f"name; call predicted accuracies e.g. {CHOICENET_V1!r} or {CHOICENET_V2!r}")
    return name


def _table(scores: Scores, metric: str, wanted_by: str) -> pd.DataFrame:
    if metric not in scores:
        raise UnknownStrategyError(
            f"strategy {wanted_by!r} needs scores for metric {metric!r}; scores given: {sorted(scores)}"
        )
    return scores[metric]


def create_strategy(name: str, scores: Scores, metadata: pd.DataFrame | None = None) -> Strategy:
    """Build the strategy called ``name``.

    ``scores``: metric -> pivot table (index model, columns task), including ``finetune_test_acc``
    for ``oracle`` and any predicted-accuracy table (``choicenet_v1`` ...) under its strategy's
    name; ``metadata``: model metadata for ``task_agnostic`` and hybrids (or None).
    Raises :class:`UnknownStrategyError` (a KeyError) listing the known names.
    """
    if name == TASK_AGNOSTIC:
        return TaskAgnosticStrategy(metadata)
    if name == ORACLE:
        return ScoreStrategy(ORACLE, _table(scores, GROUND_TRUTH, name))
    if name == RANDOM:
        return RandomStrategy()
    if name in _REGISTRY:
        return _REGISTRY[name](scores, metadata)
    proxies = sorted(m for m in scores if m.startswith(PROXY_PREFIX))
    if name.startswith(HYBRID_PREFIX) and name[len(HYBRID_PREFIX):] in proxies:
        proxy = name[len(HYBRID_PREFIX):]
        return HybridStrategy(name, TaskAgnosticStrategy(metadata), ScoreStrategy(proxy, scores[proxy]))
    if name in proxies:
        return ScoreStrategy(name, scores[name])
    predicted = sorted(m for m in scores if m != GROUND_TRUTH and not m.startswith(PROXY_PREFIX))
    if name in predicted:
        return ScoreStrategy(name, scores[name])
    hint = ""
    if name in (CHOICENET_V1, CHOICENET_V2):
        hint = (f"; {name!r} ranks by ChoiceNet's predicted accuracy: pass "
                f"predictions={{{name!r}: table}} (lightning_modules.choicenet.predict_choicenet)")
    raise UnknownStrategyError(
        f"unknown strategy {name!r}; known strategies for these scores: "
        f"{list_strategies(proxies, predicted)}{hint}"
    )
