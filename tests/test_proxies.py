"""Tests of selection.proxies and selection.proxies.transferability: linear probe, kNN, LogME, LEEP, NCE,
H-score, TransRate, compute_proxies, and their input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.covariance import ledoit_wolf, ledoit_wolf_shrinkage
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from selection import proxies
from selection.proxies import compute_proxies, list_proxies, transferability
from selection.proxies import knn as knn_module
from selection.proxies import linear as lp
from selection.proxies.inputs import check_inputs
from selection.proxies.knn import knn_accuracy, knn_predict
from selection.proxies.linear import linear_probe, linear_probe_runs
from selection.proxies.source_scores import leep, nce
from selection.proxies.transferability import TaskFeatures, hscore, logme, transrate

#: The proxies that read one forward pass's features (early_stop fine-tunes instead).
PROXY_NAMES = tuple(n for n in list_proxies() if "finetune" not in proxies.get_proxy(n).needs)
NEEDS_SOURCE = frozenset(list_proxies("source_probs"))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch intra-op thread for the test's own torch code and the kNN/sklearn references:
    as fast for these sizes, and no OpenMP stalls on an oversubscribed machine. Restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------- data


def _blobs(seed, n_train=800, n_val=200, dim=10, n_classes=4, spread=0.7, scaled=True):
    """Gaussian class blobs with anisotropic scale and an offset (same for both splits)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)) * spread
    scale = rng.uniform(0.5, 3.0, size=dim) if scaled else np.ones(dim)
    offset = rng.normal(size=dim) * 5 if scaled else np.zeros(dim)

    def make(n):
        y = np.arange(n) % n_classes
        rng.shuffle(y)
        x = (centers[y] + rng.normal(size=(n, dim))) * scale + offset
        return x, y

    return (*make(n_train), *make(n_val))


def _knn_data(seed, dtype=np.float64, n_train=300, n_eval=120, dim=5, n_classes=4):
    """Random training data with duplicated points; eval points partly equal to train points."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train, dim))
    y = rng.integers(0, n_classes, n_train)
    y[:n_classes] = np.arange(n_classes)
    # Exact duplicates of training points (same label and a conflicting label): distance ties.
    dup = rng.choice(n_train, 60, replace=False)
    x = np.concatenate([x, x[dup], x[dup[:20]]])
    y = np.concatenate([y, y[dup], (y[dup[:20]] + 1) % n_classes])
    perm = rng.permutation(len(x))
    x, y = x[perm], y[perm]
    xe = rng.normal(size=(n_eval, dim))
    xe[:40] = x[rng.choice(len(x), 40, replace=False)]  # zero-distance neighbours
    xe[40:60] = x[rng.choice(len(x), 20, replace=False)] + 1e-3
    ye = rng.integers(0, n_classes, n_eval)
    return x.astype(dtype), y, xe.astype(dtype), ye


# -------------------------------------------------------------------------------------- kNN


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [1, 3, 80])
def test_knn_matches_sklearn_brute(k, dtype):
    for seed in range(3):
        x, y, xe, ye = _knn_data(seed, dtype)
        if k > 1:
            # sklearn breaks ties at the k-th place by heap order, not by a fixed rule (see
            # knn_predict); duplicated points agree on the label for k > 1.
            first = {}
            y = np.array([first.setdefault(row.tobytes(), label) for row, label in zip(x, y)])
        ref = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(x, y)
        np.testing.assert_array_equal(knn_predict(x, y, xe, k=k), ref.predict(xe))
        np.testing.assert_array_equal(knn_predict(x, y, xe, k=k, chunk_size=7), ref.predict(xe))
        assert knn_accuracy(x, y, xe, ye, k=k) == ref.score(xe, ye)
        assert knn_accuracy(x, y, xe, ye, k=k, chunk_size=7) == ref.score(xe, ye)


def test_knn_k1_conflicting_duplicates_lowest_index_like_sklearn():
    # 40 copies of 50 points with random labels: k=1 ties everywhere, lowest index wins.
    rng = np.random.default_rng(1)
    base = rng.normal(size=(50, 8))
    x = np.concatenate([base] * 40)
    y = rng.integers(0, 5, len(x))
    y[:5] = np.arange(5)
    q = base[:30] + 0.01 * rng.normal(size=(30, 8))
    pred = knn_predict(x, y, q, k=1)
    np.testing.assert_array_equal(pred, y[:30])
    np.testing.assert_array_equal(
        pred, KNeighborsClassifier(1, algorithm="brute").fit(x, y).predict(q)
    )


def test_knn_tie_rules_documented():
    q = np.zeros((1, 1))
    # Squared distances [4, 4, 2.25, 1]: with k=3 one of the two at distance 4 is kept; ours
    # is the lowest index (label 0), sklearn's heap keeps index 1 (documented difference).
    x = np.array([[2.0], [-2.0], [1.5], [1.0]])
    y = np.array([0, 1, 0, 1])
    assert knn_predict(x, y, q, k=3)[0] == 0
    assert KNeighborsClassifier(3, algorithm="brute").fit(x, y).predict(q)[0] == 1
    # Vote tie (k=2, one vote each for labels 2 and 1): the smallest label wins, as in sklearn.
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    y = np.array([2, 1, 0, 0])
    assert knn_predict(x, y, q, k=2)[0] == 1
    assert KNeighborsClassifier(2, algorithm="brute").fit(x, y).predict(q)[0] == 1
    # All features equal (a dead backbone): every distance ties, k=1 takes training row 0.
    x = np.zeros((6, 3))
    y = np.array([2, 0, 1, 0, 1, 2])
    np.testing.assert_array_equal(knn_predict(x, y, np.ones((4, 3))), [2, 2, 2, 2])


def test_knn_blocks_bounded_and_result_unchanged(monkeypatch):
    x, y, xe, ye = _knn_data(5)
    full = knn_predict(x, y, xe, k=3)
    monkeypatch.setattr(knn_module, "_KNN_MAX_BLOCK_ELEMENTS", len(x) * 3)  # 3 eval rows a block
    np.testing.assert_array_equal(knn_predict(x, y, xe, k=3), full)


@pytest.mark.parametrize("k", [2, 3, 5, 40])
def test_knn_argmin_and_argpartition_paths_agree_on_ties(monkeypatch, k):
    # Many exact ties with conflicting labels: both neighbour searches keep the lowest indices.
    rng = np.random.default_rng(k)
    base = rng.normal(size=(30, 4))
    x = np.concatenate([base] * 6)
    y = rng.integers(0, 4, len(x))
    y[:4] = np.arange(4)
    q = np.concatenate([base[:20], rng.normal(size=(20, 4))])
    iterative = knn_predict(x, y, q, k=k)
    monkeypatch.setattr(knn_module, "_KNN_ITERATIVE_MAX_K", 0)
    np.testing.assert_array_equal(knn_predict(x, y, q, k=k), iterative)
    # Reference: a stable sort of the (exactly computed) distances, then the vote.
    d2 = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    d2[:20] = np.where(d2[:20] < 1e-20, 0.0, d2[:20])
    near = np.argsort(d2, axis=1, kind="stable")[:, :k]
    votes = np.stack([np.bincount(y[row], minlength=4) for row in near])
    np.testing.assert_array_equal(iterative[:20], votes.argmax(axis=1)[:20])


def test_knn_torch_tensors():
    x, y, xe, ye = _knn_data(2, np.float32)
    ref = knn_accuracy(x, y, xe, ye)
    got = knn_accuracy(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xe),
                       torch.from_numpy(ye))
    assert got == ref
    np.testing.assert_array_equal(
        knn_predict(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xe)),
        knn_predict(x, y, xe),
    )


def test_knn_bad_arguments():
    x, y, xe, ye = _knn_data(0)
    with pytest.raises(ValueError, match="metric='cosine' is not supported"):
        knn_accuracy(x, y, xe, ye, metric="cosine")
    with pytest.raises(ValueError, match="k=10000 exceeds the number of training examples"):
        knn_predict(x, y, xe, k=10000)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        knn_predict(x, y, xe, k=0)
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        knn_predict(x, y, xe, chunk_size=0)
    with pytest.raises(ValueError, match="squared Euclidean distances overflow float64"):
        knn_predict(x * 1e160, y, xe)


# --------------------------------------------------------------------------- linear probe


def _reference_head(x, y, n_classes, lr, steps, batch_size, seed):
    """One head alone, unbatched: plain SGD on the mean cross-entropy, float32."""
    idx = lp._minibatch_indices(len(x), steps, batch_size, seed)
    w = torch.zeros(x.shape[1], n_classes)
    b = torch.zeros(n_classes)
    for t in range(steps):
        xb = x[idx[t]]
        yb = torch.nn.functional.one_hot(y[idx[t]], n_classes).float()
        grad = (torch.softmax(xb @ w + b, dim=1) - yb) / len(xb)
        w = w - lr * (xb.T @ grad)
        b = b - lr * grad.sum(0)
    return w, b


def test_batched_heads_equal_unbatched_reference():
    xtr, ytr, xva, yva = _blobs(3, n_train=120, n_val=80, dim=7, n_classes=3, spread=0.5)
    lrs, steps, repeats, bsz, seed = (0.5, 0.1, 0.01), 40, 3, 16, 11
    xs, xv = lp._standardise(torch.from_numpy(xtr), torch.from_numpy(xva))
    yt, yv = torch.from_numpy(ytr), torch.from_numpy(yva)
    w, b = lp._train_heads(xs, yt, 3, lrs, steps, repeats, bsz, seed)
    runs = linear_probe_runs(xtr, ytr, xva, yva, lrs=lrs, steps=steps, repeats=repeats,
                             batch_size=bsz, seed=seed)
    assert runs.shape == (repeats, len(lrs))
    for r in range(repeats):
        for i, lr in enumerate(lrs):
            w_ref, b_ref = _reference_head(xs, yt, 3, lr, steps, bsz, seed + r)
            torch.testing.assert_close(w[r, i], w_ref, atol=1e-5, rtol=0)
            torch.testing.assert_close(b[r, i], b_ref, atol=1e-5, rtol=0)
            acc = float(((xv @ w_ref + b_ref).argmax(1) == yv).double().mean())
            assert runs[r, i] == pytest.approx(acc, abs=1e-12)
    assert not torch.equal(w[0], w[1])  # repeats use different minibatches


def test_minibatches_are_shuffled_epochs():
    idx = lp._minibatch_indices(10, steps=7, batch_size=4, seed=3)
    assert idx.shape == (7, 4)
    stream = idx.flatten()
    for e in range(2):  # 28 indices: two full epochs, then a partial one
        assert sorted(stream[10 * e : 10 * (e + 1)].tolist()) == list(range(10))
    assert torch.equal(idx, lp._minibatch_indices(10, 7, 4, 3))
    assert not torch.equal(idx, lp._minibatch_indices(10, 7, 4, 4))
    # batch_size > n: full-batch steps
    assert lp._minibatch_indices(5, 2, 64, 0).shape == (2, 5)


def test_linear_probe_separable_blobs():
    xtr, ytr, xva, yva = _blobs(0, n_train=400, n_val=200, dim=16, n_classes=5, spread=6.0)
    assert linear_probe(xtr, ytr, xva, yva, steps=200, repeats=2) >= 0.99


def test_linear_probe_close_to_sklearn_logistic_regression():
    for seed in (0, 1):
        xtr, ytr, xva, yva = _blobs(seed, n_train=800, n_val=2000)
        ref = LogisticRegression(C=1e4, max_iter=5000).fit(xtr, ytr).score(xva, yva)
        got = linear_probe(xtr, ytr, xva, yva, steps=500, repeats=3)
        assert 0.6 < ref < 0.95  # a hard task, far from chance and from 1
        assert got == pytest.approx(ref, abs=0.03)


def test_linear_probe_median_over_repeats_of_best_lr():
    # Few noisy steps so that repetitions differ.
    xtr, ytr, xva, yva = _blobs(4, n_train=200, n_val=300, dim=10, n_classes=4, spread=0.5)
    kw = dict(lrs=(1.0, 0.1, 0.01), steps=15, repeats=5, batch_size=8, seed=7)
    runs = linear_probe_runs(xtr, ytr, xva, yva, **kw)
    assert runs.shape == (5, 3)
    assert len(np.unique(runs.max(axis=1))) > 1, "repetitions should differ"
    assert linear_probe(xtr, ytr, xva, yva, **kw) == float(np.median(runs.max(axis=1)))
    # Repetition r is seeded with seed + r.
    for r in range(5):
        one = linear_probe_runs(xtr, ytr, xva, yva, **{**kw, "repeats": 1, "seed": 7 + r})
        np.testing.assert_array_equal(one[0], runs[r])
    # An even number of repetitions: mean of the two middle values.
    kw4 = {**kw, "repeats": 4}
    best = np.sort(linear_probe_runs(xtr, ytr, xva, yva, **kw4).max(axis=1))
    assert linear_probe(xtr, ytr, xva, yva, **kw4) == pytest.approx((best[1] + best[2]) / 2)


def test_linear_probe_constant_feature_and_torch_inputs():
    xtr, ytr, xva, yva = _blobs(5, n_train=100, n_val=60, dim=6, n_classes=3, spread=3.0)
    xtr[:, 2] = 4.0  # constant on the training set: std floored, weights stay 0
    xva[:, 2] = -7.0
    kw = dict(steps=50, repeats=2)
    ref = linear_probe_runs(xtr, ytr, xva, yva, **kw)
    assert np.isfinite(ref).all() and ref.max() > 0.8
    got = linear_probe_runs(torch.from_numpy(xtr), torch.from_numpy(ytr),
                            torch.from_numpy(xva), torch.from_numpy(yva), **kw)
    np.testing.assert_array_equal(got, ref)
    x32 = xtr.astype(np.float32)
    assert isinstance(linear_probe(torch.from_numpy(x32), ytr, xva, yva, **kw), float)


def test_linear_probe_num_threads_restored():
    xtr, ytr, xva, yva = _blobs(7, n_train=60, n_val=30)
    torch.set_num_threads(2)
    one = linear_probe_runs(xtr, ytr, xva, yva, steps=30, repeats=2)  # default: 1 thread
    assert torch.get_num_threads() == 2
    two = linear_probe_runs(xtr, ytr, xva, yva, steps=30, repeats=2, num_threads=None)
    assert torch.get_num_threads() == 2
    np.testing.assert_allclose(one, two, atol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_linear_probe_runs_on_gpu_tensors():
    xtr, ytr, xva, yva = _blobs(6, n_train=200, n_val=100)
    kw = dict(steps=100, repeats=2)
    cpu = linear_probe_runs(xtr, ytr, xva, yva, **kw)
    gpu = linear_probe_runs(torch.from_numpy(xtr).cuda(), torch.from_numpy(ytr).cuda(),
                            torch.from_numpy(xva).cuda(), torch.from_numpy(yva).cuda(), **kw)
    np.testing.assert_allclose(gpu, cpu, atol=0.02)


def test_linear_probe_bad_arguments():
    xtr, ytr, xva, yva = _blobs(0, n_train=40, n_val=20)
    for kw, msg in [
        (dict(lrs=()), "lrs must be a non-empty sequence"),
        (dict(lrs=(0.1, -1.0)), "lrs must be a non-empty sequence"),
        (dict(steps=0), "steps must be an integer >= 1"),
        (dict(repeats=0), "repeats must be an integer >= 1"),
        (dict(batch_size=1.5), "batch_size must be an integer >= 1"),
        (dict(seed=None), "seed must be an integer"),
        (dict(num_threads=0), "num_threads must be an integer >= 1"),
    ]:
        with pytest.raises(ValueError, match=msg):
            linear_probe(xtr, ytr, xva, yva, **kw)


# ------------------------------------------------------------------------------ validation


def _good():
    rng = np.random.default_rng(0)
    return rng.normal(size=(30, 4)), np.arange(30) % 3, rng.normal(size=(12, 4)), np.arange(12) % 3


def _both(args, match):
    """The same bad input is rejected by both proxies with the same message."""
    tx, ty, ex, ey = args
    with pytest.raises(ValueError, match=match.replace("EVAL", "val")):
        linear_probe(tx, ty, ex, ey, steps=1, repeats=1)
    with pytest.raises(ValueError, match=match.replace("EVAL", "eval")):
        knn_accuracy(tx, ty, ex, ey)


def test_non_finite_features_name_the_array():
    tx, ty, ex, ey = _good()
    tx[3, 1] = np.nan
    _both((tx, ty, ex, ey), r"train_x contains 1 non-finite value\(s\) \(NaN or inf\), the "
                            r"first at row 3, column 1")
    tx, ty, ex, ey = _good()
    ex[5, 0] = np.inf
    ex[6, 2] = -np.inf
    _both((tx, ty, ex, ey), r"EVAL_x contains 2 non-finite")
    tx, ty, ex, ey = _good()
    tx[0, 0] = np.nan
    with pytest.raises(ValueError, match="train_x contains 1 non-finite"):
        knn_predict(torch.from_numpy(tx), ty, ex)


def test_label_errors():
    tx, ty, ex, ey = _good()
    _both((tx, ty.astype(float), ex, ey), r"train_y must hold integer class labels 0..C-1; got "
                                          r"dtype float64.*np.unique")
    _both((tx, ty, ex, ey.astype(np.float32)), r"EVAL_y must hold integer class labels")
    bad = ty.copy()
    bad[0] = -1
    _both((tx, bad, ex, ey), r"train_y holds the negative label -1")
    gap = np.where(ty == 1, 3, ty)  # labels {0, 2, 3}: class 1 is missing
    _both((tx, gap, ex, ey % 2 * 2), r"class 1 has no training examples.*relabel")
    _both((tx, np.zeros(30, int), ex, np.zeros(12, int)), r"fewer than 2 classes")
    unseen = ey.copy()
    unseen[0] = 5
    _both((tx, ty, ex, unseen), r"EVAL_y holds label\(s\) \[5\].*class 5 has no training "
                                r"examples")
    _both((tx, ty[:, None], ex, ey), r"train_y must be 1-D")


def test_shape_errors():
    tx, ty, ex, ey = _good()
    _both((tx, ty[:-1], ex, ey), r"train_x has 30 rows but train_y has 29 labels")
    _both((tx, ty, ex, ey[:-2]), r"EVAL_x has 12 rows but EVAL_y has 10 labels")
    _both((tx.ravel(), ty, ex, ey), r"train_x must be 2-D.*got shape \(120,\)")
    _both((tx, ty, ex[:, :, None], ey), r"EVAL_x must be 2-D")
    _both((tx, ty, ex[:, :3], ey), r"train_x has 4 features per example but EVAL_x has 3")
    _both((tx[:0], ty[:0], ex, ey), r"train_x is empty")
    _both((tx.astype(str), ty, ex, ey), r"train_x must hold real-valued features")


def test_check_inputs_returns_classes_and_keeps_tensors():
    tx, ty, ex, ey = _good()
    chk = check_inputs(torch.from_numpy(tx), torch.from_numpy(ty), ex, ey)
    assert chk.n_classes == 3
    assert isinstance(chk.train_x, torch.Tensor)
    assert chk.train_y.dtype == np.int64 and chk.eval_y.dtype == np.int64


# ------------------------------------------------------------------- linear probe: row space


def test_row_space_heads_equal_plain_heads_when_d_exceeds_n():
    # D > N, and batches of 16 from 30 examples span two epochs (an example can be in a batch
    # twice): the dual (row-space) SGD must still follow the plain iterates.
    xtr, ytr, xva, yva = _blobs(8, n_train=30, n_val=50, dim=70, n_classes=3, spread=0.8)
    lrs, steps, repeats, bsz, seed = (0.1, 0.01), 60, 3, 16, 5
    x64, v64 = lp._standardise64(torch.from_numpy(xtr), torch.from_numpy(xva))
    yt = torch.from_numpy(ytr)
    w, b = lp._train_heads(x64.float(), yt, 3, lrs, steps, repeats, bsz, seed)
    a, bd = lp._train_heads_dual((x64 @ x64.T).float(), yt, 3, lrs, steps, repeats, bsz,
                                      seed)
    wd, bd = lp._dual_to_weights(x64, a, bd, len(lrs))
    assert wd.shape == w.shape and bd.shape == b.shape
    xv = v64.float()
    logits = torch.einsum("md,rldc->rlmc", xv, w) + b[:, :, None]
    logits_dual = torch.einsum("md,rldc->rlmc", xv, wd) + bd[:, :, None]
    torch.testing.assert_close(logits_dual, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bd, b, atol=1e-6, rtol=0)
    # linear_probe_runs takes the dual path here (D > N): same accuracies as the plain heads.
    plain = lp._head_accuracies(w, b, xv, torch.from_numpy(yva)).numpy()
    runs = linear_probe_runs(xtr, ytr, xva, yva, lrs=lrs, steps=steps, repeats=repeats,
                             batch_size=bsz, seed=seed)
    np.testing.assert_array_equal(runs, plain)


# ------------------------------------------------------------------------------------ LogME


def _logme_direct(f, y, tol=1e-12, max_iter=10_000):
    """The paper's D x D formulas: eigh of F^T F, all D eigenvalues, m and the residual formed
    in feature space (no Gram trick). Same stopping rule and rank tolerance as logme."""
    n, d = f.shape
    s, v = np.linalg.eigh(f.T @ f)
    s = np.where(s > s.max() * max(n, d) * np.finfo(float).eps, s, 0.0)
    out = []
    for c in range(y.max() + 1):
        yc = (y == c).astype(float)
        z = v.T @ (f.T @ yc)

        def at(a, b, z=z, yc=yc):
            m = v @ (b * z / (a + b * s))
            m2, res = m @ m, ((yc - f @ m) ** 2).sum()
            ev = (d / 2 * np.log(a) + n / 2 * np.log(b) - 0.5 * np.log(a + b * s).sum()
                  - b / 2 * res - a / 2 * m2 - n / 2 * np.log(2 * np.pi))
            return (b * s / (a + b * s)).sum(), m2, res, ev

        a = b = 1.0
        gamma, m2, res, ev = at(a, b)
        for _ in range(max_iter):
            a, b = gamma / m2, (n - gamma) / res
            prev = ev
            gamma, m2, res, ev = at(a, b)
            if abs(ev - prev) <= tol * n:
                break
        out.append(ev / n)
    return float(np.mean(out))


def _logme_data(kind, seed=0, n_classes=4):
    rng = np.random.default_rng(seed)
    n, d = {"full_rank": (60, 8), "low_rank_noise": (30, 60), "rank3": (30, 60),
            "interpolating": (20, 50)}[kind]
    y = np.arange(n) % n_classes
    if kind == "low_rank_noise":
        z = rng.normal(size=(n, 5)) + rng.normal(size=(n_classes, 5))[y]
        x = z @ rng.normal(size=(5, d)) + 0.05 * rng.normal(size=(n, d))
    elif kind == "rank3":
        x = (rng.normal(size=(n, 3)) + rng.normal(size=(n_classes, 3))[y]) @ rng.normal(
            size=(3, d))
    else:
        x = rng.normal(size=(n, d)) + rng.normal(size=(n_classes, d))[y] + 0.5
    return x, y


@pytest.mark.parametrize("kind", ["full_rank", "low_rank_noise", "rank3"])
def test_logme_equals_direct_dxd_computation(kind):
    x, y = _logme_data(kind)
    got = logme(x, y)
    assert got == pytest.approx(_logme_direct(x, y), rel=1e-9, abs=1e-12)
    # Torch float32 input: same value up to the input rounding.
    assert logme(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)) == pytest.approx(
        got, rel=1e-4)


def test_logme_keeps_zero_eigenvalue_directions_when_n_below_d():
    # N = 30 < D = 60 and rank 3: 57 zero eigenvalues of F^T F must each add log(alpha) to
    # log det A. Dropping them (the thin-SVD shortcut) shifts L/N by (D - k)/2 log(alpha) / N.
    x, y = _logme_data("rank3")
    n, d = x.shape
    tf = TaskFeatures.from_arrays(x, y)
    evidence, alpha, beta = transferability.logme_fit(tf)
    k = min(n, d)
    shortcut = np.mean((evidence + (d - k) / 2 * np.log(alpha)) / n)
    direct = _logme_direct(x, y)
    assert logme(x, y) == pytest.approx(direct, rel=1e-9)
    assert abs(shortcut - direct) > 0.1


def _gaussian_log_evidence(x, yc, alpha, beta):
    """log N(y; 0, F F^T / alpha + I / beta): the evidence with the weights integrated out."""
    n = len(yc)
    cov = x @ x.T / alpha + np.eye(n) / beta
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (logdet + yc @ np.linalg.solve(cov, yc) + n * np.log(2 * np.pi))


@pytest.mark.parametrize("kind", ["low_rank_noise", "interpolating"])
def test_logme_is_the_maximum_of_the_marginal_likelihood(kind):
    # "interpolating": N < D in general position, the evidence grows towards beta -> infinity
    # (noise-free limit), where the D x D formulas break down numerically; the value must still
    # be the supremum of the N x N Gaussian marginal likelihood.
    x, y = _logme_data(kind)
    evidence, alpha, beta = transferability.logme_fit(TaskFeatures.from_arrays(x, y))
    for c in range(y.max() + 1):
        yc = (y == c).astype(float)
        if beta[c] < 1e8:  # the N x N covariance is well conditioned enough to check directly
            assert evidence[c] == pytest.approx(_gaussian_log_evidence(x, yc, alpha[c],
                                                                       beta[c]), abs=1e-7)
        for fa, fb in [(1.2, 1), (1 / 1.2, 1), (1, 1.2), (1, 1 / 1.2), (1, 1e-3), (1, 10)]:
            a, b = alpha[c] * fa, beta[c] * fb
            if b < 1e8:
                assert _gaussian_log_evidence(x, yc, a, b) <= evidence[c] + 1e-7


def test_logme_degenerate_features_are_finite():
    y = np.arange(40) % 4
    assert np.isfinite(logme(np.ones((40, 3)), y))  # constant: evidence does not depend on alpha
    assert np.isfinite(logme(np.zeros((40, 100)), y))


# ------------------------------------------------------------------------------ LEEP and NCE


def test_leep_closed_form():
    theta = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    y = np.array([0, 1, 1])
    # P(y|z): z=0 -> (2/3, 1/3), z=1 -> (0, 1); EEP = 2/3, 1, 2/3.
    assert leep(theta, y) == pytest.approx(2 / 3 * np.log(2 / 3), rel=1e-12)
    # Against the definition, example by example, on random data.
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(7), size=50)
    y = np.arange(50) % 3
    joint = np.array([p[y == c].sum(0) for c in range(3)]) / 50
    cond = joint / joint.sum(0)
    ref = np.mean([np.log(sum(cond[y[i], z] * p[i, z] for z in range(7))) for i in range(50)])
    assert leep(torch.from_numpy(p.astype(np.float32)), y) == pytest.approx(ref, rel=1e-5)
    assert leep(p, y) == pytest.approx(ref, rel=1e-12)


def test_nce_closed_form():
    z = np.array([0, 0, 1, 1, 2])
    y = np.array([0, 1, 1, 1, 0])
    # H(Y|Z) = P(z=0) H(1/2, 1/2) = 2/5 log 2; the other source classes determine y.
    assert nce(z, y) == pytest.approx(-0.4 * np.log(2), rel=1e-12)
    assert nce(np.array([7, 7, 3, 3, 100]), y) == pytest.approx(-0.4 * np.log(2), rel=1e-12)
    assert nce(y, y) == 0.0


# ---------------------------------------------------------------------------------- H-score


def _hscore_dxd(x, y, shrinkage=None):
    """Reference: D x D covariances, pseudo-inverse (plain) or Ledoit-Wolf (sklearn)."""
    xc = x - x.mean(0)
    g = np.stack([xc[y == c].mean(0) for c in range(y.max() + 1)])[y]
    cov_g = g.T @ g / len(x)
    if shrinkage is None:
        return np.trace(np.linalg.pinv(xc.T @ xc / len(x)) @ cov_g)
    cov, a = ledoit_wolf(x)
    return np.trace(np.linalg.inv(cov) @ ((1 - a) * cov_g))


def test_hscore_closed_form_one_dimension():
    x = np.array([[0.0], [2.0], [4.0], [6.0]])
    y = np.array([0, 0, 1, 1])
    # var(class means) / var(f) = 4 / 5; one feature: no shrinkage, same value.
    assert hscore(x, y) == pytest.approx(0.8, rel=1e-12)
    assert hscore(x, y, regularized=True) == pytest.approx(0.8, rel=1e-12)


@pytest.mark.parametrize("n,d", [(80, 6), (25, 40)])
def test_hscore_equals_dxd_reference(n, d):
    rng = np.random.default_rng(n)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2, d) + rng.normal(size=(3, d))[y] + 3.0
    tf = TaskFeatures.from_arrays(x, y)
    assert transferability.ledoit_wolf_shrinkage(tf) == pytest.approx(
        ledoit_wolf_shrinkage(x), rel=1e-10)
    assert hscore(x, y, regularized=True) == pytest.approx(_hscore_dxd(x, y, "lw"), rel=1e-9)
    if n > d:
        assert hscore(x, y) == pytest.approx(_hscore_dxd(x, y), rel=1e-9)
    else:  # N independent centred rows span everything P can see: H = C - 1 for any features,
        assert math.isnan(hscore(x, y))  # so no score (NaN), never round-off around C - 1


# -------------------------------------------------------------------------------- TransRate


def _transrate_dxd(x, y, eps):
    """The authors' formula: slogdet of D x D matrices."""
    def rate(z):
        return 0.5 * np.linalg.slogdet(np.eye(z.shape[1]) + z.T @ z / (len(z) * eps))[1]

    z = x - x.mean(0)
    n_classes = y.max() + 1
    return rate(z) - sum(rate(z[y == c]) for c in range(n_classes)) / n_classes


def test_transrate_closed_form_one_dimension():
    x = np.array([[1.0], [3.0], [-2.0], [-2.0]])  # mean 0
    y = np.array([0, 0, 1, 1])
    # R(Z) = 1/2 log(1 + 18/4), classes: 1/2 log(1 + 10/2), 1/2 log(1 + 8/2); eps = 1.
    want = 0.5 * np.log(5.5) - 0.25 * (np.log(6.0) + np.log(5.0))
    assert transrate(x, y, eps=1.0) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("n,d", [(90, 5), (24, 40)])
def test_transrate_equals_dxd_reference(n, d):
    rng = np.random.default_rng(d)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, d)) + rng.normal(size=(3, d))[y]
    for eps in (1e-4, 0.5):
        assert transrate(x, y, eps=eps) == pytest.approx(_transrate_dxd(x, y, eps), rel=1e-10)


def test_transrate_of_huge_features_is_finite_where_the_centred_gram_is_psd_only_up_to_rounding():
    # a randomly initialised Inception V3 at 299 px gave features this large: N < D, and the
    # centred Gram matrix's zero eigenvalue, times 1 / (n eps), fell below -1 (Cholesky failed)
    rng = np.random.default_rng(0)
    y = np.arange(8) % 2
    z = rng.normal(size=(8, 2048))
    got = transrate(1e12 * z + 1e13, y)

    def rate(a, zeros=0, eps=1e-4 / 1e24):  # of z: 1/2 sum log(1 + s_i^2 / (n eps))
        s = np.linalg.svd(a, compute_uv=False)[:len(a) - zeros]
        return 0.5 * np.log1p(s * s / (len(a) * eps)).sum()

    zc = z - z.mean(0)  # rank 7 of 8: its eighth singular value is exactly 0
    want = rate(zc, zeros=1) - (rate(zc[y == 0]) + rate(zc[y == 1])) / 2
    assert np.isfinite(got) and got == pytest.approx(want, rel=1e-6)


# ------------------------------------------------------------------------------ kNN screening


@pytest.mark.parametrize("k", [1, 3, 80])
def test_knn_float32_screen_keeps_tie_rules(monkeypatch, k):
    # Force the screen onto the tie-heavy low-dimensional data (duplicates with conflicting
    # labels, zero distances): ruled-out columns must never change a prediction.
    monkeypatch.setattr(knn_module, "_KNN_SCREEN_MIN_DIM", 1)
    monkeypatch.setattr(knn_module, "_KNN_SCREEN_MAX_FRACTION", 1.0)
    for seed in range(2):
        x, y, xe, _ = _knn_data(seed)
        if k > 1:
            first = {}
            y = np.array([first.setdefault(row.tobytes(), label) for row, label in zip(x, y)])
        ref = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(x, y).predict(xe)
        np.testing.assert_array_equal(knn_predict(x, y, xe, k=k), ref)
        np.testing.assert_array_equal(knn_predict(x, y, xe, k=k, chunk_size=7), ref)


def test_knn_float32_screen_prunes_and_matches_sklearn(monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 96))
    y = rng.integers(0, 5, 400)
    y[:5] = np.arange(5)
    xe = rng.normal(size=(150, 96))
    xe[:20] = x[:20] * (1 + 1e-7)  # near-ties
    assert knn_module._Float32Screen.usable(96, 1e4)
    screen = knn_module._Float32Screen(x, np.einsum("ij,ij->i", x, x), 1e4)
    kept = screen.candidates(xe, np.einsum("ij,ij->i", xe, xe), 1).sum(axis=1)
    assert kept.min() >= 1 and kept.max() < 40  # most of the training set is ruled out
    for k in (1, 3):
        ref = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(x, y).predict(xe)
        np.testing.assert_array_equal(knn_predict(x, y, xe, k=k), ref)
        monkeypatch.setattr(knn_module, "_KNN_SCREEN_MIN_DIM", 10**9)  # the exact path only
        np.testing.assert_array_equal(knn_predict(x, y, xe, k=k), ref)
        monkeypatch.undo()


# --------------------------------------------------------------------------- compute_proxies


def _trial_data(seed=0, n_train=60, n_val=30, dim=20, n_classes=3, n_source=7):
    xtr, ytr, xva, yva = _blobs(seed, n_train=n_train, n_val=n_val, dim=dim,
                                n_classes=n_classes, spread=1.5)
    probs = np.random.default_rng(seed).dirichlet(np.ones(n_source), size=n_train)
    return xtr, ytr, xva, yva, probs


def test_compute_proxies_every_name_with_individual_values():
    xtr, ytr, xva, yva, probs = _trial_data()
    lin = {"steps": 30, "repeats": 2}
    out = compute_proxies(PROXY_NAMES, xtr, ytr, xva, yva, source_probs_train=probs,
                          settings={"linear": lin, "knn": {"k": 3}})
    assert list(out) == list(PROXY_NAMES)
    assert all(isinstance(v, float) and s >= 0 for v, s in out.values())
    want = {
        "linear": linear_probe(xtr, ytr, xva, yva, **lin),
        "knn": knn_accuracy(xtr, ytr, xva, yva, k=3),
        "logme": logme(xtr, ytr),
        "leep": leep(probs, ytr),
        "nce": nce(probs.argmax(1), ytr),
        "hscore": hscore(xtr, ytr),
        "hscore_lw": hscore(xtr, ytr, regularized=True),
        "transrate": transrate(xtr, ytr),
    }
    for name, value in want.items():
        assert out[name][0] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def test_compute_proxies_skips_source_proxies_without_probs_and_keeps_order():
    xtr, ytr, xva, yva, _ = _trial_data(1)
    out = compute_proxies(["transrate", "leep", "knn", "nce", "logme", "knn"], torch.from_numpy(
        xtr).float(), torch.from_numpy(ytr), xva, yva)
    assert list(out) == ["transrate", "knn", "logme"]
    assert NEEDS_SOURCE == {"leep", "nce"}
    assert compute_proxies("knn", xtr, ytr, xva, yva).keys() == {"knn"}
    assert compute_proxies([], xtr, ytr, xva, yva) == {}


def test_compute_proxies_rejects_unknown_names_keys_and_bad_inputs():
    xtr, ytr, xva, yva, probs = _trial_data(2)
    with pytest.raises(ValueError, match=r"unknown proxy 'logme2'; known: linear, knn, logme, "
                                         r"hscore, hscore_lw, transrate, leep, nce"):
        compute_proxies(["logme", "logme2"], xtr, ytr, xva, yva)
    with pytest.raises(ValueError, match=r"settings of proxy 'linear' have unknown key\(s\) "
                                         r"\['step'\]"):
        compute_proxies(["linear"], xtr, ytr, xva, yva, settings={"linear": {"step": 3}})
    with pytest.raises(ValueError, match=r"settings of proxy 'knn' have unknown key\(s\) "
                                         r"\['n_neighbors'\]"):
        compute_proxies(["knn"], xtr, ytr, xva, yva, settings={"knn": {"n_neighbors": 3}})
    with pytest.raises(ValueError, match=r"source_probs_train has 59 rows but train_x has 60"):
        compute_proxies(["leep"], xtr, ytr, xva, yva, source_probs_train=probs[:-1])
    bad = xtr.copy()
    bad[4, 2] = np.inf
    with pytest.raises(ValueError, match=r"train_x contains 1 non-finite value\(s\).*row 4"):
        compute_proxies(["logme"], bad, ytr, xva, yva)
    with pytest.raises(ValueError, match=r"class 1 has no training examples.*map val_y"):
        compute_proxies(["hscore"], xtr, np.where(ytr == 1, 0, ytr), xva, yva % 3 % 2 * 2)
    p = probs.copy()
    p[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"source_probs_train contains 1 non-finite"):
        compute_proxies(["leep"], xtr, ytr, xva, yva, source_probs_train=p)


# ---------------------------------------------------------------- closed-form scores: inputs


@pytest.mark.parametrize("score", ["logme", "hscore", "transrate"])
def test_feature_scores_reject_bad_inputs(score):
    fn = {"logme": logme, "hscore": hscore, "transrate": transrate}[score]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 4)), np.arange(30) % 3
    bad = x.copy()
    bad[2, 3] = np.nan
    for args, msg in [
        ((bad, y), r"features contains 1 non-finite value\(s\) \(NaN or inf\), the first at "
                   r"row 2, column 3"),
        ((x, np.where(y == 1, 2, y)), r"class 1 has no training examples: labels holds labels "
                                      r"up to 2"),
        ((x, np.zeros(30, int)), r"labels has fewer than 2 classes"),
        ((x, y + 1), r"class 0 has no training examples"),
        ((x, y - 1), r"labels holds the negative label -1"),
        ((x, y.astype(float)), r"labels must hold integer class labels"),
        ((x, y[:-1]), r"features has 30 rows but labels has 29 entries"),
        ((x[:, 0], y), r"features must be 2-D"),
    ]:
        with pytest.raises(ValueError, match=msg):
            fn(*args)


def test_source_scores_reject_bad_inputs():
    rng = np.random.default_rng(0)
    p, y = rng.dirichlet(np.ones(5), size=20), np.arange(20) % 2
    with pytest.raises(ValueError, match=r"source_probs holds a negative value at row 0"):
        leep(np.log(p), y)
    with pytest.raises(ValueError, match=r"source_probs row 0 sums to 2 .*softmax"):
        leep(p * 2, y)
    nan = p.copy()
    nan[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"source_probs contains 1 non-finite"):
        leep(nan, y)
    with pytest.raises(ValueError, match=r"class 0 has no training examples"):
        leep(p, y + 1)
    with pytest.raises(ValueError, match=r"labels has fewer than 2 classes"):
        nce(p.argmax(1), np.zeros(20, int))
    with pytest.raises(ValueError, match=r"source_labels must hold integer class labels"):
        nce(p.argmax(1).astype(float), y)
    with pytest.raises(ValueError, match=r"source_labels has 19 rows but labels has 20"):
        nce(p.argmax(1)[:-1], y)


def test_the_registry_lists_every_proxy_once_with_what_it_needs():
    assert set(list_proxies()) == {"linear", "knn", "logme", "leep", "nce", "hscore", "hscore_lw",
                                   "transrate", "early_stop"}
    assert list_proxies("finetune") == ["early_stop"]
    assert proxies.get_proxy("logme").score is transferability.logme_proxy
