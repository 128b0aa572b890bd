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

- ``task_agnostic`` -- upstream metadata only: highest ImageNet accuracy, otherwise largest
  upstream data; on an *approximate* tie, more parameters. Among the models being ranked (the
  pool: the groups depend on who is in it), sorted by accuracy, each model joins the open group
  if its accuracy is within ``tie_tolerance`` (0.005 by default, 0.5 points) of the group's
  first, else opens a new one; inside a group more backbone parameters first. Models without an
  accuracy follow, by upstream size the same way (exact ties only), then the rest by parameters.
  Models equal in all of it (or whose parameters are unknown) are a tie group, never ordered by
  name.
- ``static:<column>`` -- every task ranked by one metadata column (``params``, ``imagenet_acc``,
  ``feature_dim``, ``upstream_size``), higher first, equal values tied: the baselines a proxy must
  beat (a fixed ranking by model size beats most published transferability metrics on the
  standard 11 x 11 table; Singh, Hess, Vanschoren, ICLR 2026).
- ``proxy/<name>`` -- task-aware: one proxy score on the task (linear probe, kNN, LogME ...); a
  NaN score is no score (the model ranks after all that have one).
- ``hybrid:proxy/<name>`` (and ``hybrid:nearest_task``) -- the top-1 task-agnostic model, then
  the proxy's order of the rest; where task-agnostic ties at the top (no metadata: the whole
  pool), the first pick is a uniformly random one of the tied models (a mixture of rankings).
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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from selection.learners import (
    CHOICENET_RECORDS,
    ENSEMBLE_ALL,
    ENSEMBLE_PREFIX,
    ensemble_proxies,
    ensemble_table,
    records_learner_table,
)
from selection.nearest_task import NEAREST_TASK
from selection.rankings import (
    RANDOM,
    TASK_AGNOSTIC,
    TIE_TOLERANCE,
    HybridStrategy,
    MeanAccuracyStrategy,
    RandomStrategy,
    ScoreStrategy,
    StaticStrategy,
    Strategy,
    TaskAgnosticStrategy,
    score_value,
)
from selection.records import GROUND_TRUTH, PROXY_PREFIX, index_metadata
from whichmodel.errors import WhichModelError
from whichmodel.registry import Registry

TASK_AGNOSTIC_ORACLE = "task_agnostic_oracle"
TASK_AGNOSTIC_ORACLE_LOTO = "task_agnostic_oracle_loto"
PER_TASK_BEST = "per_task_best"
HYBRID_PREFIX = "hybrid:"
STATIC_PREFIX = "static:"
#: metadata columns a static ranking may read (higher first)
STATIC_COLUMNS = ("params", "imagenet_acc", "feature_dim", "upstream_size")
#: the meta-learned strategies; their score tables are predicted accuracies, not records.
CHOICENET_V1 = "choicenet_v1"
CHOICENET_V2 = "choicenet_v2"

Scores = Mapping[str, pd.DataFrame]


class UnknownStrategyError(WhichModelError, KeyError):
    """No strategy of that name; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


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

    ``offers(proxies, predicted, columns)`` gives the names a family provides for these proxy
    metrics, predicted tables and metadata columns (None: the spec's own name only);
    ``uses_task_results``: it reads the task's own fine-tune results (a bound for the report,
    not a strategy for a new task); ``order`` places it in :func:`list_strategies` (built-ins
    0-40 and 90+, others 50 by default).
    """

    name: str
    factory: Callable[[StrategyContext], Strategy]
    offers: Callable[[Sequence[str], Sequence[str], Sequence[str]], list[str]] | None = None
    uses_task_results: bool = False
    order: int = 50
    prefix: str | None = None  # a family that also builds any name with this prefix

    def names(self, proxies: Sequence[str], predicted: Sequence[str],
              columns: Sequence[str] = ()) -> list[str]:
        return ([self.name] if self.offers is None
                else list(self.offers(proxies, predicted, columns)))


STRATEGIES: Registry[StrategySpec] = Registry("strategy")


def register_strategy(name: str, factory: Callable[[StrategyContext], Strategy] | None = None, *,
                      offers: Callable[[Sequence[str], Sequence[str], Sequence[str]], list[str]]
                      | None = None,
                      uses_task_results: bool = False, order: int = 50,
                      prefix: str | None = None):
    """Register ``factory(ctx) -> Strategy`` as ``name`` (or, with ``offers``, as a family named
    ``name``); a decorator when ``factory`` is omitted. Names of the built-in strategies and
    families are refused."""
    taken = {spec.name for _, spec in STRATEGIES.items()} | {GROUND_TRUTH}
    if name in taken or (offers is None and name.startswith((PROXY_PREFIX, HYBRID_PREFIX,
                                                              STATIC_PREFIX))):
        raise ValueError(f"register_strategy: {name!r} is built in or reserved; choose another name")

    def add(fn: Callable[[StrategyContext], Strategy]) -> Callable[[StrategyContext], Strategy]:
        STRATEGIES.register(name, StrategySpec(name, fn, offers, uses_task_results, order,
                                               prefix))
        return fn

    return add if factory is None else add(factory)


def _specs() -> list[StrategySpec]:
    return sorted((spec for _, spec in STRATEGIES.items()), key=lambda spec: spec.order)


def list_strategies(proxies: Sequence[str], predicted: Sequence[str] = (),
                    columns: Sequence[str] = ()) -> list[str]:
    """Strategy names for these proxy metrics, predicted-accuracy tables and metadata columns
    (``static:<column>``), in report order: task-agnostic, static rankings, proxies, hybrids,
    the oracles, predicted tables, registered others, ``per_task_best``, ``random``."""
    return [n for spec in _specs()
            for n in spec.names(list(proxies), list(predicted), list(columns))]


def get_strategy_spec(name: str, proxies: Sequence[str] = (), predicted: Sequence[str] = (),
                      columns: Sequence[str] = ()) -> StrategySpec:
    """The spec that provides ``name`` for these proxies, predicted tables and columns."""
    for spec in _specs():
        if name in spec.names(list(proxies), list(predicted), list(columns)) or (
                spec.prefix and name.startswith(spec.prefix)):
            return spec
    raise UnknownStrategyError(f"unknown strategy {name!r}; known strategies for these scores: "
                               f"{list_strategies(proxies, predicted, columns)}")


def check_predicted_name(name: object) -> str:
    """A predicted-accuracy table's name, which becomes its strategy's name: a non-empty string
    that is no built-in or registered strategy, proxy, hybrid or the ground truth."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"predictions: name {name!r} must be a non-empty string without surrounding "
                         "whitespace, e.g. 'choicenet_v1'")
    fixed = {spec.name for spec in _specs() if spec.offers is None}
    if name in fixed or name == GROUND_TRUTH or name.startswith((PROXY_PREFIX, HYBRID_PREFIX,
                                                                 STATIC_PREFIX)):
        raise ValueError(f"predictions: name {name!r} is a built-in, registered or proxy strategy "
                         f"name; call predicted accuracies e.g. {CHOICENET_V1!r} or {CHOICENET_V2!r}")
    return name


def proxies_of(scores: Scores) -> list[str]:
    return sorted(m for m in scores if m.startswith(PROXY_PREFIX))


def predicted_of(scores: Scores) -> list[str]:
    return sorted(m for m in scores if m != GROUND_TRUTH and not m.startswith(PROXY_PREFIX))


def metadata_columns(metadata: pd.DataFrame | None) -> list[str]:
    """The :data:`STATIC_COLUMNS` this metadata has a finite value of (a static ranking each)."""
    meta = index_metadata(metadata)
    if meta is None:
        return []
    return [c for c in STATIC_COLUMNS if c in meta.columns
            and pd.to_numeric(meta[c], errors="coerce").notna().any()]


def create_strategy(name: str, scores: Scores, metadata: pd.DataFrame | None = None, *,
                    tie_tolerance: float = TIE_TOLERANCE) -> Strategy:
    """Build the strategy called ``name``.

    ``scores``: metric -> pivot table (index model, columns task), including ``finetune_test_acc``
    for the oracles and ``per_task_best`` and any predicted-accuracy table (``choicenet_v1`` ...)
    under its strategy's name; ``metadata``: model metadata for ``task_agnostic`` and hybrids (or
    None). Raises :class:`UnknownStrategyError` (a KeyError) listing the known names.
    """
    proxies, predicted = proxies_of(scores), predicted_of(scores)
    columns = metadata_columns(metadata)
    try:
        spec = get_strategy_spec(name, proxies, predicted, columns)
    except UnknownStrategyError:
        hint = ""
        if name in (CHOICENET_V1, CHOICENET_V2):
            hint = (f"; {name!r} ranks by ChoiceNet's predicted accuracy: pass "
                    f"predictions={{{name!r}: table}} (lightning_modules.choicenet.predict_choicenet)")
        raise UnknownStrategyError(f"unknown strategy {name!r}; known strategies for these "
                                   f"scores: {list_strategies(proxies, predicted, columns)}{hint}"
                                   ) from None
    return spec.factory(StrategyContext(name, scores, metadata, tie_tolerance))


# ------------------------------------------------------------------------ the built-in strategies
@register_strategy(TASK_AGNOSTIC, order=0)
def _task_agnostic(ctx: StrategyContext) -> Strategy:
    """ImageNet accuracy (approximate ties: more parameters), else upstream data size."""
    return ctx.agnostic()


@register_strategy("static:<column>", order=5, prefix=STATIC_PREFIX,
                   offers=lambda proxies, predicted, columns: [STATIC_PREFIX + c for c in columns])
def _static(ctx: StrategyContext) -> Strategy:
    """Every task ranked by one metadata column, higher first (a baseline to beat)."""
    column = ctx.name[len(STATIC_PREFIX):]
    if column not in metadata_columns(ctx.metadata):
        raise UnknownStrategyError(
            f"strategy {ctx.name!r}: the model metadata has no {column!r} value to rank by; "
            f"static rankings here: {[STATIC_PREFIX + c for c in metadata_columns(ctx.metadata)]}")
    meta = index_metadata(ctx.metadata)
    values = pd.to_numeric(meta[column], errors="coerce")
    return StaticStrategy(ctx.name, {str(m): score_value(v) for m, v in values.items()})


@register_strategy("proxy/<name>", offers=lambda proxies, predicted, columns: list(proxies), order=10)
def _proxy(ctx: StrategyContext) -> Strategy:
    """One proxy score on the task, best first."""
    return ScoreStrategy(ctx.name, ctx.table(ctx.name))


@register_strategy("hybrid:<proxy>", order=20, offers=lambda proxies, predicted, columns: [
    HYBRID_PREFIX + p for p in [*proxies, *(n for n in predicted if n == NEAREST_TASK)]])
def _hybrid(ctx: StrategyContext) -> Strategy:
    """The top-1 task-agnostic model, then the proxy's (or the nearest task's) order of the
    rest."""
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


@register_strategy("<predicted table>", offers=lambda proxies, predicted, columns: list(predicted),
                   order=40)
def _predicted(ctx: StrategyContext) -> Strategy:
    """A prediction made without the task's results (ChoiceNet, nearest task), best first."""
    return ScoreStrategy(ctx.name, ctx.table(ctx.name))


@register_strategy("ensemble:<proxies>", order=45, prefix=ENSEMBLE_PREFIX,
                   offers=lambda proxies, predicted, columns: [ENSEMBLE_ALL] if len(proxies) > 1 else [])
def _ensemble(ctx: StrategyContext) -> Strategy:
    """Mean of the proxies' within-task z-scores (all, or ``ensemble:knn+logme``)."""
    try:
        proxies = ensemble_proxies(ctx.name, proxies_of(ctx.scores))
    except KeyError as exc:
        raise UnknownStrategyError(exc.args[0]) from None
    return ScoreStrategy(ctx.name, ensemble_table([ctx.table(p) for p in proxies]))


@register_strategy(CHOICENET_RECORDS, order=46,
                   offers=lambda proxies, predicted, columns: [CHOICENET_RECORDS] if proxies else [])
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
