"""Contract tests over the proxy and strategy registries: every entry, no per-entry test code.

Like timm's tests parametrized over ``list_models()``: a proxy or strategy that registers itself
is held to the same contract as the built-in ones the moment it exists.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from selection.proxies import compute_proxies, get_proxy, list_proxies
from selection.strategies import create_strategy, list_strategies

N_CLASSES = 3


def toy_task(separable: bool, seed: int = 0, n_train: int = 90, n_val: int = 60, dim: int = 12):
    """Well-separated class blobs; ``separable=False`` shuffles the labels (same features)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_CLASSES, dim)) * 4.0
    y = np.arange(n_train + n_val) % N_CLASSES
    x = centres[y] + rng.normal(size=(len(y), dim))
    if not separable:
        y = rng.permutation(y)
    # The source classifier's softmax: confident about a source class tied to the true class.
    z = np.arange(n_train + n_val) % N_CLASSES if not separable else y
    logits = 4.0 * np.eye(6)[z] + rng.normal(size=(len(y), 6))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], probs[:n_train]


def toy_finetune(train_x, train_y, val_x, val_y):
    """A short fine-tune of a linear 'backbone' on the toy features (the finetune need)."""
    xt = torch.as_tensor(train_x, dtype=torch.float32)
    xv = torch.as_tensor(val_x, dtype=torch.float32)
    yt, yv = torch.as_tensor(train_y), torch.as_tensor(val_y)

    def finetune(lr: float, steps: int, batch_size: int, seed: int) -> float:
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(xt.shape[1], 16), torch.nn.ReLU(),
                                  torch.nn.Linear(16, N_CLASSES))
        torch.nn.init.zeros_(net[2].weight)
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            idx = torch.randint(0, len(xt), (min(batch_size, len(xt)),), generator=gen)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
        with torch.no_grad():
            return float((net(xv).argmax(1) == yv).float().mean())

    return finetune


def score(name: str, separable: bool, seed: int = 0) -> float:
    xtr, ytr, xva, yva, probs = toy_task(separable, seed)
    settings = {"early_stop": {"steps": 60, "repeats": 1, "lrs": [0.1], "batch_size": 32},
                "linear": {"steps": 200, "repeats": 1}}
    out = compute_proxies([name], xtr, ytr, xva, yva, source_probs_train=probs,
                          finetune=toy_finetune(xtr, ytr, xva, yva),
                          settings={k: v for k, v in settings.items() if k == name})
    return out[name][0]


def check_proxy_contract(name: str) -> None:
    """A finite float; a separable task above a shuffled one; ValueError on NaN features."""
    separable = [score(name, True, seed) for seed in (0, 1)]
    shuffled = [score(name, False, seed) for seed in (0, 1)]
    assert all(isinstance(v, float) and np.isfinite(v) for v in separable + shuffled), name
    assert min(separable) > max(shuffled), (name, separable, shuffled)
    xtr, ytr, xva, yva, probs = toy_task(True)
    xtr = xtr.copy()
    xtr[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        compute_proxies([name], xtr, ytr, xva, yva, source_probs_train=probs,
                        finetune=toy_finetune(xtr, ytr, xva, yva))


@pytest.mark.parametrize("name", list_proxies())
def test_every_proxy_keeps_the_proxy_contract(name):
    check_proxy_contract(name)


@pytest.mark.parametrize("name", list_proxies())
def test_every_proxy_declares_needs_the_trial_can_meet(name):
    proxy = get_proxy(name)
    assert proxy.needs and set(proxy.needs) <= {"features", "source_probs", "finetune"}
    assert proxy.description, f"{name}: give the scoring function a one-line docstring"


MODELS = ["m0", "m1", "m2", "m3", "m4"]
TASKS = ["t0", "t1"]


def _scores() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)

    def table(lo: float = 0.0, hi: float = 1.0) -> pd.DataFrame:
        t = pd.DataFrame(rng.uniform(lo, hi, size=(len(MODELS), len(TASKS))), index=MODELS,
                         columns=TASKS)
        t.index.name, t.columns.name = "model", "task"
        return t

    tables = {"finetune_test_acc": table(0.5, 0.9), "proxy/a": table(-5, 5), "proxy/b": table(),
              "choicenet_v1": table(0.4, 0.8)}
    tables["proxy/b"].iloc[1, 0] = np.nan  # a model without a score still gets ranked
    return tables


META = pd.DataFrame({"imagenet_acc": [0.7, 0.8, np.nan, 0.75, 0.8],
                     "upstream_size": [1e6, 1e6, 1e7, 1e5, 1e6],
                     "params": [10, 20, 30, 40, 50]}, index=pd.Index(MODELS, name="model"))
STRATEGY_NAMES = list_strategies(["proxy/a", "proxy/b"], ["choicenet_v1"])


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_ranks_a_partition_of_the_pool(name):
    strategy = create_strategy(name, _scores(), META)
    for task in TASKS + ["unknown-task"]:
        pool = MODELS[::-1] if task == "t1" else MODELS
        groups = strategy.rank_groups(task, list(pool))
        ranked = [m for g in groups for m in g]
        assert all(groups) and sorted(ranked) == sorted(pool), (name, task)
        assert len(ranked) == len(pool), (name, task)


def test_a_new_proxy_is_one_decorated_function_the_config_cli_and_contract_take(capsys):
    from selection.proxies.registry import PROXIES, ProxyInputs, register_proxy
    from sweeps.cli import main
    from sweeps.config import SweepConfig

    @register_proxy("class_spread")
    def class_spread(inputs: ProxyInputs) -> float:
        """Between-class over total variance of the features (a throwaway test proxy)."""
        x = np.asarray(inputs.train_x, dtype=float)
        means = np.stack([x[inputs.train_y == c].mean(axis=0) for c in range(inputs.n_classes)])
        return float(means[inputs.train_y].var(axis=0).sum() / x.var(axis=0).sum())

    try:
        cfg = SweepConfig.model_validate({"name": "s", "probe": {"proxies": ["class_spread"]}})
        assert cfg.probe.proxy_settings(0) == {"class_spread": {}}
        assert main(["list", "proxies"]) == 0
        assert "class_spread  needs features" in capsys.readouterr().out
        check_proxy_contract("class_spread")
    finally:
        PROXIES.unregister("class_spread")
    assert "class_spread" not in list_proxies()
