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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from selection.records import GROUND_TRUTH, PROXY_PREFIX, index_metadata
from whichmodel.registry import Registry

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


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy factory may read: the score tables and the model metadata.

    ``scores`` maps a metric to its pivot table (index model, columns task): proxy tables
    (``proxy/...``), the ground truth ``finetune_test_acc`` and predicted-accuracy tables
    (``choicenet_v1`` ...); ``name`` is the strategy asked for (a family's factory reads it).
    """

    name: str
    scores: Scores
    metadata: pd.DataFrame | None = None

    def table(self, metric: str) -> pd.DataFrame:
        if metric not in self.scores:
            raise UnknownStrategyError(f"strategy {self.name!r} needs scores for metric {metric!r}; "
                                       f"scores given: {sorted(self.scores)}")
        return self.scores[metric]


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy, or a family of them (``offers`` lists its names).

    ``offers(proxies, predicted)`` gives the names a family provides for these proxy metrics and
    predicted tables (None: the spec's own name only); ``uses_task_results``: it reads the task's
    own fine-tune results (a bound, not a strategy anyone can use on a new task); ``order``
    places it in :func:`list_strategies` (built-ins 0-30 and 90+, others 50 by default).
    """

    name: str
    factory: Callable[[StrategyContext], Strategy]
    offers: Callable[[Sequence[str], Sequence[str]], list[str]] | None = None
    uses_task_results: bool = False
    order: int = 50

    def names(self, proxies: Sequence[str], predicted: Sequence[str]) -> list[str]:
        return [self.name] if self.offers is None else list(self.offers(proxies, predicted))


STRATEGIES: Registry[StrategySpec] = Registry("strategy")


def register_strategy(name: str, factory: Callable[[StrategyContext], Strategy] | None = None, *,
                      offers: Callable[[Sequence[str], Sequence[str]], list[str]] | None = None,
                      uses_task_results: bool = False, order: int = 50):
    """Register ``factory(ctx) -> Strategy`` as ``name`` (or, with ``offers``, as a family named
    ``name``); a decorator when ``factory`` is omitted. Names of the built-in strategies and
    families are refused."""
    taken = {spec.name for _, spec in STRATEGIES.items()} | {GROUND_TRUTH}
    if name in taken or (offers is None and name.startswith((PROXY_PREFIX, HYBRID_PREFIX))):
        raise ValueError(f"register_strategy: {name!r} is built in or reserved; choose another name")

    def add(fn: Callable[[StrategyContext], Strategy]) -> Callable[[StrategyContext], Strategy]:
        STRATEGIES.register(name, StrategySpec(name, fn, offers, uses_task_results, order))
        return fn

    return add if factory is None else add(factory)


def _specs() -> list[StrategySpec]:
    return sorted((spec for _, spec in STRATEGIES.items()), key=lambda spec: spec.order)


def list_strategies(proxies: Sequence[str], predicted: Sequence[str] = ()) -> list[str]:
    """Strategy names for these proxy metrics and predicted-accuracy tables (e.g. ChoiceNet's):
    ``["task_agnostic", *proxies, *("hybrid:" + p), *predicted, *registered, "oracle", "random"]``."""
    return [n for spec in _specs() for n in spec.names(list(proxies), list(predicted))]


def get_strategy_spec(name: str, proxies: Sequence[str] = (), predicted: Sequence[str] = ()
                      ) -> StrategySpec:
    """The spec that provides ``name`` for these proxies and predicted tables."""
    for spec in _specs():
        if name in spec.names(list(proxies), list(predicted)):
            return spec
    raise UnknownStrategyError(f"unknown strategy {name!r}; known strategies for these scores: "
                               f"{list_strategies(proxies, predicted)}")


def check_predicted_name(name: object) -> str:
    """A predicted-accuracy table's name, which becomes its strategy's name: a non-empty string
    that is no built-in or registered strategy, proxy, hybrid or the ground truth."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"predictions: name {name!r} must be a non-empty string without surrounding "
                         "whitespace, e.g. 'choicenet_v1'")
    fixed = {spec.name for spec in _specs() if spec.offers is None}
    if name in fixed or name == GROUND_TRUTH or name.startswith((PROXY_PREFIX, HYBRID_PREFIX)):
        raise ValueError(f"predictions: name {name!r} is a built-in, registered or proxy strategy "
                         f"name; call predicted accuracies e.g. {CHOICENET_V1!r} or {CHOICENET_V2!r}")
    return name


def _proxies_of(scores: Scores) -> list[str]:
    return sorted(m for m in scores if m.startswith(PROXY_PREFIX))


def _predicted_of(scores: Scores) -> list[str]:
    return sorted(m for m in scores if m != GROUND_TRUTH and not m.startswith(PROXY_PREFIX))


def create_strategy(name: str, scores: Scores, metadata: pd.DataFrame | None = None) -> Strategy:
    """Build the strategy called ``name``.

    ``scores``: metric -> pivot table (index model, columns task), including ``finetune_test_acc``
    for ``oracle`` and any predicted-accuracy table (``choicenet_v1`` ...) under its strategy's
    name; ``metadata``: model metadata for ``task_agnostic`` and hybrids (or None).
    Raises :class:`UnknownStrategyError` (a KeyError) listing the known names.
    """
    proxies, predicted = _proxies_of(scores), _predicted_of(scores)
    try:
        spec = get_strategy_spec(name, proxies, predicted)
    except UnknownStrategyError:
        hint = ""
        if name in (CHOICENET_V1, CHOICENET_V2):
            hint = (f"; {name!r} ranks by ChoiceNet's predicted accuracy: pass "
                    f"predictions={{{name!r}: table}} (lightning_modules.choicenet.predict_choicenet)")
        raise UnknownStrategyError(f"unknown strategy {name!r}; known strategies for these "
                                   f"scores: {list_strategies(proxies, predicted)}{hint}") from None
    return spec.factory(StrategyContext(name, scores, metadata))


# ------------------------------------------------------------------------ the built-in strategies
@register_strategy(TASK_AGNOSTIC, order=0)
def _task_agnostic(ctx: StrategyContext) -> Strategy:
    """Upstream metadata only: ImageNet accuracy, then upstream data size, then parameters."""
    return TaskAgnosticStrategy(ctx.metadata)


@register_strategy("proxy/<name>", offers=lambda proxies, predicted: list(proxies), order=10)
def _proxy(ctx: StrategyContext) -> Strategy:
    """One proxy score on the task, best first."""
    return ScoreStrategy(ctx.name, ctx.table(ctx.name))


@register_strategy("hybrid:<proxy>", order=20,
                   offers=lambda proxies, predicted: [HYBRID_PREFIX + p for p in proxies])
def _hybrid(ctx: StrategyContext) -> Strategy:
    """The top-1 task-agnostic model, then the proxy's order of the rest."""
    proxy = ctx.name[len(HYBRID_PREFIX):]
    return HybridStrategy(ctx.name, TaskAgnosticStrategy(ctx.metadata),
                          ScoreStrategy(proxy, ctx.table(proxy)))


@register_strategy("<predicted table>", offers=lambda proxies, predicted: list(predicted),
                   order=30)
def _predicted(ctx: StrategyContext) -> Strategy:
    """A predicted-accuracy table (ChoiceNet), leave-one-task-out, best first."""
    return ScoreStrategy(ctx.name, ctx.table(ctx.name))


@register_strategy(ORACLE, order=90, uses_task_results=True)
def _oracle(ctx: StrategyContext) -> Strategy:
    """The fine-tune test accuracy itself: regret 0 (a lower bound)."""
    return ScoreStrategy(ORACLE, ctx.table(GROUND_TRUTH))


@register_strategy(RANDOM, order=99)
def _random(ctx: StrategyContext) -> Strategy:
    """Uniformly random size-B subsets, scored by their exact expected regret."""
    return RandomStrategy()
