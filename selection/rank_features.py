"""Rank models from features you already have: no Ray, no MLflow, no sweep file.

    from selection.rank_features import rank_features
    out = rank_features({"resnet50": f1, "vit_b16": f2}, labels, strategy="proxy/logme")
    out["ranking"]      # ["vit_b16", "resnet50"], best first
    out["scores"]       # {"vit_b16": ..., "resnet50": ...}: the strategy's score
    out["proxies"]      # {model: {"proxy/logme": ...}}

``features[model]`` is that model's (examples, dim) feature matrix of one task (numpy or torch),
the rows in the order of ``labels``. The strategy is one proxy (``proxy/<name>`` or ``<name>``)
or the ensemble (``ensemble:all`` over ``proxies``, ``ensemble:knn+logme``: the mean of the
listed proxies' scores standardised over the models, as the report's ensemble). Proxies that
hold data out (the linear probe, kNN) score on ``val_features``/``val_labels`` when given, else on
a stratified 20% of the examples drawn with ``seed`` (the rest train them). The scores are those
of the sweep's probe trial on the same features and settings: both call
:func:`selection.proxies.score_proxies`. Each proxy's settings and a ``seed`` (an int, or one per
model: the sweep derives one per model and task) go as in a sweep file's ``probe`` block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from selection.learners import ENSEMBLE_ALL, ENSEMBLE_PREFIX, ensemble_proxies, ensemble_table
from selection.proxies import get_proxy, list_proxies, make_inputs, score_proxies
from selection.records import PROXY_PREFIX

_TASK = "task"  # the one column of the score tables handed to the ensemble
DEFAULT_ENSEMBLE = ("linear", "knn", "logme", "hscore")


def _proxy_names(strategy: str, proxies: Sequence[str] | None) -> tuple[list[str], bool]:
    """The proxies to compute (bare names) and whether the strategy is the ensemble."""
    known = [n for n in list_proxies() if "finetune" not in get_proxy(n).needs]
    if strategy.startswith(ENSEMBLE_PREFIX):  # ensemble:all averages ``proxies`` (or the default)
        pool = (proxies or DEFAULT_ENSEMBLE) if strategy == ENSEMBLE_ALL else known
        try:
            wanted = ensemble_proxies(strategy, [PROXY_PREFIX + p.removeprefix(PROXY_PREFIX)
                                                 for p in pool])
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from None
        names, ensemble = [p.removeprefix(PROXY_PREFIX) for p in wanted], True
    else:
        names, ensemble = [strategy.removeprefix(PROXY_PREFIX)], False
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"strategy {strategy!r}: unknown proxy {unknown[0]!r}; from features: "
                         f"{', '.join(known)}, or ensemble:all / ensemble:<p1>+<p2>")
    return names, ensemble


def holdout_split(labels: np.ndarray, fraction: float = 0.2, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out): per class a ``fraction`` (at least one example) held out."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < 2:
            raise ValueError(f"labels: class {c.item()!r} has {len(idx)} example; each class needs two or "
                             "more to hold some out (or pass val_features and val_labels)")
        k = max(1, int(round(fraction * len(idx))))
        held.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def rank_features(features: Mapping[str, Any], labels: Any, *, strategy: str = "proxy/linear",
                  val_features: Mapping[str, Any] | None = None, val_labels: Any = None,
                  proxies: Sequence[str] | None = None,
                  settings: Mapping[str, Mapping[str, Any]] | None = None,
                  seed: int | Mapping[str, int] = 0,
                  source_probs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Scores and ranking of the models of ``features`` on one task (module docstring).

    ``proxies``: the ensemble's proxies for ``ensemble:all`` (default linear, knn, logme, hscore).
    ``source_probs[model]``: the softmax of the model's source classifier on the training
    examples (LEEP, NCE need it). Bad input is a ``ValueError`` naming the model and the fix.
    """
    if not isinstance(features, Mapping) or not features:
        raise ValueError("features: pass a dict {model name: (examples, dim) array} with one or "
                         "more models")
    names, ensemble = _proxy_names(strategy, proxies)
    y = np.asarray(labels)
    if (val_features is None) != (val_labels is None):
        raise ValueError("val_features and val_labels: pass both or neither")
    if val_features is None:
        train_idx, val_idx = holdout_split(y, seed=seed if isinstance(seed, int) else 0)
    missing = [m for m in features if val_features is not None and m not in val_features]
    if missing:
        raise ValueError(f"val_features: no features for model {missing[0]!r}; pass one array per "
                         "model of features")
    values: dict[str, dict[str, float]] = {}
    for model, x in features.items():
        x = np.asarray(x.numpy() if hasattr(x, "numpy") else x)
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(f"features[{model!r}]: shape {x.shape}; expected ({len(y)}, dim), one "
                             "row per label")
        if val_features is None:
            tx, ty, vx, vy = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
        else:
            tx, ty, vx, vy = x, y, np.asarray(val_features[model]), np.asarray(val_labels)
        probs = None if source_probs is None else source_probs.get(model)
        if probs is not None and val_features is None:
            probs = np.asarray(probs)[train_idx]
        model_seed = seed if isinstance(seed, int) else int(seed[model])
        kwargs = {n: {**dict((settings or {}).get(n, {})),
                      **({"seed": model_seed} if "seed" in get_proxy(n).settings else {})}
                  for n in names}
        try:
            inputs = make_inputs(tx, ty, vx, vy, source_probs_train=probs)
        except ValueError as exc:
            raise ValueError(f"features[{model!r}]: {exc}") from None
        scored = score_proxies(names, inputs, kwargs)
        values[model] = {PROXY_PREFIX + n: float(v) for n, (v, _) in scored.items()}
    models = list(features)
    tables = [pd.DataFrame({_TASK: [values[m].get(PROXY_PREFIX + n, np.nan) for m in models]},
                           index=models) for n in names]
    table = ensemble_table(tables) if ensemble else tables[0]
    scores = {m: (None if not np.isfinite(v) else float(v))
              for m, v in zip(models, table[_TASK].to_numpy(dtype=float))}
    ranking = sorted(models, key=lambda m: (scores[m] is None, -(scores[m] or 0.0), m))
    return {"strategy": strategy, "ranking": ranking, "scores": scores, "proxies": values}
