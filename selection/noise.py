"""How sure a report is: the noise of the ground truth and intervals on every comparison.

The fine-tune accuracy s(m, t) that every regret is measured against is itself a measurement: a
finite test set and a few repetitions of a random training run. This module resamples it.

**Resampling one task** (:func:`resample_task`). With per-example test results (which test
examples each repetition's selected model got right, on the task's one test set) a draw
resamples the test examples with replacement, *jointly* for every model (they share the test
set, so their errors are correlated), and each model's repetitions with replacement; a model's
accuracy in the draw is the median over its drawn repetitions of their accuracies on the drawn
examples (the median over repetitions is how the sweep aggregates, Renggli et al. 2022,
Sec. 4.3). Without per-example results, the repetitions only (records with repeated rows per
model, task and metric). With neither (one repetition, no predictions) the task has no noise
estimate: its accuracies stay fixed and its ``p_best`` and ``noise_floor`` are null.

**The noise of the ground truth, per task**: ``p_best[task][model]``, the probability that the
model is the best of the task's pool (ties share the draw), and ``noise_floor[task]``, the
expected relative regret of the observed best model under the resampling: the regret that
measurement noise alone produces, below which no strategy can be shown to be worse.

**Intervals** (:func:`strategy_intervals`). For each strategy and budget, a 95% bootstrap
interval of the mean relative regret (percentile, bias-corrected and accelerated,
:func:`bca_interval`): each of ``draws`` draws (10,000, fixed seed) resamples the tasks with
replacement and uses, for every task, that draw's resampled accuracies. A strategy's ranking is
fixed (its scores do not depend on the fine-tune results of the task; ChoiceNet and the nearest
task learn from the other tasks; ``task_agnostic_oracle`` is kept at its ranking), except
``per_task_best``, the oracle, which picks each draw's best (regret 0). On the same draws,
``better_than[B][a][b]`` is the probability that ``a`` has the lower mean regret (ties count one
half, so two identical strategies give exactly 0.5), and ``within_noise[B]`` lists the
strategies that the best non-oracle strategy at that budget does not beat with probability 0.95
or more.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from selection.regret import ZERO, random_max_probabilities, relative_regret_unchecked

DRAWS = 10_000
DRAW_BLOCK = 1_000  # draws resampled at once: (1,000 x test examples) counts, not (10,000 x ...)
SEED = 0
LEVEL = 0.95
ORACLES = ("per_task_best", "task_agnostic_oracle")  # they see the task's results


@dataclass
class TaskEvidence:
    """What is known about the noise of one task's accuracies, for its pool's models in order.

    ``reps[i]``: model i's repetition accuracies (length >= 1). ``correct[i]``: optional, a
    boolean array (repetitions, test examples), which test examples each repetition's selected
    model got right; all models' arrays share the test set (same length, same order).
    """

    models: list[str]
    reps: list[np.ndarray]
    correct: list[np.ndarray] | None = None

    @property
    def source(self) -> str | None:
        if self.correct is not None:
            return "examples+repetitions"
        if any(len(r) > 1 for r in self.reps):
            return "repetitions"
        return None


def task_rng(seed: int, task: str) -> np.random.Generator:
    """A task's own stream: adding or removing a task leaves the others' draws unchanged."""
    return np.random.default_rng([seed, zlib.crc32(task.encode())])


def _median_of_drawn(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """values (draws, R): per draw, the median of R repetitions drawn with replacement."""
    draws, reps = values.shape
    if reps == 1:
        return values[:, 0]
    pick = rng.integers(0, reps, size=(draws, reps))
    return np.median(np.take_along_axis(values, pick, axis=1), axis=1)


def resample_task(ev: TaskEvidence, draws: int, rng: np.random.Generator) -> np.ndarray | None:
    """Resampled accuracies (draws, models), or None where the task has no noise estimate."""
    if ev.source is None:
        return None
    out = np.empty((draws, len(ev.models)))
    if ev.correct is not None:
        n = ev.correct[0].shape[1]
        idx = rng.integers(0, n, size=(draws, n), dtype=np.int32)
        stacked = np.concatenate(ev.correct, axis=0).T.astype(np.float32)  # (n, all reps)
        per_rep = np.empty((draws, stacked.shape[1]))
        # how often each test example is drawn, per draw: a bincount per block of draws (the
        # same numbers as one over all the draws, in a tenth of the memory)
        for lo in range(0, draws, DRAW_BLOCK):
            block = idx[lo:lo + DRAW_BLOCK] + (n * np.arange(min(DRAW_BLOCK, draws - lo),
                                                             dtype=np.int32))[:, None]
            counts = np.bincount(block.ravel(), minlength=block.size).reshape(block.shape)
            # exact: sums of at most n (< 2**24) ones in float32
            per_rep[lo:lo + DRAW_BLOCK] = (counts.astype(np.float32) @ stacked).astype(np.float64) / n
        start = 0
        for i, c in enumerate(ev.correct):
            out[:, i] = _median_of_drawn(per_rep[:, start:start + len(c)], rng)
            start += len(c)
        return out
    for i, r in enumerate(ev.reps):
        out[:, i] = _median_of_drawn(np.broadcast_to(r, (draws, len(r))), rng)
    return out


def task_noise(task: str, ev: TaskEvidence, point: np.ndarray, draws: int = DRAWS,
               seed: int = SEED
               ) -> tuple[dict[str, float] | None, float | None, np.ndarray | None]:
    """(p_best per model, noise floor, the resampled accuracies) of one task; ``point`` are the
    reported accuracies (the observed best is their first maximum, as the report's best model)."""
    acc = resample_task(ev, draws, task_rng(seed, task))
    if acc is None:
        return None, None, None
    best = acc.max(axis=1, keepdims=True)
    is_best = acc >= best - ZERO
    share = is_best / is_best.sum(axis=1, keepdims=True)
    p_best = {m: float(share[:, i].mean()) for i, m in enumerate(ev.models)}
    observed = int(np.argmax(point))
    floor = float(relative_regret_unchecked(best[:, 0], acc[:, observed]).mean())
    return p_best, floor, acc


def expected_best_draws(groups: Sequence[Sequence[int]], acc: np.ndarray,
                        budgets: Sequence[int]) -> np.ndarray:
    """s(S) per draw (draws, budgets): the expected best accuracy of a ranking given as ordered
    tie groups of column indices of ``acc`` (draws, models), exact over the tied orders.

    The groups wholly inside B give their best; a group B cuts with ``left`` picks adds the
    expected best of a random ``left``-subset of it, floored at the best before it: the i-th
    smallest accuracy of the group is that best with probability C(i - 1, left - 1) / C(k, left).
    """
    out = np.empty((acc.shape[0], len(budgets)))
    starts = np.cumsum([0, *(len(g) for g in groups)])
    prefix = [np.full(acc.shape[0], -np.inf)]  # best accuracy of the first j groups
    ordered: dict[int, np.ndarray] = {}  # a cut group's accuracies, ascending per draw
    for k, b in enumerate(budgets):
        b = min(int(b), int(starts[-1]))
        j = int(np.searchsorted(starts, b, side="right")) - 1  # groups wholly inside B
        while len(prefix) <= j:
            g = groups[len(prefix) - 1]
            prefix.append(np.maximum(prefix[-1], acc[:, list(g)].max(axis=1)))
        left = b - int(starts[j])
        if left == 0:
            out[:, k] = prefix[j]
            continue
        if j not in ordered:
            ordered[j] = np.sort(acc[:, list(groups[j])], axis=1)
        probs = random_max_probabilities(len(groups[j]), left)
        keep = probs > 0
        out[:, k] = np.maximum(ordered[j][:, keep], prefix[j][:, None]) @ probs[keep]
    return out


def regret_draws(mixture: Sequence[tuple[float, Sequence[Sequence[int]]]], acc: np.ndarray,
                 budgets: Sequence[int]) -> np.ndarray:
    """Relative regret (draws, budgets) of the expected pick s(S) of a strategy -- a mixture of
    rankings, each (probability, ordered tie groups of column indices of ``acc``) -- against each
    draw's best accuracy (Renggli et al. 2022, Sec. 3: the regret of the expectation)."""
    s = sum(w * expected_best_draws(groups, acc, budgets) for w, groups in mixture)
    star = acc.max(axis=1, keepdims=True)
    out = relative_regret_unchecked(star, np.minimum(s, star))  # s <= s*, up to rounding
    if not np.isfinite(out).all():  # finite accuracies in [0, 1] give finite regrets
        raise ValueError("regret_draws: a non-finite regret; the resampled accuracies must be "
                         "finite fractions in [0, 1]")
    return out


def bca_interval(boot: np.ndarray, per_task: np.ndarray, level: float = LEVEL
                 ) -> tuple[float, float]:
    """The bias-corrected and accelerated percentile interval (Efron 1987) of a mean over tasks:
    ``boot`` the bootstrap means, ``per_task`` the observed per-task values (their jackknife
    gives the acceleration). The plain percentile interval of a mean of skewed regrets covers
    too rarely on few tasks (92.8% for a nominal 95% on 40 simulated tasks, 88.6% on 20); this
    one 95.2% and 93.7% (tests/test_noise.py)."""
    normal = NormalDist()
    theta = float(per_task.mean())
    below = float((boot < theta - ZERO).mean() + 0.5 * (np.abs(boot - theta) <= ZERO).mean())
    z0 = normal.inv_cdf(min(max(below, 1e-6), 1 - 1e-6))
    n = len(per_task)
    jack = (per_task.sum() - per_task) / max(n - 1, 1)
    d = jack.mean() - jack
    spread = float((d ** 2).sum())
    accel = float((d ** 3).sum() / (6 * spread ** 1.5)) if spread > ZERO else 0.0
    qs = []
    for alpha in ((1 - level) / 2, (1 + level) / 2):
        z = z0 + normal.inv_cdf(alpha)
        qs.append(normal.cdf(z0 + z / (1 - accel * z)) * 100)
    low, high = np.percentile(boot, qs)
    return float(low), float(high)


def strategy_intervals(per_task: Mapping[str, Mapping[str, np.ndarray]], tasks: Sequence[str],
                       budgets: Sequence[int], point: Mapping[str, Sequence[np.ndarray]],
                       draws: int = DRAWS, seed: int = SEED, level: float = LEVEL
                       ) -> dict[str, dict]:
    """``ci``, ``better_than`` and ``within_noise`` from each strategy's regret draws per task.

    ``per_task[strategy][task]``: relative regret (draws, budgets) under the task's resampled
    accuracies (constant rows where the task has no noise estimate). ``point[strategy][k]``:
    its reported per-task regrets at the k-th budget, in ``tasks`` order (their mean orders the
    strategies; the best non-oracle one is the reference of ``within_noise``).
    """
    names = list(per_task)
    rng = np.random.default_rng([seed, 1])
    pick = rng.integers(0, len(tasks), size=(draws, len(tasks)))
    rows = np.arange(draws)[:, None]
    ci: dict[str, dict[str, dict[str, float]]] = {n: {} for n in names}
    better: dict[str, dict[str, dict[str, float]]] = {}
    within: dict[str, list[str]] = {}
    for k, b in enumerate(budgets):
        key = str(b)
        means = np.empty((len(names), draws))
        for s, name in enumerate(names):
            r = np.stack([per_task[name][t][:, k] for t in tasks], axis=1)  # (draws, tasks)
            means[s] = r[rows, pick].mean(axis=1)
            low, high = bca_interval(means[s], np.asarray(point[name][k], dtype=float), level)
            ci[name][key] = {"low": low, "high": high}
        lower = (means[:, None, :] < means[None, :, :] - ZERO).mean(axis=2)
        equal = (np.abs(means[:, None, :] - means[None, :, :]) <= ZERO).mean(axis=2)
        prob = lower + 0.5 * equal
        better[key] = {a: {c: float(prob[i, j]) for j, c in enumerate(names) if j != i}
                       for i, a in enumerate(names)}
        candidates = [n for n in names if n not in ORACLES]
        if candidates:
            ref = min(candidates, key=lambda n: (float(np.mean(point[n][k])), names.index(n)))
            i = names.index(ref)
            within[key] = [n for j, n in enumerate(names)
                           if n == ref or (n not in ORACLES and prob[i, j] < level)]
        else:
            within[key] = []
    return {"ci": ci, "better_than": better, "within_noise": within}


def evidence(task: str, models: Sequence[str], point: np.ndarray,
             reps: Mapping[tuple[str, str], np.ndarray],
             test_results: Mapping[str, Mapping[str, np.ndarray]] | None) -> TaskEvidence:
    """A task's evidence from the records' repeated rows (``reps[(model, task)]``) and, where
    every pool model has them, its per-example test results (``test_results[task][model]``:
    (repetitions, examples), 1 where right). Per-example results that do not reproduce the
    reported accuracy (another run's, or misaligned) are an error naming the pair."""
    from selection.records import RecordsError

    rep_values = [np.asarray(reps.get((m, task), point[i:i + 1]), dtype=float)
                  for i, m in enumerate(models)]
    given = (test_results or {}).get(task) or {}
    if not all(m in given for m in models):
        return TaskEvidence(list(models), rep_values)
    correct = []
    for i, m in enumerate(models):
        c = np.asarray(given[m])
        if c.ndim == 1:
            c = c[None, :]
        if c.ndim != 2 or c.shape[1] == 0 or not np.isin(c, (0, 1)).all():
            raise RecordsError(f"test results of {m!r} on {task!r}: expected 0/1 per test example "
                               f"and repetition (repetitions, examples), got shape {c.shape}")
        if correct and c.shape[1] != correct[0].shape[1]:
            raise RecordsError(
                f"test results on {task!r}: {m!r} has {c.shape[1]} test examples, "
                f"{models[0]!r} {correct[0].shape[1]}; the models of a task share its test set")
        acc = float(np.median(c.mean(axis=1)))
        if abs(acc - point[i]) > 1e-6:
            raise RecordsError(
                f"test results of {m!r} on {task!r} give accuracy {acc:.6f}, the records "
                f"{point[i]:.6f}; they come from another run (re-run the pair or drop its "
                "predictions artifact)")
        correct.append(c.astype(bool))
    return TaskEvidence(list(models), rep_values, correct)


def noise_section(tasks: Sequence[str], task_pool: Mapping[str, list[str]],
                  task_accs: Mapping[str, np.ndarray],
                  rankings: Mapping[str, Mapping[str, list[tuple[float, list]]]],
                  budgets: Sequence[int], point: Mapping[str, Mapping[str, dict]],
                  reps: Mapping[tuple[str, str], np.ndarray],
                  test_results: Mapping[str, Mapping[str, np.ndarray]] | None,
                  draws: int = DRAWS, seed: int = SEED) -> dict[str, object]:
    """The report's noise keys: ``p_best``, ``noise_floor``, ``noise_source``, ``ci``,
    ``better_than``, ``within_noise``, ``above_noise_floor`` and ``noise`` (the settings).

    ``rankings[strategy][task]``: the rankings the strategy draws from, each (probability,
    ordered tie groups of model names);
    ``point[strategy][B]``: its reported summary (``mean``, ``per_task``).
    """
    p_best, floor, source, per_task = {}, {}, {}, {name: {} for name in rankings}
    for t in tasks:
        models, accs = task_pool[t], task_accs[t]
        ev = evidence(t, models, accs, reps, test_results)
        p_best[t], floor[t], drawn = task_noise(t, ev, accs, draws, seed)
        source[t] = ev.source
        acc = drawn if drawn is not None else accs[None, :]
        position = {m: i for i, m in enumerate(models)}
        for name, by_task in rankings.items():
            if name == "per_task_best":
                r = np.zeros((1, len(budgets)))
            else:
                r = regret_draws([(w, [[position[m] for m in g] for g in groups])
                                  for w, groups in by_task[t]], acc, budgets)
            per_task[name][t] = np.broadcast_to(r, (draws, len(budgets)))
    keys = [str(b) for b in budgets]
    observed = {n: [np.array([point[n][b]["per_task"][t] for t in tasks]) for b in keys]
                for n in rankings}
    out: dict[str, object] = strategy_intervals(per_task, tasks, budgets, observed, draws, seed)
    out.update(
        p_best=p_best, noise_floor=floor, noise_source=source,
        above_noise_floor={n: {b: {t: (None if floor[t] is None else
                                       bool(point[n][b]["per_task"][t] > floor[t] + ZERO))
                                   for t in tasks} for b in keys} for n in rankings},
        noise={"draws": draws, "seed": seed, "level": LEVEL,
               "resampled": "test examples (jointly for a task's models) and repetitions; "
                            "tasks with replacement for the intervals"})
    return out
