"""What a ranking gives at each budget, ties included: the distribution of s(S), and s(S) itself.

A strategy ranks a task's pool into ordered *tie groups* (models it cannot tell apart: the same
proxy score, the same metadata). With budget B it fine-tunes the models of the first groups and,
where B cuts a group, a uniformly random subset of it: every order of the tied models is equally
likely, never alphabetical. A strategy may also be a *mixture* of such rankings (a hybrid
without task-agnostic metadata: a uniformly random first model, then the proxy's order of the
rest), each with its probability. The best accuracy among the B picks is then a random variable
with a small discrete distribution (:class:`Outcome`), and s(S) is its expectation (Renggli et
al. 2022, Sec. 3: "the expected maximal test accuracy", the expectation including "any
potential randomization in the algorithm"). Every measure is taken of that expectation:

- relative regret (s* - s(S)) / (1 - min(s*, s(S))), absolute regret s* - s(S), log-odds
  regret logit(s*) - logit(s(S)) (Appendix C);
- the delta between strategies a and b (Sec. 3, Eq. 2), (s(S_a) - s(S_b)) / (1 - min(s(S_a),
  s(S_b))) (0 when both are 1; delta(a, b) = -delta(b, a)), and its log-odds form;
- Figure 7's "how frequently a strategy picks the best model": the probability that the picks
  hold a best model (:func:`p_best_picked`; random with one best of n: B/n);
- the smallest budget with zero regret: the first B at which every draw holds a best model
  (for a mixture, every ranking of it).

The random strategy is one tie group of the whole pool, so a proxy that scores every model alike
is scored exactly as random. The distribution of the best of a uniformly random r-subset of a
group of k accuracies a_(1) <= ... <= a_(k): P(a_(i)) = C(i - 1, r - 1) / C(k, r).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import comb

import numpy as np

from selection.regret import ZERO, log_odds_regret, relative_regret


@dataclass(frozen=True)
class Outcome:
    """The distribution of s(S): ``values`` with probabilities ``probs`` (summing to 1)."""

    values: np.ndarray
    probs: np.ndarray

    def expect(self, fn: Callable[[np.ndarray], np.ndarray]) -> float:
        return float(np.dot(self.probs, np.asarray(fn(self.values), dtype=float)))

    @property
    def mean(self) -> float:
        """E[s], kept inside the values' range (the probabilities sum to 1 up to rounding)."""
        return float(np.clip(np.dot(self.probs, self.values), self.values.min(),
                             self.values.max()))


def best_of_random_subset(accs: Sequence[float], r: int) -> Outcome:
    """s of the best of a uniformly random ``r``-subset of ``accs``."""
    a = np.sort(np.asarray(accs, dtype=float))
    k = len(a)
    r = min(max(int(r), 1), k)
    total = comb(k, r)
    probs = np.array([comb(i - 1, r - 1) / total for i in range(1, k + 1)], dtype=float)
    keep = probs > 0
    return Outcome(a[keep], probs[keep])


def ranking_outcomes(groups: Sequence[Sequence[float]], budgets: Sequence[int]
                     ) -> list[Outcome]:
    """The outcome at each budget of a ranking given as the accuracies of its ordered tie groups
    (a budget beyond the pool picks the whole pool)."""
    sizes = [len(g) for g in groups]
    if not sizes or min(sizes) < 1:
        raise ValueError("ranking_outcomes: every tie group needs at least one model")
    arrays = [np.asarray(g, dtype=float) for g in groups]
    out = []
    for b in budgets:
        if int(b) < 1:
            raise ValueError(f"ranking_outcomes: budget {b!r} must be at least 1")
        best, left = -np.inf, int(b)
        cut = None
        for group in arrays:
            if left >= len(group):
                best, left = max(best, float(group.max())), left - len(group)
                if left == 0:
                    break
            else:
                cut = group
                break
        if cut is None or left == 0:
            out.append(Outcome(np.array([best]), np.array([1.0])))
        else:
            sub = best_of_random_subset(cut, left)
            values = np.maximum(sub.values, best)
            out.append(_merge(values, sub.probs))
    return out


def _merge(values: np.ndarray, probs: np.ndarray) -> Outcome:
    """Equal values summed into one (for compact JSON and exact zero-regret checks)."""
    uniq, inverse = np.unique(values, return_inverse=True)
    return Outcome(uniq, np.bincount(inverse, weights=probs, minlength=len(uniq)))


def relative(s_star: float, outcome: Outcome) -> float:
    """Relative regret of the expected best accuracy s(S) = E[max]."""
    return float(relative_regret(s_star, outcome.mean))


def absolute(s_star: float, outcome: Outcome) -> float:
    return float(s_star - outcome.mean)


def log_odds(s_star: float, outcome: Outcome, eps: float = 1e-4) -> float:
    """logit(s*) - logit(s(S)), both clipped to [eps, 1 - eps]."""
    return float(log_odds_regret(s_star, outcome.mean, eps=eps))


def p_best_picked(s_star: float, outcome: Outcome) -> float:
    """The probability that the picks hold a model as good as the pool's best (Figure 7)."""
    return float(min(1.0, outcome.probs[outcome.values >= s_star - ZERO].sum()))


def is_zero_regret(s_star: float, outcome: Outcome) -> bool:
    """Every draw holds a model as good as the best of the pool."""
    return bool(np.all(outcome.values >= s_star - ZERO))


def relative_delta(a: Outcome, b: Outcome) -> float:
    """(s_a - s_b) / (1 - min(s_a, s_b)) of the expected best accuracies; 0 where both are 1."""
    x, y = a.mean, b.mean
    denom = 1.0 - min(x, y)
    return 0.0 if denom <= 0.0 else float((x - y) / denom)


def log_odds_delta(a: Outcome, b: Outcome, eps: float = 1e-4) -> float:
    """logit s_a - logit s_b of the expected best accuracies (Appendix C), clipped to
    [eps, 1 - eps]."""
    def logit(v: float) -> float:
        v = min(max(v, eps), 1.0 - eps)
        return float(np.log(v) - np.log1p(-v))

    return logit(a.mean) - logit(b.mean)


def mix(parts: Sequence[tuple[float, Outcome]]) -> Outcome:
    """The outcome of a mixture of rankings: each part's outcome with its probability."""
    values = np.concatenate([o.values for _, o in parts])
    probs = np.concatenate([w * o.probs for w, o in parts])
    return _merge(values, probs / probs.sum())


def zero_regret_budget(groups: Sequence[Sequence[float]], s_star: float) -> int:
    """The smallest B at which every draw of the ranking holds a best model (always defined:
    B = pool size picks everything)."""
    taken = 0
    for group in groups:
        g = np.asarray(group, dtype=float)
        hits = int(np.count_nonzero(g >= s_star - ZERO))
        if hits:
            # Inside the group the picks are random: all of it but (hits - 1) models are
            # needed before every draw holds one of the hits.
            return taken + len(g) - hits + 1
        taken += len(g)
    return taken
