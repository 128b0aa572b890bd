"""The linear proxy: SGD logistic regression on one frozen forward pass's features.

Protocol (Renggli et al., "Which Model to Transfer? Finding the Needle in the Growing Haystack",
CVPR 2022, Sec. 3 and 4): VTAB-1k tasks, 800 training and 200 validation examples; learning rates
{0.1, 0.01}, 2500 steps, median of 5 repetitions. Feature standardisation and the batch of 256 are
this project's choices (the paper does not state them; README, "Configuration").

Linear proxy (:func:`linear_probe`)
    Multinomial logistic regression on the frozen features. Features are standardised with the
    training set's per-dimension mean and (population, ddof=0) standard deviation,

        x' = (x - mu_train) / max(sigma_train, 1e-6),

    the floor 1e-6 keeping constant dimensions finite (a dimension that is constant on the
    training set is 0 after centring, so its weights receive no gradient and stay 0; validation
    values in it are multiplied by 0). A head W (D x C), b (C) starts at zero and is trained with
    plain minibatch SGD (constant learning rate, no momentum, no weight decay) on the mean
    cross-entropy; its gradient is written by hand,

        p = softmax(x' W + b),   dL/dW = x'^T (p - onehot(y)) / B,   dL/db = sum(p - onehot(y)) / B,
        W <- W - lr dL/dW,       b <- b - lr dL/db.

    Paper protocol: learning rates {0.1, 0.01}, 2500 steps, 5 repetitions. Per repetition the
    learning rate with the best validation accuracy counts; the proxy is the median over
    repetitions of that accuracy. All ``len(lrs) * repeats`` heads are trained together in one
    batched computation (weights of shape (repeats, D, len(lrs) * C), batched matmuls); the
    heads of one repetition see the same minibatches. When D > N the same SGD runs in the span
    of the N training rows (W = X'^T A, logits K[batch] A + b with K = X' X'^T): identical
    iterates in exact arithmetic, N instead of D per step and one product instead of two (see
    ``_train_heads_dual``). Runs on the GPU when ``train_x`` is a CUDA tensor; on CPU with one
    torch intra-op thread by default (``num_threads``; see :func:`linear_probe_runs` for why).

Labels are integers 0..C-1 with C = max(train labels) + 1 and every class present in training
(:mod:`selection.proxies.inputs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

from selection.proxies.inputs import check_inputs, check_int
from selection.proxies.registry import ProxyInputs, register_proxy

#: Floor on the per-dimension training standard deviation used to standardise features.
STD_FLOOR = 1e-6

# Linear probe: minibatch indices are generated this many steps at a time (bounded memory).
_INDEX_BLOCK_STEPS = 512
# Linear probe: validation rows scored at a time.
_EVAL_BLOCK_ROWS = 4096


class _EpochSampler:
    """Minibatch indices for one repetition: shuffled epochs, cut into consecutive batches.

    The stream of example indices is ``torch.randperm(n)`` drawn again and again from a CPU
    ``torch.Generator`` seeded with ``seed``; batch t is elements [t*B, (t+1)*B) of the stream
    (a batch may span two epochs). Deterministic for a given (n, batch_size, seed), independent
    of the device and of how many steps are requested at a time.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n = n
        self.batch_size = batch_size
        self.gen = torch.Generator(device="cpu")
        self.gen.manual_seed(seed)
        self._buf = torch.empty(0, dtype=torch.int64)

    def next(self, steps: int) -> torch.Tensor:
        need = steps * self.batch_size
        parts = [self._buf]
        have = self._buf.numel()
        while have < need:
            perm = torch.randperm(self.n, generator=self.gen)
            parts.append(perm)
            have += self.n
        stream = torch.cat(parts)
        self._buf = stream[need:]
        return stream[:need].view(steps, self.batch_size)


def _minibatch_indices(n: int, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """(steps, min(batch_size, n)) minibatch indices of one repetition seeded with ``seed``."""
    return _EpochSampler(n, min(batch_size, n), seed).next(steps)


def _standardise64(train_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Standardise with the training mean and population std (floored), in float64."""
    x64 = train_x.double()
    mean = x64.mean(dim=0)
    std = x64.std(dim=0, unbiased=False).clamp_min(STD_FLOOR)
    return [(x.double() - mean) / std for x in (train_x, *others)]


def _standardise(train_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    return [x.float().contiguous() for x in _standardise64(train_x, *others)]


@torch.no_grad()
def _softmax_sgd(
    source: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    lrs: Sequence[float],
    steps: int,
    repeats: int,
    batch_size: int,
    seed: int,
    update,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SGD loop of every (repeat, lr) softmax head at once, shared by the primal and the
    dual form. Per step, repetition r's minibatch ``it`` (``_EpochSampler(N, B, seed + r)``)
    selects rows of ``source`` (the features X, or the Gram matrix K = X X^T); the logits of
    all heads are ``P @ rows^T + b`` with P of shape (R, L*C, width) (rows [l*C, (l+1)*C) are
    the head of lrs[l]), and ``update(P, g, rows, it)`` applies the scaled residual g (already
    minus lr / B times softmax - one-hot). The transposed layout makes the products (L*C x
    width) @ (width x B), which BLAS runs 1.5-1.7x faster on the CPU than (B x width) @ (width
    x L*C) with L*C small. Returns P and b (R, L*C, 1).
    """
    device = source.device
    n, width = source.shape
    r_, l_, c_ = repeats, len(lrs), n_classes
    bsz = min(batch_size, n)
    onehot_t = torch.nn.functional.one_hot(y, c_).to(torch.float32).T.contiguous()  # (C, N)
    p = torch.zeros(r_, l_ * c_, width, dtype=torch.float32, device=device)
    b = torch.zeros(r_, l_ * c_, 1, dtype=torch.float32, device=device)
    step = torch.tensor([-lr / bsz for lr in lrs], dtype=torch.float32, device=device)
    step = step.repeat_interleave(c_).view(1, l_ * c_, 1)
    samplers = [_EpochSampler(n, bsz, seed + r) for r in range(r_)]
    done = 0
    while done < steps:
        block = min(_INDEX_BLOCK_STEPS, steps - done)
        # (block, R*B): row t holds repetition 0's batch, then repetition 1's, ...
        idx = torch.cat([s.next(block) for s in samplers], dim=1).to(device)
        for t in range(block):
            it = idx[t]
            rows = source.index_select(0, it).view(r_, bsz, width)
            logits = torch.baddbmm(b, p, rows.transpose(1, 2)).view(r_, l_, c_, bsz)
            # softmax by hand: torch.softmax over a short dimension is ~3x slower on CPU.
            e = logits.sub_(logits.amax(dim=2, keepdim=True)).exp_()
            e = e.div_(e.sum(dim=2, keepdim=True))
            yb = onehot_t.index_select(1, it).view(c_, r_, bsz).transpose(0, 1).unsqueeze(1)
            g = e.sub_(yb).view(r_, l_ * c_, bsz).mul_(step)
            update(p, g, rows, it)
            b.add_(g.sum(dim=2, keepdim=True))
        done += block
    return p, b


def _train_heads(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    lrs: Sequence[float],
    steps: int,
    repeats: int,
    batch_size: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train all (repeat, lr) softmax heads at once on standardised float32 features ``x``.

    Returns W of shape (repeats, len(lrs), D, C) and b of shape (repeats, len(lrs), C). Heads of
    repetition r use the minibatches of ``_minibatch_indices(N, steps, batch_size, seed + r)``.
    """
    def primal(w_t, g, xb, it):  # W -= lr/B X_B^T G
        w_t.baddbmm_(g, xb)

    w_t, b = _softmax_sgd(x, y, n_classes, lrs, steps, repeats, batch_size, seed, primal)
    r_, l_, c_, d = repeats, len(lrs), n_classes, x.shape[1]
    return w_t.view(r_, l_, c_, d).transpose(2, 3).contiguous(), b.view(r_, l_, c_)


def _train_heads_dual(
    gram: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    lrs: Sequence[float],
    steps: int,
    repeats: int,
    batch_size: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_train_heads` in the span of the training rows: same iterates, N instead of D.

    With W_0 = 0 and no weight decay every SGD update ``-lr/B X_B^T G`` is a combination of
    training rows, so W_t = X^T A_t for a dual matrix A (N x C) that starts at 0 and moves only
    in the rows of the minibatch: ``A[B] -= lr/B G``. The logits of a batch are then
    ``X_B W + b = K[B] A + b`` with the Gram matrix K = X X^T (N x N, ``gram``, float32).
    Per step that is one (B x N) @ (N x L*C) product and a scatter-add, instead of two
    (B x D) products: cheaper whenever D > N (VTAB-1k: N = 800, D up to 2048 and more).
    In exact arithmetic the iterates equal :func:`_train_heads`'s; in float32 they agree to
    rounding. Returns A of shape (repeats, N, len(lrs) * C) and b of shape (repeats, 1,
    len(lrs) * C); the weights are ``X^T A`` (see :func:`_dual_to_weights`).
    """
    r_, lc = repeats, len(lrs) * n_classes

    def dual(a_t, g, kb, it):  # A[B] -= lr/B G
        # scatter_add_ accumulates repeated indices (a batch spanning two epochs may hold an
        # example twice), exactly as X_B^T G sums both copies.
        a_t.scatter_add_(2, it.view(r_, 1, -1).expand(r_, lc, it.numel() // r_), g)

    a_t, b = _softmax_sgd(gram, y, n_classes, lrs, steps, repeats, batch_size, seed, dual)
    return a_t.transpose(1, 2), b.view(r_, 1, lc)


def _dual_to_weights(
    x64: torch.Tensor, a: torch.Tensor, b: torch.Tensor, n_lrs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """W = X^T A in float64, cast to float32, in :func:`_train_heads`'s layout (R, L, D, C)."""
    r_, _, lc = a.shape
    c_ = lc // n_lrs
    w = torch.matmul(x64.T.unsqueeze(0), a.double()).float()  # (R, D, L*C)
    w = w.view(r_, -1, n_lrs, c_).permute(0, 2, 1, 3).contiguous()
    return w, b.view(r_, n_lrs, c_)


@torch.no_grad()
def _head_accuracies(
    w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """(R, L) accuracies of heads W (R, L, D, C), b (R, L, C) on features x (M, D), labels y."""
    r_, l_, d, c_ = w.shape
    wf = w.permute(0, 2, 1, 3).reshape(r_, d, l_ * c_)
    bf = b.reshape(r_, 1, l_ * c_)
    correct = torch.zeros(r_, l_, dtype=torch.float64, device=w.device)
    for start in range(0, x.shape[0], _EVAL_BLOCK_ROWS):
        xb = x[start : start + _EVAL_BLOCK_ROWS]
        logits = torch.baddbmm(bf, xb.unsqueeze(0).expand(r_, -1, -1), wf)
        pred = logits.view(r_, xb.shape[0], l_, c_).argmax(dim=-1)  # first maximum on ties
        hit = pred == y[start : start + _EVAL_BLOCK_ROWS].view(1, -1, 1)
        correct += hit.sum(dim=1, dtype=torch.float64)
    return correct / x.shape[0]


def _to_tensor(x: Any, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def linear_probe_runs(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    lrs: Sequence[float] = (0.1, 0.01),
    steps: int = 2500,
    repeats: int = 5,
    batch_size: int = 256,
    seed: int = 0,
    *,
    num_threads: int | None = 1,
) -> np.ndarray:
    """Validation accuracies of every linear-probe run, shape (repeats, len(lrs)).

    Entry [r, l] is the validation accuracy of the head trained with learning rate ``lrs[l]`` in
    repetition r (minibatches seeded with ``seed + r``). :func:`linear_probe` reduces it with
    ``median(max over lrs)``; the protocol and formulas are in the module docstring.

    Details: features are standardised with the training mean and population std (floored at
    ``STD_FLOOR`` = 1e-6); C = max(train_y) + 1; W and b start at 0; each step draws a minibatch
    of ``min(batch_size, N)`` examples from shuffled epochs (a fresh ``torch.randperm(N)`` per
    epoch from a CPU generator seeded ``seed + r``; batches may span two epochs) and takes one
    plain SGD step on the mean cross-entropy (constant lr, no momentum, no weight decay, hand-
    written gradient under ``torch.no_grad``). All heads train in one batched float32
    computation: weights (repeats, D, len(lrs) * C), one ``baddbmm`` forward and one backward per
    step; the heads of one repetition share its minibatches. Prediction ties go to the lowest
    class. Runs where the inputs are: on the GPU if ``train_x`` is a CUDA tensor, else on CPU.

    Cost: about 4 * steps * repeats * batch_size * D * len(lrs) * C flops (two small matmuls per
    step) when D <= N; when D > N, 2 * steps * repeats * batch_size * N * len(lrs) * C (one
    matmul with the Gram matrix, in the row space; the iterates are the same up to float32
    rounding, so accuracies agree except on near-tied logits). ``num_threads`` (CPU only) is
    the number of torch intra-op threads for this call, set with ``torch.set_num_threads`` and
    restored afterwards; ``None`` keeps torch's setting.
    The default 1 is deliberate: the per-step matmuls are too small to gain much from more
    threads, while more threads than free cores make OpenMP barriers stall on every op (the
    README's "Benchmarks" section has the measurements).
    """
    chk = check_inputs(train_x, train_y, val_x, val_y, eval_name="val")
    steps = check_int(steps, "steps", 1)
    repeats = check_int(repeats, "repeats", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise ValueError(f"seed must be an integer; got {seed!r}.")
    lrs = tuple(lrs)
    if not lrs or not all(
        isinstance(lr, Real) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0
        for lr in lrs
    ):
        raise ValueError(
            f"lrs must be a non-empty sequence of finite positive learning rates; got {lrs!r} "
            f"(paper: (0.1, 0.01))."
        )
    lrs = tuple(float(lr) for lr in lrs)
    if num_threads is not None:
        num_threads = check_int(num_threads, "num_threads", 1)
    device = chk.train_x.device if isinstance(chk.train_x, torch.Tensor) else torch.device("cpu")
    threads_before = torch.get_num_threads()
    if device.type == "cpu" and num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        x64, v64 = _standardise64(_to_tensor(chk.train_x, device), _to_tensor(chk.eval_x, device))
        xva = v64.float().contiguous()
        ytr = torch.from_numpy(chk.train_y).to(device)
        yva = torch.from_numpy(chk.eval_y).to(device)
        args = (ytr, chk.n_classes, lrs, steps, repeats, batch_size, int(seed))
        n, d = x64.shape
        if d > n:  # train in the span of the N training rows (same iterates, see docstring)
            a, b = _train_heads_dual((x64 @ x64.T).float(), *args)
            w, b = _dual_to_weights(x64, a, b, len(lrs))
        else:
            w, b = _train_heads(x64.float().contiguous(), *args)
        return _head_accuracies(w, b, xva, yva).cpu().numpy()
    finally:
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)


def linear_probe(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    lrs: Sequence[float] = (0.1, 0.01),
    steps: int = 2500,
    repeats: int = 5,
    batch_size: int = 256,
    seed: int = 0,
    *,
    num_threads: int | None = 1,
) -> float:
    """Linear proxy: median over repetitions of the best-learning-rate validation accuracy.

    Paper protocol (Renggli et al., CVPR 2022): SGD logistic regression on frozen, standardised
    features, learning rates {0.1, 0.01}, 2500 steps, median of 5 repetitions. Computes
    ``np.median(linear_probe_runs(...).max(axis=1))`` (for an even number of repetitions the
    median is the mean of the two middle values). See :func:`linear_probe_runs` (also for
    ``num_threads``) and the module docstring for the exact training procedure.
    """
    runs = linear_probe_runs(
        train_x, train_y, val_x, val_y, lrs=lrs, steps=steps, repeats=repeats,
        batch_size=batch_size, seed=seed, num_threads=num_threads,
    )
    return float(np.median(runs.max(axis=1)))


@register_proxy("linear", settings=("lrs", "steps", "repeats", "batch_size", "seed",
                                    "num_threads"))
def linear_proxy(inputs: ProxyInputs, lrs: Sequence[float] = (0.1, 0.01), steps: int = 2500,
                 repeats: int = 5, batch_size: int = 256, seed: int = 0,
                 num_threads: int | None = 1) -> float:
    """SGD logistic regression on the features: median of the best lr's val accuracy (paper)."""
    return linear_probe(inputs.train_x, inputs.train_y, inputs.val_x, inputs.val_y, lrs=lrs,
                        steps=steps, repeats=repeats, batch_size=batch_size, seed=seed,
                        num_threads=num_threads)
