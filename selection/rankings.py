"""How each kind of strategy ranks a task's pool: into ordered tie groups, best first.

:mod:`selection.strategies` registers them under their names; this module holds the rules:
the task-agnostic rule (decided among the models being ranked), a static metadata ranking, a
score table (a proxy, a prediction), the hybrid (a mixture of rankings where task-agnostic ties
at the top), the mean-accuracy oracles and random. Ties are tie groups, never name order
(:mod:`selection.outcomes` takes the expectation over their orders).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import pandas as pd

from selection.records import index_metadata
from selection.regret import ZERO
from whichmodel.errors import InputError

#: the task-agnostic rule's default approximate-tie tolerance (0.5 accuracy points).
TIE_TOLERANCE = 0.005
RANDOM = "random"
TASK_AGNOSTIC = "task_agnostic"

Groups = list[list[str]]


@runtime_checkable
class Strategy(Protocol):
    """Ranks a task's pool into ordered tie groups, best first."""

    name: str

    def rank_groups(self, task: str, models: list[str]) -> Groups:
        """Every model of ``models`` exactly once, in ordered groups of tied models."""
        ...


def ranking_mixture(strategy: Strategy, task: str, models: list[str]
                    ) -> list[tuple[float, Groups]]:
    """The rankings a strategy draws from, with their probabilities: its ``rank_mixture`` where
    it randomises beyond ties (a hybrid whose task-agnostic top is tied), else its one ranking."""
    if hasattr(strategy, "rank_mixture"):
        return strategy.rank_mixture(task, models)
    return [(1.0, strategy.rank_groups(task, models))]


def flat(groups: Groups) -> list[str]:
    """A ranking for display: the groups in order, tied models by name."""
    return [m for group in groups for m in sorted(group)]


def score_value(value: object) -> float | None:
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


def by_params(models: Sequence[str], params: Mapping[str, float | None]) -> Groups:
    """More backbone parameters first; equal counts tie; unknown counts tie last."""
    return groups_by_value(list(models), [params.get(m) for m in models])


def approximate_groups(models: Sequence[str], value: Mapping[str, float], tolerance: float
                       ) -> list[list[str]]:
    """Greedy groups from the highest value: a model joins the open group when its value is
    within ``tolerance`` of the group's first, else opens a new one (tied values go together)."""
    ranked = sorted(models, key=lambda m: -value[m])
    out: list[list[str]] = []
    first = None
    for m in ranked:
        if out and first - value[m] <= tolerance + ZERO:
            out[-1].append(m)
        else:
            out.append([m])
            first = value[m]
    return out


@dataclass(frozen=True, eq=False)
class TaskAgnosticStrategy:
    """The paper's task-agnostic rule (module docstring), decided among the models ranked."""

    metadata: pd.DataFrame | None = None
    tie_tolerance: float = TIE_TOLERANCE
    name: str = TASK_AGNOSTIC
    _meta: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.tie_tolerance >= 0):
            raise InputError(f"tie_tolerance={self.tie_tolerance!r} must be >= 0 (0: strict order)")
        meta = index_metadata(self.metadata)
        rows = {} if meta is None else {str(m): row for m, row in meta.iterrows()}

        def get(model: str, key: str) -> float | None:
            row = rows.get(model)
            return None if row is None or key not in row else score_value(row[key])

        object.__setattr__(self, "_meta", {k: {m: get(m, k) for m in rows}
                                           for k in ("imagenet_acc", "upstream_size", "params")})

    def rank_groups(self, task: str, models: list[str]) -> Groups:
        acc, size, params = (self._meta[k] for k in ("imagenet_acc", "upstream_size", "params"))
        with_acc = [m for m in models if acc.get(m) is not None]
        with_size = [m for m in models if m not in with_acc and size.get(m) is not None]
        rest = [m for m in models if m not in with_acc and m not in with_size]
        out: Groups = []
        for group in (approximate_groups(with_acc, acc, self.tie_tolerance)
                      + approximate_groups(with_size, size, 0.0)):
            out += by_params(group, params)
        return out + (by_params(rest, params) if rest else [])


@dataclass(frozen=True, eq=False)
class StaticStrategy:
    """Every task ranked by one metadata column, higher first; equal values tie; models without
    a value tie last."""

    name: str
    values: Mapping[str, float | None]

    def rank_groups(self, task: str, models: list[str]) -> Groups:
        return groups_by_value(list(models), [self.values.get(m) for m in models])


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
        return groups_by_value(models, [score_value(v) for v in values.to_numpy(dtype=float)])


@dataclass(frozen=True, eq=False)
class HybridStrategy:
    """Top-1 task-agnostic model, then the proxy's ranking of the rest (B = 1 is task-agnostic).
    Where task-agnostic ties at the top, the first pick is uniformly random among the tied
    models: a mixture of one ranking per tied model (:meth:`rank_mixture`)."""

    name: str
    agnostic: TaskAgnosticStrategy
    proxy: ScoreStrategy

    def _after(self, task: str, models: list[str], first: str) -> Groups:
        rest = [m for m in models if m != first]
        return [[first], *(self.proxy.rank_groups(task, rest) if rest else [])]

    def rank_mixture(self, task: str, models: list[str]) -> list[tuple[float, Groups]]:
        if not models:
            return [(1.0, [])]
        top = self.agnostic.rank_groups(task, models)[0]
        return [(1.0 / len(top), self._after(task, models, m)) for m in sorted(top)]

    def rank_groups(self, task: str, models: list[str]) -> Groups:
        """For display: the tied top (one model, unless task-agnostic ties), then the proxy's
        order of the rest."""
        if not models:
            return []
        top = self.agnostic.rank_groups(task, models)[0]
        if len(top) == 1:
            return self._after(task, models, top[0])
        rest = [m for m in models if m not in top]
        return [sorted(top), *(self.proxy.rank_groups(task, rest) if rest else [])]


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
        return groups_by_value(list(models), [score_value(v) for v in means.to_numpy(dtype=float)])


@dataclass(frozen=True, eq=False)
class RandomStrategy:
    """Uniformly random size-B subsets: the whole pool is one tie group."""

    name: str = RANDOM

    def rank_groups(self, task: str, models: list[str]) -> Groups:
        return [sorted(models)] if models else []
