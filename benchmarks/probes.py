"""Benchmarks of one probe trial: everything after the frozen forward pass should be nearly free.

    python -m benchmarks.probes           # full: ResNet-50, 112 px, 2000 images (~10 min)
    python -m benchmarks.probes --quick   # under 3 minutes on 2 cores (see "Quick mode")

Measured side by side in one run; the last line printed is one JSON object:

* ``probe_trial_over_forward``: (forward pass with the source classifier's softmax + every proxy
  of :func:`selection.proxies.compute_proxies`) / (bare feature-extraction pass), for a timm
  ResNet-50 (random weights) at 112 px, 800 / 200 / 1000 train / val / test images all
  forwarded, C = 10. Target <= 1.25. ``probe_trial_over_forward_small``: the same for the
  quickstart CNN at 32 px (no target: its forward pass is nearly free, so the ratio is large).
  The two forward passes are timed batch by batch, alternating which goes first, so that load
  from other processes on a shared machine hits both alike.
* ``linear_batched_speedup``: the 10 paper-protocol SGD runs (2 lrs x 5 repeats, batch 256)
  one after another, each the textbook way (``nn.Linear`` head, autograd, ``torch.optim.SGD``,
  the same minibatches), over :func:`selection.proxies.linear.linear_probe_runs` (all heads batched,
  row space since D > N); ``linear_acc_diff_pt``: the largest difference of their validation
  accuracies, in points. Features: the ResNet-50 train / val features.
* ``logme_speedup_vs_direct`` / ``logme_rel_diff``: a direct LogME that decomposes the D x D
  matrix F^T F (the paper's formulas, same fixed point and stopping rule, at most 1000 steps)
  over :func:`selection.proxies.transferability.logme`, N = 800, D = 2048, C = 10 (ResNet-50 features).
  Where the features can interpolate the labels (the evidence grows towards beta -> infinity,
  e.g. Gaussian features with N < D) the D x D formulas lose N - gamma and the residual to
  cancellation and the two disagree; on the ResNet-50 features the maximum is interior.
* ``knn_speedup_vs_sklearn`` / ``knn_prediction_mismatch``: :func:`selection.proxies.knn.knn_predict`
  over scikit-learn's brute-force ``KNeighborsClassifier`` (k = 1), 10k x 10k x 512 float32
  Gaussian features; best of the rounds.

Quick mode times 160 ResNet-50 images per pass at 112 px and scales the forward time to 2000
images (the cost is linear in the number of images); the proxies then run on the features of
1000 distinct images from the same network at 32 px (proxy cost depends on N, D and C, not on the
pixels); kNN runs two rounds instead of three.

Threads: forward passes and kNN (both libraries) use ``--threads`` torch / BLAS / OpenMP threads
(default 2); the linear probe and its baseline 1 torch thread (the probe's default);
compute_proxies and the LogME comparison 1 BLAS thread (compute_proxies' default). All reported
under ``machine`` and ``threads``. On a machine shared with other jobs use ``--threads 1``: with
more threads than free cores, OpenMP barriers stall (ResNet-50 at 112 px measured 28 ms/image
with 1 thread and 197 ms/image with 2 on a loaded 2-core machine), and the timings become noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from selection import proxies as P
from selection.proxies import knn as K
from selection.proxies import linear as L
from selection.proxies import transferability as T

N_TRAIN, N_VAL, N_TEST, N_CLASSES = 800, 200, 1000, 10


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Data and forward passes
# --------------------------------------------------------------------------------------------


def _images(n: int, size: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 NHWC images with a class-dependent low-frequency pattern plus noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % N_CLASSES
    labels = labels[torch.randperm(n, generator=gen)]
    patterns = torch.rand(N_CLASSES, 3, 4, 4, generator=gen)
    base = torch.nn.functional.interpolate(patterns, size=(size, size), mode="bilinear",
                                           align_corners=False)
    x = 0.6 * base[labels] + 0.4 * torch.rand(n, 3, size, size, generator=gen)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous(), labels.numpy()


def _preprocess(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images.permute(0, 3, 1, 2).float().div_(255.0) - mean) / std


@torch.no_grad()
def _timed_passes(
    features: Callable[[torch.Tensor], torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int,
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Bare pass (features) and trial pass (features + softmax of the source head), timed batch
    by batch, the order alternating between batches. Returns wall and CPU seconds of both,
    and the trial's features and probabilities."""
    secs = {"bare": 0.0, "trial": 0.0, "bare_cpu": 0.0, "trial_cpu": 0.0}
    feats, probs = [], []

    def timed(kind: str, batch: torch.Tensor) -> None:
        t, c = time.perf_counter(), time.process_time()
        f = features(_preprocess(batch))
        if kind == "trial":
            p = torch.softmax(head(f), dim=1)
        secs[kind] += time.perf_counter() - t
        secs[kind + "_cpu"] += time.process_time() - c
        if kind == "trial":
            feats.append(f)
            probs.append(p)

    for i, start in enumerate(range(0, len(images), batch_size)):
        batch = images[start : start + batch_size]
        for kind in ("bare", "trial") if i % 2 == 0 else ("trial", "bare"):
            timed(kind, batch)
    return secs, torch.cat(feats), torch.cat(probs)


def _resample(x: np.ndarray, rows: np.ndarray, rng: np.random.Generator,
              noise: float) -> np.ndarray:
    out = x[rows].astype(np.float32)
    out += noise * x.std() * rng.standard_normal(out.shape).astype(np.float32)
    return out


def bench_trial(name: str, quick: bool, threads: int, seed: int) -> dict[str, Any]:
    """One probe trial vs the bare forward pass, for "resnet50" (timm, 112 px) or "cnn"."""
    torch.manual_seed(seed)
    n_all = N_TRAIN + N_VAL + N_TEST
    if name == "resnet50":
        import timm

        model = timm.create_model("resnet50", pretrained=False).eval()
        size, batch = 112, 20

        def features(x: torch.Tensor) -> torch.Tensor:
            return model.forward_head(model.forward_features(x), pre_logits=True)

        head = model.get_classifier()
        n_forward = 160 if quick else n_all
    else:
        from lightning_modules.backbones import create_backbone

        model = create_backbone("cnn", source_classes=100).eval()
        size, batch = 32, 100
        features, head = model.features, model.source_head
        n_forward = n_all
    images, labels = _images(n_all, size, seed)
    torch.set_num_threads(threads)
    with torch.no_grad():
        features(_preprocess(images[:4]))  # warm-up (allocations, kernel selection)
    secs, feats, probs = _timed_passes(features, head, images[:n_forward], batch)
    scale = n_all / n_forward
    bare, trial = secs["bare"] * scale, secs["trial"] * scale
    if n_forward < N_TRAIN + N_VAL:
        # Quick: the proxies need 1000 distinct feature vectors; take them from the same network
        # at 32 px (16x cheaper). Proxy cost depends on the shapes (N, D, C), not the pixels.
        small_images, _ = _images(n_all, 32, seed)
        small_images = small_images[: N_TRAIN + N_VAL]
        with torch.no_grad():
            f32 = torch.cat([features(_preprocess(small_images[i : i + 100]))
                             for i in range(0, len(small_images), 100)])
            feats, probs = f32, torch.softmax(head(f32), dim=1)
    f, p = feats.numpy(), probs.numpy()
    xtr, ytr, ptr = f[:N_TRAIN], labels[:N_TRAIN], p[:N_TRAIN]
    xva, yva = f[N_TRAIN : N_TRAIN + N_VAL], labels[N_TRAIN : N_TRAIN + N_VAL]
    t = time.perf_counter()
    names = P.list_proxies("features") + P.list_proxies("source_probs")
    results = P.compute_proxies(names, xtr, ytr, xva, yva, source_probs_train=ptr)
    proxy_s = time.perf_counter() - t
    ratio = (trial + proxy_s) / bare
    cpu_ratio = (secs["trial_cpu"] * scale + proxy_s) / (secs["bare_cpu"] * scale)
    _log(f"[{name}] bare {bare:.1f}s, trial forward {trial:.1f}s, proxies {proxy_s:.2f}s "
         f"-> ratio {ratio:.3f} (CPU-time ratio {cpu_ratio:.3f}); "
         f"{', '.join(f'{k} {s:.2f}s' for k, (_, s) in results.items())}")
    return {
        "ratio": ratio, "cpu_time_ratio": cpu_ratio, "bare_s": bare, "trial_forward_s": trial,
        "proxies_s": proxy_s, "proxy_seconds": {k: round(s, 4) for k, (_, s) in results.items()},
        "proxy_values": {k: v for k, (v, _) in results.items()},
        "feature_dim": int(f.shape[1]), "images_timed": n_forward,
        "forward_extrapolated": n_forward < n_all,
        "train": (xtr, ytr), "val": (xva, yva),
    }


# --------------------------------------------------------------------------------------------
# Linear probe: textbook runs one after another vs the batched row-space heads
# --------------------------------------------------------------------------------------------


def _textbook_runs(xtr, ytr, xva, yva, lrs, steps, repeats, batch_size, seed) -> np.ndarray:
    """Each (repeat, lr) run alone: nn.Linear head from zero, autograd, torch.optim.SGD."""
    xs, xv = L._standardise(torch.from_numpy(xtr), torch.from_numpy(xva))
    yt, yv = torch.from_numpy(ytr), torch.from_numpy(yva)
    n_classes = int(ytr.max()) + 1
    acc = np.zeros((repeats, len(lrs)))
    for r in range(repeats):
        idx = L._minibatch_indices(len(xs), steps, batch_size, seed + r)
        for j, lr in enumerate(lrs):
            head = torch.nn.Linear(xs.shape[1], n_classes)
            torch.nn.init.zeros_(head.weight)
            torch.nn.init.zeros_(head.bias)
            opt = torch.optim.SGD(head.parameters(), lr=lr)
            for t in range(steps):
                loss = torch.nn.functional.cross_entropy(head(xs[idx[t]]), yt[idx[t]])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                acc[r, j] = float((head(xv).argmax(1) == yv).double().mean())
    return acc


def bench_linear(train, val, seed: int) -> dict[str, Any]:
    (xtr, ytr), (xva, yva) = train, val
    kw = dict(lrs=(0.1, 0.01), steps=2500, repeats=5, batch_size=256, seed=seed)
    torch.set_num_threads(1)
    t = time.perf_counter()
    batched = L.linear_probe_runs(xtr, ytr, xva, yva, **kw, num_threads=1)
    batched_s = time.perf_counter() - t
    t = time.perf_counter()
    textbook = _textbook_runs(xtr, ytr, xva, yva, **kw)
    textbook_s = time.perf_counter() - t
    diff = float(np.abs(textbook - batched).max() * 100)
    proxy_diff = abs(np.median(textbook.max(1)) - np.median(batched.max(1))) * 100
    _log(f"[linear] one after another {textbook_s:.1f}s, batched {batched_s:.1f}s -> "
         f"{textbook_s / batched_s:.1f}x; max accuracy difference {diff:.2f} pt")
    return {"speedup": textbook_s / batched_s, "acc_diff_pt": diff,
            "proxy_diff_pt": float(proxy_diff), "sequential_s": textbook_s,
            "batched_s": batched_s, "steps": kw["steps"]}


# --------------------------------------------------------------------------------------------
# LogME: the D x D computation vs the Gram one
# --------------------------------------------------------------------------------------------


def _logme_direct(f: np.ndarray, y: np.ndarray, tol: float = 1e-12,
                  max_iter: int = 1000) -> tuple[float, int]:
    """LogME with the paper's D x D formulas (eigh of F^T F, m and the residual in feature
    space), all classes at once; same fixed point, stopping rule and rank tolerance as ours."""
    f = f.astype(np.float64)
    n, d = f.shape
    s, v = np.linalg.eigh(f.T @ f)
    s = np.where(s > s.max() * max(n, d) * np.finfo(float).eps, s, 0.0)[:, None]
    yy = np.eye(int(y.max()) + 1)[y]
    z = v.T @ (f.T @ yy)  # (D, C)

    def at(a, b):
        m = v @ (b * z / (a + b * s))
        m2 = (m * m).sum(0)
        res = ((yy - f @ m) ** 2).sum(0)
        gamma = (b * s / (a + b * s)).sum(0)
        ev = (d / 2 * np.log(a) + n / 2 * np.log(b) - 0.5 * np.log(a + b * s).sum(0)
              - b / 2 * res - a / 2 * m2 - n / 2 * np.log(2 * np.pi))
        return gamma, m2, res, ev

    a = b = np.ones(yy.shape[1])
    gamma, m2, res, ev = at(a, b)
    steps = 0
    with np.errstate(all="ignore"):
        for steps in range(1, max_iter + 1):  # noqa: B007 - the count is read after the loop
            a, b = np.clip(gamma / m2, 1e-150, 1e150), np.clip((n - gamma) / res, 1e-150, 1e150)
            prev = ev
            gamma, m2, res, ev = at(a, b)
            if np.all(np.abs(ev - prev) <= tol * n):
                break
    return float(np.mean(ev / n)), steps


def bench_logme(train, threads: int) -> dict[str, Any]:
    x, y = train
    with threadpool_limits(threads):
        t = time.perf_counter()
        ours = T.logme(x, y)
        ours_s = time.perf_counter() - t
        t = time.perf_counter()
        direct, steps = _logme_direct(x, y)
        direct_s = time.perf_counter() - t
    rel = abs(ours - direct) / abs(direct)
    _log(f"[logme] N={len(x)} D={x.shape[1]}: direct {direct_s:.2f}s ({steps} steps), ours "
         f"{ours_s:.3f}s -> {direct_s / ours_s:.1f}x; values {ours:.12g} vs {direct:.12g} "
         f"(rel {rel:.2e})")
    return {"speedup": direct_s / ours_s, "rel_diff": rel, "value": ours,
            "direct_s": direct_s, "ours_s": ours_s, "direct_steps": steps}


# --------------------------------------------------------------------------------------------
# kNN: ours vs scikit-learn brute force
# --------------------------------------------------------------------------------------------


def bench_knn(quick: bool, threads: int, seed: int) -> dict[str, Any]:
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(seed)
    n, d = 10_000, 512
    xtr = rng.standard_normal((n, d), dtype=np.float32)
    xev = rng.standard_normal((n, d), dtype=np.float32)
    ytr = rng.integers(0, N_CLASSES, n)
    ytr[:N_CLASSES] = np.arange(N_CLASSES)
    ours_s, sk_s = [], []
    with threadpool_limits(threads):
        for _ in range(2 if quick else 3):
            t = time.perf_counter()
            ours = K.knn_predict(xtr, ytr, xev, k=1)
            ours_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(xtr, ytr).predict(xev)
            sk_s.append(time.perf_counter() - t)
    mismatch = int((ours != ref).sum())
    _log(f"[knn] 10k x 10k x 512: sklearn {min(sk_s):.2f}s, ours {min(ours_s):.2f}s -> "
         f"{min(sk_s) / min(ours_s):.2f}x; mismatches {mismatch}")
    return {"speedup": min(sk_s) / min(ours_s), "mismatch": mismatch,
            "ours_s": ours_s, "sklearn_s": sk_s}


# --------------------------------------------------------------------------------------------


def _machine(threads: int) -> dict[str, Any]:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {"cpu_count": os.cpu_count(), "cpu": model, "torch_threads": threads,
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__,
            "load_avg_at_start": [round(v, 2) for v in os.getloadavg()]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="under 3 minutes on 2 cores")
    ap.add_argument("--threads", type=int, default=2, help="torch/BLAS threads for the forward "
                    "passes and kNN (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    machine = _machine(args.threads)
    big = bench_trial("resnet50", args.quick, args.threads, args.seed)
    small = bench_trial("cnn", args.quick, args.threads, args.seed)
    linear = bench_linear(big["train"], big["val"], args.seed)
    lm = bench_logme(big["train"], 1)
    knn = bench_knn(args.quick, args.threads, args.seed)
    torch.set_num_threads(args.threads)
    out = {
        "probe_trial_over_forward": round(big["ratio"], 4),
        "probe_trial_over_forward_small": round(small["ratio"], 4),
        "linear_batched_speedup": round(linear["speedup"], 2),
        "linear_acc_diff_pt": round(linear["acc_diff_pt"], 3),
        "logme_speedup_vs_direct": round(lm["speedup"], 2),
        "logme_rel_diff": float(f"{lm['rel_diff']:.3g}"),
        "knn_speedup_vs_sklearn": round(knn["speedup"], 3),
        "knn_prediction_mismatch": knn["mismatch"],
        "quick": args.quick,
        "machine": machine,
        "threads": {"forward": args.threads, "linear": 1, "compute_proxies_blas": 1,
                    "logme_comparison_blas": 1, "knn": args.threads},
        "details": {
            "resnet50_112px": {k: big[k] for k in ("bare_s", "trial_forward_s", "proxies_s",
                                                   "cpu_time_ratio", "proxy_seconds",
                                                   "feature_dim", "images_timed",
                                                   "forward_extrapolated")},
            "cnn_32px": {k: small[k] for k in ("bare_s", "trial_forward_s", "proxies_s",
                                               "cpu_time_ratio", "proxy_seconds",
                                               "feature_dim")},
            "linear": {k: linear[k] for k in ("sequential_s", "batched_s", "steps",
                                              "proxy_diff_pt")},
            "logme": {k: lm[k] for k in ("direct_s", "ours_s", "value", "direct_steps")},
            "knn": {k: knn[k] for k in ("ours_s", "sklearn_s")},
            "load_avg_at_end": [round(v, 2) for v in os.getloadavg()],
            "total_s": round(time.perf_counter() - start, 1),
        },
    }
    print(json.dumps(out, default=float))
    return out


if __name__ == "__main__":
    main()
