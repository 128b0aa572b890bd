"""Every task-aware proxy of one probe trial, through the proxy registry.

Importing this module imports every module that registers a proxy (the linear probe, kNN, the
closed-form transferability scores, the early-stop proxy), so :func:`list_proxies` is complete;
a new proxy is one ``@register_proxy`` function in one of them (or in a module imported here).

    compute_proxies(["linear", "knn", "logme"], train_x, train_y, val_x, val_y,
                    settings={"linear": {"steps": 2500}})  ->  {name: (value, seconds)}

Inputs are one frozen forward pass: features and labels of the task's training and validation
splits (numpy or torch), optionally the softmax of the backbone's source classifier on the
training examples (LEEP, NCE) and a short-fine-tune callable (the early-stop proxy). Inputs are
checked once, up front, with the messages of :func:`selection.proxies.inputs.check_inputs` (NaN/inf,
missing classes, a single class, bad shapes); unknown proxy names or settings raise ValueError
listing the known ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from selection.proxies import early_stop, knn, linear, source_scores, transferability  # noqa: F401 (they register)
from selection.proxies.inputs import check_inputs, check_int
from selection.proxies.knn import knn_accuracy
from selection.proxies.registry import PROXIES, Proxy, ProxyInputs
from selection.proxies.source_scores import leep, nce
from selection.proxies.transferability import hscore, logme, transrate
from whichmodel.registry import UnknownNameError

__all__ = ["compute_proxies", "get_proxy", "hscore", "knn_accuracy", "leep", "list_proxies",
           "logme", "make_inputs", "nce", "transrate"]


# The order proxies are listed in: by module (the paper's linear and kNN proxies first), then in
# registration order within a module; proxies registered elsewhere follow.
_MODULE_ORDER = [m.__name__ for m in (linear, knn, transferability, source_scores, early_stop)]


def list_proxies(need: str | None = None) -> list[str]:
    """Registered proxy names (those that read ``need``, if given), in a fixed order."""
    entries = [(n, p) for n, p in PROXIES.items() if need is None or need in p.needs]

    def rank(item: tuple[int, tuple[str, Proxy]]) -> tuple[int, int]:
        module = item[1][1].score.__module__
        first = _MODULE_ORDER.index(module) if module in _MODULE_ORDER else len(_MODULE_ORDER)
        return first, item[0]

    return [n for _, (n, _) in sorted(enumerate(entries), key=rank)]


def get_proxy(name: str) -> Proxy:
    return PROXIES.get(name)


def make_inputs(train_x: Any, train_y: Any, val_x: Any, val_y: Any, *,
                source_probs_train: Any = None,
                finetune: Callable[..., float] | None = None) -> ProxyInputs:
    """Check one trial's arrays once and bundle them for the proxies."""
    chk = check_inputs(train_x, train_y, val_x, val_y, eval_name="val")
    probs = None
    if source_probs_train is not None:
        probs = source_scores.check_source_probs(source_probs_train, "source_probs_train")
        if probs.shape[0] != len(chk.train_y):
            raise ValueError(
                f"source_probs_train has {probs.shape[0]} rows but train_x has "
                f"{len(chk.train_y)}; pass the source classifier's softmax on the same training "
                f"examples, in the same order.")
    return ProxyInputs(chk.train_x, chk.train_y, chk.eval_x, chk.eval_y, chk.n_classes, probs,
                       finetune)


def _check_names(names: Any) -> list[str]:
    names = [names] if isinstance(names, str) else list(dict.fromkeys(names))  # keep order
    for name in names:
        if name not in PROXIES:
            raise UnknownNameError("proxy", name, list_proxies())
    return names


def _check_settings(settings: Mapping[str, Mapping[str, Any]] | None, names: list[str]
                    ) -> dict[str, dict[str, Any]]:
    out = {}
    for name, kwargs in (settings or {}).items():
        if name not in PROXIES:
            raise UnknownNameError("proxy", name, list_proxies(), " (in settings)")
        allowed = PROXIES.get(name).settings
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ValueError(f"settings of proxy {name!r} have unknown key(s) {unknown}; allowed: "
                             f"{', '.join(allowed) or 'none'}.")
        out[name] = dict(kwargs)
    return out


def compute_proxies(names: Sequence[str], train_x: Any, train_y: Any, val_x: Any, val_y: Any, *,
                    source_probs_train: Any = None, finetune: Callable[..., float] | None = None,
                    settings: Mapping[str, Mapping[str, Any]] | None = None,
                    num_threads: int | None = 1) -> dict[str, tuple[float, float]]:
    """Every requested proxy: ``{name: (value, seconds)}``, in request order.

    A proxy whose needs the inputs cannot meet (``source_probs`` of a backbone without a source
    head, ``finetune`` not given) is left out of the result. ``settings[name]`` are that proxy's
    keyword arguments (its registered ``settings``).

    ``num_threads`` caps the BLAS threads (threadpoolctl) of the numpy proxies for this call;
    1 by default: the matrices are small (N x N with N = 800) and more threads than free cores
    stall (README, "Benchmarks"). ``None`` keeps the BLAS setting. The linear probe's torch
    threads are its own setting ``num_threads`` (default 1).

    ``seconds`` is the wall time of that proxy; work the closed-form scores share (the Gram
    spectra of :class:`~selection.proxies.transferability.TaskFeatures`) is charged to the first proxy
    that needs it, so the sum of the seconds is the trial's proxy time.
    """
    names = _check_names(names)
    kwargs = _check_settings(settings, names)
    if num_threads is not None:
        num_threads = check_int(num_threads, "num_threads", 1)
    inputs = make_inputs(train_x, train_y, val_x, val_y, source_probs_train=source_probs_train,
                         finetune=finetune)
    return score_proxies(names, inputs, kwargs, num_threads)


def score_proxies(names: Sequence[str], inputs: ProxyInputs,
                  settings: Mapping[str, Mapping[str, Any]] | None = None,
                  num_threads: int | None = 1) -> dict[str, tuple[float, float]]:
    """:func:`compute_proxies` on inputs already checked (:func:`make_inputs`)."""
    from threadpoolctl import threadpool_limits

    out: dict[str, tuple[float, float]] = {}
    with threadpool_limits(limits=num_threads, user_api="blas"):
        for name in names:
            proxy = PROXIES.get(name)
            if not all(inputs.has(need) for need in proxy.needs):
                continue
            start = time.perf_counter()
            value = float(proxy.score(inputs, **dict((settings or {}).get(name, {}))))
            out[name] = (value, time.perf_counter() - start)
    return out
