"""Score strategies on tasks: the outcome of every ranking at every budget, and its regrets.

For each strategy and task, :func:`score_strategies` ranks the task's pool into tie groups
(:mod:`selection.strategies`), turns them into the distribution of s(S) at every budget
(:mod:`selection.outcomes`) and takes the regrets' exact expectations. :func:`strategy_deltas`
compares strategies pairwise (the paper's Figures 5, 6 and 20-22), and :func:`appendix_g` gives
the smallest zero-regret budget over the whole pool (Appendix G).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from selection.outcomes import (
    Outcome,
    absolute,
    is_zero_regret,
    log_odds,
    log_odds_delta,
    ranking_outcomes,
    relative,
    relative_delta,
    zero_regret_budget,
)
from selection.strategies import Strategy, flat

_LISTED = 10  # model names quoted in an error message


@dataclass
class Scored:
    """One strategy on one task: its ordered tie groups and the outcome at every budget."""

    groups: list[list[str]]
    outcomes: list[Outcome]
    s_star: float
    relative: np.ndarray = field(init=False)
    absolute: np.ndarray = field(init=False)
    log_odds: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.relative = np.array([relative(self.s_star, o) for o in self.outcomes])
        self.absolute = np.array([absolute(self.s_star, o) for o in self.outcomes])
        self.log_odds = np.array([log_odds(self.s_star, o) for o in self.outcomes])

    def zero(self) -> list[bool]:
        return [is_zero_regret(self.s_star, o) for o in self.outcomes]


def score_strategies(built: Mapping[str, Strategy], tasks: Sequence[str],
                     task_pool: Mapping[str, list[str]], task_accs: Mapping[str, np.ndarray],
                     budgets: Sequence[int]) -> dict[str, dict[str, Scored]]:
    """``{strategy: {task: Scored}}``; a ranking that is not a partition of the task's pool is a
    ValueError naming the strategy and the task."""
    out: dict[str, dict[str, Scored]] = {}
    for name, strategy in built.items():
        out[name] = {}
        for task in tasks:
            pool_models, accs = task_pool[task], task_accs[task]
            groups = [list(g) for g in strategy.rank_groups(task, list(pool_models)) if g]
            ranked = [m for g in groups for m in g]
            if len(ranked) != len(pool_models) or set(ranked) != set(pool_models):
                raise ValueError(
                    f"strategy {name!r} ranked {flat(groups)[:_LISTED]} on task {task!r}; a ranking "
                    f"must hold every model of the task's pool {pool_models[:_LISTED]} exactly once")
            position = {m: i for i, m in enumerate(pool_models)}
            group_accs = [accs[[position[m] for m in g]] for g in groups]
            out[name][task] = Scored(groups, ranking_outcomes(group_accs, budgets),
                                     float(accs.max()))
    return out


def picks(scored: Scored, max_budget: int) -> list[str]:
    """The first ``max_budget`` models for display (tied models by name) -- the regrets count
    every order of a tie."""
    return flat(scored.groups)[:max_budget]


def full_zero_regret_budget(scored: Scored, accs_by_model: Mapping[str, float]) -> int:
    """The smallest B over 1 .. pool size with zero regret (Appendix G)."""
    groups = [[accs_by_model[m] for m in g] for g in scored.groups]
    return zero_regret_budget(groups, scored.s_star)


def strategy_deltas(scored: Mapping[str, Mapping[str, Scored]], pairs: Sequence[tuple[str, str]],
                    tasks: Sequence[str], n_budgets: int, eps: float = 1e-4
                    ) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[dict[str, float]]]]:
    """Relative and log-odds deltas of ``a vs b`` per budget index and task (positive: a better)."""
    rel: dict[str, list[dict[str, float]]] = {}
    lo: dict[str, list[dict[str, float]]] = {}
    for a, b in pairs:
        key = f"{a} vs {b}"
        rel[key] = [{t: relative_delta(scored[a][t].outcomes[k], scored[b][t].outcomes[k])
                     for t in tasks} for k in range(n_budgets)]
        lo[key] = [{t: log_odds_delta(scored[a][t].outcomes[k], scored[b][t].outcomes[k], eps)
                    for t in tasks} for k in range(n_budgets)]
    return rel, lo


def delta_pairs(names: Sequence[str], proxies: Sequence[str]) -> list[tuple[str, str]]:
    """The paper's comparisons: ``hybrid:<p> vs <p>`` and ``task_agnostic vs <p>`` for every proxy
    scored in the report."""
    present = set(names)
    pairs = []
    for p in proxies:
        if p not in present:
            continue
        if f"hybrid:{p}" in present:
            pairs.append((f"hybrid:{p}", p))
        if "task_agnostic" in present:
            pairs.append(("task_agnostic", p))
    return pairs
