"""Score strategies on tasks: the outcome of every ranking at every budget, and its regrets.

For each strategy and task, :func:`score_strategies` ranks the task's pool into tie groups (or a
mixture of such rankings, :func:`selection.strategies.ranking_mixture`), turns them into the
distribution of the best pick at every budget (:mod:`selection.outcomes`) and measures its
expectation s(S): relative, absolute and log-odds regret, and the probability that the picks
hold a best model (Figure 7). :func:`strategy_deltas` compares strategies pairwise (the pairs
:func:`delta_pairs` names: the paper's Figures 5, 6, 20, 22 and 26 by default), and
:func:`full_zero_regret_budget` gives the smallest zero-regret budget over the whole pool
(Appendix G).
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
    mix,
    p_best_picked,
    ranking_outcomes,
    relative,
    relative_delta,
    zero_regret_budget,
)
from selection.rankings import Strategy, flat, ranking_mixture
from whichmodel.errors import InputError

_LISTED = 10  # model names quoted in an error message


@dataclass
class Scored:
    """One strategy on one task: its ordered tie groups (for display), the rankings it draws
    from with their probabilities (one, unless the strategy randomises beyond ties) and the
    outcome at every budget."""

    groups: list[list[str]]
    mixture: list[tuple[float, list[list[str]]]]
    outcomes: list[Outcome]
    s_star: float
    relative: np.ndarray = field(init=False)
    absolute: np.ndarray = field(init=False)
    log_odds: np.ndarray = field(init=False)
    p_best: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.relative = np.array([relative(self.s_star, o) for o in self.outcomes])
        self.absolute = np.array([absolute(self.s_star, o) for o in self.outcomes])
        self.log_odds = np.array([log_odds(self.s_star, o) for o in self.outcomes])
        self.p_best = np.array([p_best_picked(self.s_star, o) for o in self.outcomes])

    def zero(self) -> list[bool]:
        """At each budget: does every draw hold a best model (regret exactly 0)?"""
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
            position = {m: i for i, m in enumerate(pool_models)}
            mixture = []
            for weight, groups in ranking_mixture(strategy, task, list(pool_models)):
                groups = [list(g) for g in groups if g]
                _check_partition(name, task, groups, pool_models)
                mixture.append((weight, groups))
            parts = [(w, ranking_outcomes([accs[[position[m] for m in g]] for g in groups],
                                          budgets)) for w, groups in mixture]
            outcomes = [mix([(w, o[k]) for w, o in parts]) for k in range(len(budgets))]
            shown = [list(g) for g in strategy.rank_groups(task, list(pool_models)) if g]
            out[name][task] = Scored(shown, mixture, outcomes, float(accs.max()))
    return out


def _check_partition(name: str, task: str, groups: list[list[str]], pool: list[str]) -> None:
    ranked = [m for g in groups for m in g]
    if len(ranked) != len(pool) or set(ranked) != set(pool):
        raise ValueError(
            f"strategy {name!r} ranked {flat(groups)[:_LISTED]} on task {task!r}; a ranking "
            f"must hold every model of the task's pool {pool[:_LISTED]} exactly once")


def picks(scored: Scored, max_budget: int) -> list[str]:
    """The first ``max_budget`` models for display (tied models by name) -- the regrets count
    every order of a tie."""
    return flat(scored.groups)[:max_budget]


def full_zero_regret_budget(scored: Scored, accs_by_model: Mapping[str, float]) -> int:
    """The smallest B over 1 .. pool size at which every draw holds a best model (Appendix G):
    for a mixture of rankings, the largest over its rankings."""
    return max(zero_regret_budget([[accs_by_model[m] for m in g] for g in groups], scored.s_star)
               for _, groups in scored.mixture)


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


def parse_delta(text: str) -> tuple[str, str]:
    """``"a vs b"`` -> (a, b); InputError otherwise."""
    parts = text.split(" vs ") if isinstance(text, str) else []
    if len(parts) != 2 or not all(p.strip() == p and p for p in parts) or parts[0] == parts[1]:
        raise InputError(f"delta {text!r}: write two different strategies as 'a vs b', e.g. "
                         "'hybrid:proxy/linear vs proxy/linear'")
    return parts[0], parts[1]


def delta_pairs(names: Sequence[str], proxies: Sequence[str],
                wanted: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """The comparisons to report: ``wanted`` (``"a vs b"``, each strategy in the report), else
    the paper's figures, those whose strategies the report has -- ``hybrid:<p> vs <p>`` and
    ``task_agnostic vs <p>`` for every proxy (Figures 5, 6, 21), ``proxy/knn vs proxy/linear``
    (Figure 20), ``hybrid:proxy/knn vs hybrid:proxy/linear`` (Figure 22) and
    ``hybrid:nearest_task vs nearest_task`` (Figure 26)."""
    present = set(names)
    if wanted is not None:
        pairs = [parse_delta(w) for w in wanted]
        for a, b in pairs:
            missing = [s for s in (a, b) if s not in present]
            if missing:
                raise InputError(f"delta '{a} vs {b}': no strategy {missing[0]!r} in this "
                                 f"report; its strategies: {', '.join(names)}")
        return pairs
    pairs = []
    for p in proxies:
        if p not in present:
            continue
        if f"hybrid:{p}" in present:
            pairs.append((f"hybrid:{p}", p))
        if "task_agnostic" in present:
            pairs.append(("task_agnostic", p))
    for a, b in (("proxy/knn", "proxy/linear"), ("hybrid:proxy/knn", "hybrid:proxy/linear"),
                 ("hybrid:nearest_task", "nearest_task")):
        if a in present and b in present:
            pairs.append((a, b))
    return pairs
