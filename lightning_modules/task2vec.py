"""Task2Vec (Achille et al., ICCV 2019): a task as the Fisher information of a fixed probe network.

The embedding of a task is the diagonal of the Fisher information matrix of a probe network's
weights, with a linear head fitted on the task's training data, averaged per filter:

1. the probe backbone (fixed for every task; Renggli et al. 2022, Appendix H, used a ResNet-34,
   this project defaults to the sweep's generalist) extracts features of the task's training
   images once, and a zero-initialised linear head is fitted on them by SGD;
2. over mini-batches of the training images, labels are *sampled* from the network's own
   predictive distribution (the Monte Carlo estimate of the Fisher, one of the two estimators of
   the Task2Vec code; the paper's Appendix H used the variational one) and the squared gradients
   of the cross-entropy with respect to the backbone's convolution and linear weights accumulate;
3. each weight tensor's accumulated squares are averaged per output filter (one number per
   filter), and the filters of every layer are concatenated: a vector whose length depends only
   on the probe network.

Distances are Appendix H's normalised cosine: d(a, b) = cos-distance(a / (a + b), b / (a + b))
(:func:`selection.nearest_task.task2vec_distance`). No Ray and no MLflow here.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.backbones import Backbone, extract_features

FISHER_BATCH = 64


def fit_head(features: torch.Tensor, labels: np.ndarray, num_classes: int, steps: int,
             lr: float = 0.1, batch_size: int = 128, seed: int = 0) -> nn.Linear:
    """A zero-initialised linear head fitted by plain SGD on the standardised frozen features,
    returned as a head on the raw features (the standardisation folded into its weights)."""
    gen = torch.Generator().manual_seed(seed)
    x = features.double()
    mu, sigma = x.mean(dim=0), x.std(dim=0, unbiased=False).clamp_min(1e-6)
    xs = ((x - mu) / sigma).float()
    y = torch.as_tensor(labels, dtype=torch.long)
    head = nn.Linear(xs.shape[1], num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(xs), (min(batch_size, len(xs)),), generator=gen)
        opt.zero_grad()
        F.cross_entropy(head(xs[idx]), y[idx]).backward()
        opt.step()
    raw = nn.Linear(xs.shape[1], num_classes)
    with torch.no_grad():
        w = head.weight.double() / sigma
        raw.weight.copy_(w.float())
        raw.bias.copy_((head.bias.double() - w @ mu).float())
    return raw


def fisher_layers(backbone: Backbone) -> list[tuple[str, nn.Parameter]]:
    """The weights whose Fisher the embedding keeps: every convolution and linear layer of the
    body, in registration order (biases and normalisation layers are left out)."""
    out = []
    for name, module in backbone.body.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            out.append((name, module.weight))
    return out


def task2vec_embedding(backbone: Backbone, images: np.ndarray, labels: np.ndarray,
                       num_classes: int, *, head_steps: int = 200, max_examples: int = 800,
                       seed: int = 0) -> np.ndarray:
    """The task's Task2Vec embedding with ``backbone`` as the probe network (module docstring).

    Deterministic for a seed on one machine: the head's minibatches, the examples used and the
    sampled labels all come from generators seeded with ``seed``.
    """
    probe = copy.deepcopy(backbone).cpu().eval()
    rng = np.random.default_rng(seed)
    index = rng.permutation(len(images))[:max_examples]
    x_img = torch.as_tensor(np.asarray(images)[index])
    y = np.asarray(labels)[index]
    feats, _ = extract_features(probe, x_img, device="cpu")
    head = fit_head(feats, y, num_classes, head_steps, seed=seed)
    layers = fisher_layers(probe)
    if not layers:
        raise ValueError("task2vec: the probe network has no convolution or linear weights")
    for p in probe.parameters():
        p.requires_grad_(False)
    for _, weight in layers:
        weight.requires_grad_(True)
    acc = [torch.zeros_like(w) for _, w in layers]
    gen = torch.Generator().manual_seed(seed)
    batches = 0
    for start in range(0, len(x_img), FISHER_BATCH):
        xb = probe.preprocess(x_img[start:start + FISHER_BATCH])
        logits = head(probe.features(xb))
        with torch.no_grad():
            sampled = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=gen).view(-1)
        loss = F.cross_entropy(logits, sampled)
        grads = torch.autograd.grad(loss, [w for _, w in layers])
        for a, g in zip(acc, grads):
            a += g.detach() ** 2
        batches += 1
    parts = [(a / batches).reshape(a.shape[0], -1).mean(dim=1) for a in acc]  # per filter
    return torch.cat(parts).double().numpy()
