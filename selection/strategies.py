"""Model-search strategies: given a task and the pool's models, which to fine-tune first.

A strategy ranks the pool for a task into ordered *tie groups* (best first; models a strategy
cannot tell apart share a group); with budget B it fine-tunes the first B models, a random subset
of the group that B cuts (:mod:`selection.outcomes` scores every order of the tied models, never
an alphabetical one). Strategies register themselves, like timm's ``create_model``::

    names = list_strategies(proxies, predicted)   # ["task_agnostic", *proxies, *hybrids, ...]
    strategy = create_strategy("hybrid:proxy/linear", scores, metadata)
    strategy.rank_groups("cifar100", ["vit_b16", "resnet50", ...])   # [["resnet50"], [...], ...]

``scores`` maps a metric to its pivot table (index model, columns task), as made by
:func:`selection.records.pivot_metric`, and includes ``finetune_test_acc``.

The strategies (Renggli et al. 2022, Sec. 2-5 and Appendix G):

- ``task_agnostic`` -- upstream metadata only, the same order for every task: highest ImageNet
  accuracy, otherwise largest upstream data; on an *approximate* tie, more parameters. Sorted by
  accuracy, each model joins the open group if its accuracy is within ``tie_tolerance`` (0.005 by
  default, 0.5 points) of the group's first, else opens a new one; inside a group more backbone
  parameters first, then name. Models without an accuracy follow, by upstream size the same way.
- ``proxy/<name>`` -- task-aware: one proxy score on the task (linear probe, kNN, LogME ...); a
  NaN score is no score (the model ranks after all that have one).
- ``hybrid:proxy/<name>`` -- the top-1 task-agnostic model, then the proxy's order of the rest.
- ``task_agnostic_oracle`` -- by mean fine-tune accuracy over all tasks of the table: the
  paper's Oracle of Appendix G and Figure 7; not practical, it sees the task's own results.
  ``task_agnostic_oracle_loto`` -- by the mean over the *other* tasks (practical).
- any *predicted-accuracy* table in ``scores`` (``choicenet_v1``, ``nearest_task`` ...) --
  meta-learned: rank by a prediction made without the task's results (leave-one-task-out).
- ``per_task_best`` -- the task's fine-tune accuracy itself (regret 0; a bound).
- ``random`` -- one tie group of the whole pool: the exact expectation over random subsets.

Other strategies register with :func:`register_strategy`, or are logged as a ``proxy/...`` metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import pandas as pd

from selection.learners import (
    CHOICENET_RECORDS,
    ENSEMBLE_ALL,
    ENSEMBLE_PREFIX,
    ensemble_proxies,
    ensemble_table,
    records_learner_table,
)
from selection.records import GROUND_TRUTH, PROXY_PREFIX, index_metadata
from selection.regret import ZERO
from whichmodel.errors import InputError, WhichModelError
from whichmodel.registry import Registry

TASK_AGNOSTIC = "task_agnostic"
TASK_AGNOSTIC_ORACLE = "task_agnostic_oracle"
TASK_AGNOSTIC_ORACLE_LOTO = "task_agnostic_oracle_loto"
PER_TASK_BEST = "per_task_best"
RANDOM = "random"
HYBRID_PREFIX = "hybrid:"
#: the meta-learned strategies; their score tables are predicted accuracies, not records.
CHOICENET_V1 = "choicenet_v1"
CHOICENET_V2 = "choicenet_v2"
#: the task-agnostic rule's default approximate-tie tolerance (0.5 accuracy points).
TIE_TOLERANCE = 0.005

Scores = Mapping[str, pd.DataFrame]
Groups = list[list[str]]


@runtime_checkable
class Strategy(Protocol):
    """Ranks a task's pool into ordered tie groups, best first."""

    name: str

    def rank_groups(self, task: str, models: list[str]) -> Groups:
        """Every model of ``models`` exactly once, in ordered groups of tied models."""
        ...


def flat(groups: Groups) -> list[str]:
    """A ranking for display: the groups in order, tied models by name."""
    return [m for group in groups for m in sorted(group)]


class UnknownStrategyError(WhichModelError, KeyError):
    """No strategy of that name; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


def _score(value: object) -> float | None:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def groups_by_value(models: Sequence[str], values: Sequence[float | None]) -> Groups:
    """Models grouped by equal value, highest first; models without a value last, tied."""
    known: dict[float, list[str]] = {}
    missing = []
    for m, v in zip(models, values):
        if v is None:
            missing.append(m)
        else:
            known.setdefault(v, []).append(m)
    groups = [sorted(known[v]) for v in sorted(known, reverse=True)]
    return groups + ([sorted(missing)] if missing else [])


@dataclass(frozen=True, eq=False)
class TaskAgnosticStrategy:
    """The paper's task-agnostic rule (module docstring); one model per group (the rule orders
    every model: accuracy group, then parameters, then name)."""

    metadata: pd.DataFrame | None = None
    tie_tolerance: float = TIE_TOLERANCE
    name: str = TASK_AGNOSTIC
    _order: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.tie_tolerance >= 0):
            raise InputError(f"tie_tolerance={self.tie_tolerance!r} must be >= 0 (0: strict order)")
        meta = index_metadata(self.metadata)
        rows = {} if meta is None else {str(m): row for m, row in meta.iterrows()}

        def get(model: str, key: str) -> float | None:
            row = rows.get(model)
            return None if row is None or key not in row else _score(row[key])

        with_acc = [m for m in rows if get(m, "imagenet_acc") is not None]
        with_size = [m for m in rows if m not in with_acc and get(m, "upstream_size") is not None]
        rest = [m for m in rows if m not in with_acc and m not in with_size]
        order = (self._approximate(with_acc, "imagenet_acc", get, self.tie_tolerance)
                 + self._approximate(with_size, "upstream_size", get, 0.0)
                 + sorted(rest, key=lambda m: (-(get(m, "params") or 0.0), m)))
        object.__setattr__(self, "_order", {m: i for i, m in enumerate(order)})

    @staticmethod
    def _approximate(models: list[str], key: str, get, tolerance: float) -> list[str]:
        """Greedy groups from the highest value (within ``tolerance`` of the group's first),
        more parameters first inside a group, then name."""
        ranked = sorted(models, key=lambda m: (-get(m, key), m))
        out, group, first = [], [], None
        for m in ranked:
            value = get(m, key)
            if group and first - value > tolerance + ZERO:
                out += sorted(group, key=lambda x: (-(get(x, "params") or 0.0), x))
                group = []
            if not group:
                first = value
            group.append(m)
        return out + sorted(group, key=lambda x: (-(get(x, "params") or 0.0), x))

    def rank_groups(self, task: str, models: list[str]) -> Groups:
        unknown = [m for m in models if m not in self._order]
        known = sorted((m for m in models if m in self._order), key=self._order.__getitem__)
        return [[m] for m in known] + ([sorted(unknown)] if unknown else [])


@dataclass(frozen=True, eq=False)
class ScoreStrategy:
    """Rank by one score table (a proxy, a prediction, an accuracy) on the task, highest first;
    equal scores tie, models without a finite score tie last."""

    name: str
    table: pd.DataFrame

    def rank_groups(self, task: str, models: list[str]) -> Groups:
        models = list(models)
        if not models:
            return []
        if task not in self.table.columns:
            return [sorted(models)]
        values = pd.to_numeric(self.table[task], errors="coerce").reindex(models)
        return groups_by_value(models, [_score(v) for v in values.to_numpy(dtype=float)])


@dataclass(frozen=True, eq=False)
class HybridStrategy:
    """Top-1 task-agnostic model, then the proxy's ranking of the rest (B = 1 is task-agnostic)."""

    name: str
    agnostic: TaskAgnosticStrategy
    proxy: ScoreStrategy

    def rank_groups(self, task: str, models: list[str]) -> Groups:
        if not models:
            return []
        first = self.agnostic.rank_groups(task, models)[0]
        if len(first) > 1:  # no metadata to choose by: the whole pool is one group
            return self.proxy.rank_groups(task, models)
        rest = [m for m in models if m != first[0]]
        return [first, *(self.proxy.rank_groups(task, rest) if rest else [])]


@dataclass(frozen=True, eq=False)
class MeanAccuracyStrategy:
    """The task-agnostic oracles: rank by mean fine-tune accuracy over all tasks of the table, or
    (``leave_task_out``) over every task but the one ranked. Missing pairs are left out of the
    mean; a model with no other result ties last."""

    name: str
    truth: pd.DataFrame
    leave_task_out: bool = False

    def rank_groups(self, task: str, models: list[str]) -> Groups:
        table = self.truth.reindex(index=list(models))
        if self.leave_task_out and task in table.columns:
            table = table.drop(columns=[task])
        means = table.apply(pd.to_numeric, errors="coerce").mean(axis=1, skipna=True)
        return groups_by_value(list(models), [_score(v) for v in means.to_numpy(dtype=float)])


@dataclass(frozen=True, eq=False)
class RandomStrategy:
    """Uniformly random size-B subsets: the whole pool is one tie group."""

    name: str = RANDOM

    def rank_groups(self, task: str, models: list[str]) -> Groups:
        return [sorted(models)] if models else []


# ------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class StrategyContext:
    """What a strategy factory may read: the score tables, the model metadata and settings.

    ``scores`` maps a metric to its pivot table (index model, columns task): proxy tables
    (``proxy/...``), the ground truth ``finetune_test_acc`` and predicted-accuracy tables
    (``choicenet_v1``, ``nearest_task`` ...); ``name`` is the strategy asked for (a family's
    factory reads it); ``tie_tolerance`` is the task-agnostic rule's.
    """

    name: str
    scores: Scores
    metadata: pd.DataFrame | None = None
    tie_tolerance: float = TIE_TOLERANCE

    def table(self, metric: str) -> pd.DataFrame:
        if metric not in self.scores:
            raise UnknownStrategyError(f"strategy {self.name!r} needs scores for metric {metric!r}; "
                                       f"scores given: {sorted(self.scores)}")
        return self.scores[metric]

    def agnostic(self) -> TaskAgnosticStrategy:
        return TaskAgnosticStrategy(self.metadata, self.tie_tolerance)


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy, or a family of them (``offers`` lists its names).

    ``offers(proxies, predicted)`` gives the names a family provides for these proxy metrics and
    predicted tables (None: the spec's own name only); ``uses_task_results``: it reads the task's
    own fine-tune results (a bound for the report, not a strategy for a new task); ``order``
    places it in :func:`list_strategies` (built-ins 0-40 and 90+, others 50 by default).
    """

    name: str
    factory: Callable[[StrategyContext], Strategy]
    offers: Callable[[Sequence[str], Sequence[str]], list[str]] | None = None
    uses_task_results: bool = False
    order: int = 50
    prefix: str | None = None  # a family that also builds any name with this prefix

    def names(self, proxies: Sequence[str], predicted: Sequence[str]) -> list[str]:
        return [self.name] if self.offers is None else list(self.offers(proxies, predicted))


STRATEGIES: Registry[StrategySpec] = Registry("strategy")


def register_strategy(name: str, factory: Callable[[StrategyContext], Strategy] | None = None, *,
                      offers: Callable[[Sequence[str], Sequence[str]], list[str]] | None = None,
                      uses_task_results: bool = False, order: int = 50,
                      prefix: str | None = None):
    """Register ``factory(ctx) -> Strategy`` as ``name`` (or, with ``offers``, as a family named
    ``name``); a decorator when ``factory`` is omitted. Names of the built-in strategies and
    families are refused."""
    taken = {spec.name for _, spec in STRATEGIES.items()} | {GROUND_TRUTH}
    if name in taken or (offers is None and name.startswith((PROXY_PREFIX, HYBRID_PREFIX))):
        raise ValueError(f"register_strategy: {name!r} is built in or reserved; choose another name")

    def add(fn: Callable[[StrategyContext], Strategy]) -> Callable[[StrategyContext], Strategy]:
        STRATEGIES.register(name, StrategySpec(name, fn, offers, uses_task_results, order,
                                               prefix))
        return fn

    return add if factory is None else add(factory)


def _specs() -> list[StrategySpec]:
    return sorted((spec for _, spec in STRATEGIES.items()), key=lambda spec: spec.order)


def list_strategies(proxies: Sequence[str], predicted: Sequence[str] = ()) -> list[str]:
    """Strategy names for these proxy metrics and predicted-accuracy tables, in report order:
    task-agnostic, proxies, hybrids, the oracles, predicted tables, registered others,
    ``per_task_best``, ``random``."""
    return [n for spec in _specs() for n in spec.names(list(proxies), list(predicted))]


def get_strategy_spec(name: str, proxies: Sequence[str] = (), predicted: Sequence[str] = ()
                      ) -> StrategySpec:
    """The spec that provides ``name`` for these proxies and predicted tables."""
    for spec in _specs():
        if name in spec.names(list(proxies), list(predicted)) or (
                spec.prefix and name.startswith(spec.prefix)):
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


def proxies_of(scores: Scores) -> list[str]:
    return sorted(m for m in scores if m.startswith(PROXY_PREFIX))


def predicted_of(scores: Scores) -> list[str]:
    return sorted(m for m in scores if m != GROUND_TRUTH and not m.startswith(PROXY_PREFIX))


def create_strategy(name: str, scores: Scores, metadata: pd.DataFrame | None = None, *,
                    tie_tolerance: float = TIE_TOLERANCE) -> Strategy:
    """Build the strategy called ``name``.

    ``scores``: metric -> pivot table (index model, columns task), including ``finetune_test_acc``
    for the oracles and ``per_task_best`` and any predicted-accuracy table (``choicenet_v1`` ...)
    under its strategy's name; ``metadata``: model metadata for ``task_agnostic`` and hybrids (or
    None). Raises :class:`UnknownStrategyError` (a KeyError) listing the known names.
    """
    proxies, predicted = proxies_of(scores), predicted_of(scores)
    try:
        spec = get_strategy_spec(name, proxies, predicted)
    except UnknownStrategyError:
        hint = ""
        if name in (CHOICENET_V1, CHOICENET_V2):
            hint = (f"; {name!r} ranks by ChoiceNet's predicted accuracy: pass "
                    f"predictions={{{name!r}: table}} (lightning_modules.choicenet.predict_choicenet)")
        raise UnknownStrategyError(f"unknown strategy {name!r}; known strategies for these "
                                   f"scores: {list_strategies(proxies, predicted)}{hint}") from None
    return spec.factory(StrategyContext(name, scores, metadata, tie_tolerance))


# ------------------------------------------------------------------------ the built-in strategies
@register_strategy(TASK_AGNOSTIC, order=0)
def _task_agnostic(ctx: StrategyContext) -> Strategy:
    """ImageNet accuracy (approximate ties: more parameters), else upstream data size."""
    return ctx.agnostic()


@register_strategy("proxy/<name>", offers=lambda proxies, predicted: list(proxies), order=10)
def _proxy(ctx: StrategyContext) -> Strategy:
    """One proxy score on the task, best first."""
    return ScoreStrategy(ctx.name, ctx.table(ctx.name))


@register_strategy("hybrid:<proxy>", order=20,
                   offers=lambda proxies, predicted: [HYBRID_PREFIX + p for p in proxies])
def _hybrid(ctx: StrategyContext) -> Strategy:
    """The top-1 task-agnostic model, then the proxy's order of the rest."""
    proxy = ctx.name[len(HYBRID_PREFIX):]
    return HybridStrategy(ctx.name, ctx.agnostic(), ScoreStrategy(proxy, ctx.table(proxy)))


@register_strategy(TASK_AGNOSTIC_ORACLE, order=30, uses_task_results=True)
def _task_agnostic_oracle(ctx: StrategyContext) -> Strategy:
    """Mean fine-tune accuracy over all tasks (the paper's Oracle; it sees the task)."""
    return MeanAccuracyStrategy(TASK_AGNOSTIC_ORACLE, ctx.table(GROUND_TRUTH))


@register_strategy(TASK_AGNOSTIC_ORACLE_LOTO, order=31)
def _task_agnostic_oracle_loto(ctx: StrategyContext) -> Strategy:
    """Mean fine-tune accuracy over the other tasks (leave-one-task-out: practical)."""
    return MeanAccuracyStrategy(TASK_AGNOSTIC_ORACLE_LOTO, ctx.table(GROUND_TRUTH), True)


@register_strategy("<predicted table>", offers=lambda proxies, predicted: list(predicted),
                   order=40)
def _predicted(ctx: StrategyContext) -> Strategy:
    """A prediction made without the task's results (ChoiceNet, nearest task), best first."""
    return ScoreStrategy(ctx.name, ctx.table(ctx.name))


@register_strategy("ensemble:<proxies>", order=45, prefix=ENSEMBLE_PREFIX,
                   offers=lambda proxies, predicted: [ENSEMBLE_ALL] if len(proxies) > 1 else [])
def _ensemble(ctx: StrategyContext) -> Strategy:
    """Mean of the proxies' within-task z-scores (all, or ``ensemble:knn+logme``)."""
    try:
        proxies = ensemble_proxies(ctx.name, proxies_of(ctx.scores))
    except KeyError as exc:
        raise UnknownStrategyError(exc.args[0]) from None
    return ScoreStrategy(ctx.name, ensemble_table([ctx.table(p) for p in proxies]))


@register_strategy(CHOICENET_RECORDS, order=46,
                   offers=lambda proxies, predicted: [CHOICENET_RECORDS] if proxies else [])
def _choicenet_records(ctx: StrategyContext) -> Strategy:
    """Ridge on within-task proxy z-scores and the model's mean accuracy on the other tasks,
    fitted to within-task accuracy, leave-one-task-out (records only, no embeddings)."""
    proxies = proxies_of(ctx.scores)
    return ScoreStrategy(CHOICENET_RECORDS, records_learner_table(
        [ctx.table(p) for p in proxies], ctx.table(GROUND_TRUTH)))


@register_strategy(PER_TASK_BEST, order=90, uses_task_results=True)
def _per_task_best(ctx: StrategyContext) -> Strategy:
    """The task's fine-tune test accuracy itself: regret 0 (a bound)."""
    return ScoreStrategy(PER_TASK_BEST, ctx.table(GROUND_TRUTH))


@register_strategy(RANDOM, order=99)
def _random(ctx: StrategyContext) -> Strategy:
    """Uniformly random size-B subsets, scored by their exact expectation."""
    return RandomStrategy()
