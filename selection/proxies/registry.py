"""The proxy registry: every task-aware score of a (model, task) pair registers itself here.

A proxy is one decorated function beside its scorer::

    @register_proxy("logme")
    def logme_proxy(inputs: ProxyInputs) -> float: ...

    @register_proxy("leep", needs=("features", "source_probs"))
    @register_proxy("early_stop", needs=("finetune",), settings=("lrs", "steps", ...))

``needs`` says what of a probe trial it reads: ``features`` (the frozen forward pass of the
task's training and validation examples, with their labels), ``source_probs`` (the backbone's
own upstream classifier's softmax on the training examples; a backbone without one skips the
proxy) and ``finetune`` (a callable that fine-tunes a copy of the backbone for a few steps and
returns its validation accuracy: the early-stop proxy, a short fine-tune). ``settings`` are the
keyword arguments the sweep file may set for it (``probe.<name>``). The sweep file's allowed proxy
names, ``whichmodel list proxies``, the probe trial and the contract tests all read this registry
(through :mod:`selection.proxies`, which imports every module that registers one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from whichmodel.registry import Registry, describe

NEEDS = ("features", "source_probs", "finetune")


@dataclass(frozen=True)
class ProxyInputs:
    """One probe trial's inputs, checked once (:func:`selection.proxies.make_inputs`).

    Features keep their type (numpy or torch); labels are int64 0..C-1 with every class in
    training. ``shared`` caches work that several proxies reuse (the Gram spectra of
    :class:`selection.proxies.transferability.TaskFeatures`), built by the first proxy that needs it.
    """

    train_x: Any
    train_y: np.ndarray
    val_x: Any
    val_y: np.ndarray
    n_classes: int
    source_probs_train: np.ndarray | None = None
    finetune: Callable[..., float] | None = None
    shared: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def has(self, need: str) -> bool:
        return {"features": True, "source_probs": self.source_probs_train is not None,
                "finetune": self.finetune is not None}[need]

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self.shared:
            self.shared[key] = build()
        return self.shared[key]


@dataclass(frozen=True)
class Proxy:
    """A registered proxy: ``score(inputs, **settings) -> float`` (higher is better)."""

    name: str
    score: Callable[..., float]
    needs: tuple[str, ...]
    settings: tuple[str, ...]
    description: str
    nan_reason: str | None = None  # when the score is NaN (no score), why


PROXIES: Registry[Proxy] = Registry("proxy")


def register_proxy(name: str, *, needs: Sequence[str] = ("features",),
                   settings: Sequence[str] = (), nan_reason: str | None = None,
                   replace: bool = False
                   ) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Register the decorated ``score(inputs: ProxyInputs, **settings) -> float`` as ``name``.

    A score may be NaN where the proxy is undefined (no score: the model ranks after those with
    one); ``nan_reason`` says when, for the report."""
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        raise ValueError(f"proxy {name!r}: unknown needs {unknown}; known: {', '.join(NEEDS)}")

    def add(score: Callable[..., float]) -> Callable[..., float]:
        PROXIES.register(name, Proxy(name, score, tuple(needs), tuple(settings), describe(score),
                                     nan_reason), replace=replace)
        return score

    return add
