"""Cheap task-aware proxies: the linear probe, the k-nearest-neighbour classifier, and the
registry of every proxy of one probe trial (:func:`compute_proxies`).

All proxies score a (model, task) pair from one frozen forward pass: ``train_x`` / ``val_x`` are
the backbone's features of the task's training and validation examples, ``train_y`` / ``val_y``
the integer class labels. Each function takes numpy arrays or torch tensors and returns a float
(higher is better; the linear and kNN proxies are accuracies in [0, 1]). No Ray, MLflow or
Lightning here. The closed-form scores (LogME, LEEP, NCE, H-score, TransRate) live in
:mod:`selection.transferability` and are re-exported here; :data:`PROXY_NAMES` lists every proxy
:func:`compute_proxies` computes, :data:`NEEDS_SOURCE` those that need the backbone's source
classifier. Cost of a trial after the forward pass (N = 800, D = 2048, C = 10): the linear
probe's SGD dominates; the closed-form scores share one N x N Gram eigendecomposition.

Protocol (Renggli et al., "Which Model to Transfer? Finding the Needle in the Growing Haystack",
CVPR 2022, Sec. 3 and 4; numbers in /work/shared/DESIGN.md, "Protocol numbers that must not
drift"): VTAB-1k tasks, 800 training and 200 validation examples.

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

kNN proxy (:func:`knn_accuracy`)
    k-nearest-neighbour classification (Cover & Hart, 1967) of the validation examples against
    the training examples, Euclidean distance, majority vote; paper protocol k = 1. Used as a
    transferability proxy by Puigcerver et al., "Scalable Transfer Learning with Expert Models"
    (ICLR 2021) and Renggli et al. (CVPR 2022). Predictions reproduce scikit-learn's
    ``KNeighborsClassifier(n_neighbors=k, algorithm="brute")``; see :func:`knn_predict` for the
    distance arithmetic and the tie rules.

Labels everywhere are integers 0..C-1 with C = max(train labels) + 1; every class must have at
least one training example (see :func:`check_inputs`).
"""

from __future__ import annotations

import math
import time
from numbers import Integral, Real
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

__all__ = [
    "STD_FLOOR",
    "CheckedInputs",
    "check_inputs",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "linear_probe_runs",
]

#: Floor on the per-dimension training standard deviation used to standardise features.
STD_FLOOR = 1e-6

# kNN: at most this many float64 distances (64 MiB) in one block of eval rows x train rows.
_KNN_MAX_BLOCK_ELEMENTS = 1 << 23
# kNN: squared row norms above this could make a squared distance overflow to inf.
_KNN_MAX_SQ_NORM = 1e300
# kNN: up to this k, neighbours are found by k passes of argmin, above it by argpartition.
_KNN_ITERATIVE_MAX_K = 64
# kNN: float32 screening (see _Float32Screen) from this feature dimension on...
_KNN_SCREEN_MIN_DIM = 64
# ...and its candidates are used when they are at most this fraction of the training set.
_KNN_SCREEN_MAX_FRACTION = 0.5
# Linear probe: minibatch indices are generated this many steps at a time (bounded memory).
_INDEX_BLOCK_STEPS = 512
# Linear probe: validation rows scored at a time.
_EVAL_BLOCK_ROWS = 4096


# --------------------------------------------------------------------------------------------
# Input validation (shared by both proxies)
# --------------------------------------------------------------------------------------------


class CheckedInputs(NamedTuple):
    """Validated proxy inputs: features keep their type (numpy array or torch tensor)."""

    train_x: Any  # 2-D, real, finite; np.ndarray or torch.Tensor
    train_y: np.ndarray  # int64, values 0..n_classes-1, every class present
    eval_x: Any  # 2-D, real, finite, same number of columns as train_x
    eval_y: np.ndarray | None  # int64, values 0..n_classes-1 (or None when not given)
    n_classes: int


def _check_features(x: Any, name: str) -> Any:
    """Return x as a 2-D real np.ndarray or torch.Tensor; raise ValueError if it is not usable."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(
                f"{name} must hold real-valued features; got a torch tensor of dtype {x.dtype}. "
                f"Pass the backbone's features as a float tensor, e.g. {name}.float()."
            )
        shape = tuple(x.shape)
    else:
        try:
            x = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise ValueError(
                f"{name} could not be converted to an array ({exc}); pass a 2-D array of shape "
                f"(n_examples, n_features)."
            ) from exc
        if x.dtype.kind not in "fiu":
            raise ValueError(
                f"{name} must hold real-valued features; got dtype {x.dtype}. Pass a numeric "
                f"2-D array, e.g. np.asarray({name}, dtype=np.float32)."
            )
        shape = x.shape
    if len(shape) != 2:
        raise ValueError(
            f"{name} must be 2-D of shape (n_examples, n_features); got shape {shape}. "
            f"Flatten per-example features first, e.g. {name}.reshape(len({name}), -1)."
        )
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(
            f"{name} is empty (shape {shape}); it needs at least one example and one feature."
        )
    if isinstance(x, torch.Tensor):
        if x.is_floating_point():
            bad = ~torch.isfinite(x)
            n_bad = int(bad.sum())
            if n_bad:
                r, c = (int(v) for v in torch.nonzero(bad)[0])
                _raise_non_finite(name, n_bad, r, c)
    elif x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        n_bad = int(bad.sum())
        if n_bad:
            r, c = (int(v) for v in np.argwhere(bad)[0])
            _raise_non_finite(name, n_bad, r, c)
    return x


def _raise_non_finite(name: str, n_bad: int, row: int, col: int) -> None:
    raise ValueError(
        f"{name} contains {n_bad} non-finite value(s) (NaN or inf), the first at row {row}, "
        f"column {col}. Proxies need finite features: check the backbone's forward pass (e.g. "
        f"half-precision overflow) and the preprocessing, or drop those examples from {name} "
        f"and from its labels."
    )


def _check_labels(y: Any, name: str) -> np.ndarray:
    """Return y as a 1-D int64 np.ndarray of non-negative labels; raise ValueError otherwise."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (one integer class label per example); got shape {y.shape}. "
            f"Use {name}.ravel() for a column vector, or argmax for one-hot labels."
        )
    if y.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must hold integer class labels 0..C-1; got dtype {y.dtype}. Map label "
            f"names or floats to integers, e.g. np.unique({name}, return_inverse=True)[1]."
        )
    if y.size and int(y.min()) < 0:
        raise ValueError(
            f"{name} holds the negative label {int(y.min())}; class labels must be integers "
            f"0..C-1. Relabel, e.g. np.unique({name}, return_inverse=True)[1]."
        )
    return y.astype(np.int64, copy=False)


def _check_classes(y: np.ndarray, name: str, also: str = "") -> int:
    """C = max(y) + 1 for checked labels ``y``; ValueError unless C >= 2 and every class is present.

    ``also`` is added to the relabelling hint of the missing-class message (e.g. " (and map
    val_y the same way)").
    """
    n_classes = int(y.max()) + 1
    if n_classes < 2:
        raise ValueError(
            f"{name} has fewer than 2 classes (only label {n_classes - 1}); a classification "
            f"proxy needs at least 2 classes with labels 0..C-1."
        )
    counts = np.bincount(y, minlength=n_classes)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        shown = ", ".join(str(int(c)) for c in missing[:10])
        more = f" (and {missing.size - 10} more)" if missing.size > 10 else ""
        raise ValueError(
            f"class {shown}{more} has no training examples: {name} holds labels up to "
            f"{n_classes - 1} but not {shown}{more}. Labels must be contiguous 0..C-1 with every "
            f"class present in training; relabel with np.unique({name}, return_inverse=True)"
            f"{also} or resample the training split."
        )
    return n_classes


def check_inputs(
    train_x: Any,
    train_y: Any,
    eval_x: Any,
    eval_y: Any = None,
    *,
    eval_name: str = "val",
) -> CheckedInputs:
    """Validate the inputs of a proxy; raise ValueError with a fix-it message on any problem.

    Checks: features are 2-D, real and finite (NaN/inf -> error naming the array, the count and
    the first position); labels are 1-D integers >= 0; lengths of features and labels agree;
    train and eval features have the same number of columns; C = max(train_y) + 1 >= 2; every
    class 0..C-1 has at least one training example (a gap -> error naming the missing class);
    eval labels are < C (a label absent from training has no training examples either).
    ``eval_name`` names the evaluation arrays in messages (``val_x``/``val_y``, ``eval_x``...).
    """
    xn, yn = f"{eval_name}_x", f"{eval_name}_y"
    train_x = _check_features(train_x, "train_x")
    eval_x = _check_features(eval_x, xn)
    if train_x.shape[1] != eval_x.shape[1]:
        raise ValueError(
            f"train_x has {train_x.shape[1]} features per example but {xn} has "
            f"{eval_x.shape[1]}; both must come from the same backbone and layer."
        )
    train_y = _check_labels(train_y, "train_y")
    if len(train_y) != train_x.shape[0]:
        raise ValueError(
            f"train_x has {train_x.shape[0]} rows but train_y has {len(train_y)} labels; pass "
            f"one label per training example, in the same order."
        )
    n_classes = _check_classes(train_y, "train_y", f" (and map {yn} the same way)")
    if eval_y is not None:
        eval_y = _check_labels(eval_y, yn)
        if len(eval_y) != eval_x.shape[0]:
            raise ValueError(
                f"{xn} has {eval_x.shape[0]} rows but {yn} has {len(eval_y)} labels; pass one "
                f"label per evaluation example, in the same order."
            )
        if eval_y.size and int(eval_y.max()) >= n_classes:
            bad = sorted({int(v) for v in eval_y[eval_y >= n_classes]})[:10]
            raise ValueError(
                f"{yn} holds label(s) {bad} but train_y only has classes 0..{n_classes - 1}: "
                f"class {bad[0]} has no training examples. Use the same label mapping for both "
                f"splits and make sure every class appears in training."
            )
    return CheckedInputs(train_x, train_y, eval_x, eval_y, n_classes)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


# --------------------------------------------------------------------------------------------
# kNN proxy
# --------------------------------------------------------------------------------------------


def _as_float64_c(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float64)


def _row_sq_norms(x: np.ndarray) -> np.ndarray:
    # One BLAS ddot per row, the way scikit-learn's _sqeuclidean_row_norms64 computes them
    # (np.einsum sums in a different order and can differ in the last bit).
    with np.errstate(over="ignore"):  # inf norms are rejected by the caller
        return np.fromiter(map(np.dot, x, x), dtype=np.float64, count=x.shape[0])


def _exact_d2(xb: np.ndarray, xt: np.ndarray, nb: np.ndarray, nt: np.ndarray) -> np.ndarray:
    """Squared distances with scikit-learn's EuclideanArgKmin arithmetic, in the same order:
    d2 = max(0, (||a||^2 + (-2 a.b)) + ||b||^2) in float64, a.b by BLAS GEMM."""
    d2 = xb @ xt.T
    d2 *= -2.0
    d2 += nb[:, None]
    d2 += nt[None, :]
    np.maximum(d2, 0.0, out=d2)
    return d2


def _nearest(d2: np.ndarray, k: int) -> np.ndarray:
    """(rows, k) column indices of the k smallest entries per row, ties to the lowest index.

    Overwrites ``d2``. Entries may be +inf (never among the k nearest when at least k per row
    are finite)."""
    if k == 1:
        return np.argmin(d2, axis=1)[:, None]  # the first (lowest index) of equal minima
    if k <= _KNN_ITERATIVE_MAX_K:
        # k passes of argmin, each taking the first (lowest-index) remaining minimum:
        # faster than argpartition for small k, and ties resolve to the lowest index.
        nearest = np.empty((len(d2), k), dtype=np.int64)
        rows_b = np.arange(len(d2))
        for j in range(k):
            nearest[:, j] = np.argmin(d2, axis=1)
            d2[rows_b, nearest[:, j]] = np.inf
        return nearest
    nearest = np.argpartition(d2, k - 1, axis=1)[:, :k]  # k smallest, ties arbitrary
    near_d2 = np.take_along_axis(d2, nearest, axis=1)
    kth = near_d2.max(axis=1, keepdims=True)
    # Rows with more examples at the k-th distance than were taken: of those tied, keep the
    # ones of lowest training index (argpartition picks arbitrarily).
    ambiguous = np.flatnonzero((d2 == kth).sum(axis=1) > (near_d2 == kth).sum(axis=1))
    if ambiguous.size:
        da, ka = d2[ambiguous], kth[ambiguous]
        tied = da == ka
        room = k - (da < ka).sum(axis=1, keepdims=True)
        keep = (da < ka) | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= room))
        nearest[ambiguous] = np.nonzero(keep)[1].reshape(-1, k)  # exactly k per row
    return nearest


class _Float32Screen:
    """Float32 distances that rule training examples out before the exact float64 pass.

    The float32 estimate w of a squared distance d (as scikit-learn computes it in float64)
    satisfies |w - d| <= delta = kappa (||a||^2 + ||b||^2) + tiny, with
    kappa = 2 (gamma_D + 10 u), u = 2^-24 and gamma_D = D u / (1 - D u): the standard bound for
    a length-D dot product in any summation order (gamma_D sum |a_i b_i| <= gamma_D (||a||^2 +
    ||b||^2) / 2, times 2 for the -2 a.b), plus rounding the inputs, the norms and two float32
    additions (about 9 u (||a||^2 + ||b||^2)), plus float64's own error (far below u), then a
    safety factor 2; ``tiny`` covers float32 underflow. Hence the k nearest examples (ties
    included) all satisfy w - delta <= max(0, k-th smallest (w + delta)): only those columns
    are recomputed exactly, so predictions are unchanged. Used when D >= 64 (below, the exact
    GEMM is cheap anyway), D u < 0.01, and squared norms <= 1e30 (no float32 overflow).
    """

    def __init__(self, xtr: np.ndarray, tr_norms: np.ndarray, max_norm: float) -> None:
        d = xtr.shape[1]
        u = 2.0**-24
        gamma = d * u / (1.0 - d * u)
        self.kappa = 2.0 * (gamma + 10.0 * u)
        self.tiny = 1e-30 * d * (1.0 + math.sqrt(max_norm))
        self.xtr_m2 = xtr.astype(np.float32)
        self.xtr_m2 *= -2.0  # exact: a power of two
        self.tr_norms = tr_norms.astype(np.float32)
        self.tr_max = float(tr_norms.max())

    @staticmethod
    def usable(d: int, max_norm: float) -> bool:
        return d >= _KNN_SCREEN_MIN_DIM and d * 2.0**-24 < 0.01 and max_norm <= 1e30

    def candidates(self, xb: np.ndarray, nb: np.ndarray, k: int) -> np.ndarray:
        """Boolean (rows, n_train): examples that may be among the k nearest of each row."""
        w = xb.astype(np.float32) @ self.xtr_m2.T
        w += nb.astype(np.float32)[:, None]
        w += self.tr_norms[None, :]
        delta = self.kappa * (nb + self.tr_max) + self.tiny  # per row, >= every delta_ij
        upper = w.min(axis=1) if k == 1 else np.partition(w, k - 1, axis=1)[:, k - 1]
        threshold = np.maximum(upper + delta, 0.0) + delta
        return w <= threshold[:, None]


def _knn_predict_checked(chk: CheckedInputs, k: Any, chunk_size: Any) -> np.ndarray:
    n_train = chk.train_x.shape[0]
    k = _check_int(k, "k", 1)
    chunk_size = _check_int(chunk_size, "chunk_size", 1)
    if k > n_train:
        raise ValueError(
            f"k={k} exceeds the number of training examples ({n_train}); use k <= {n_train}."
        )
    xtr = _as_float64_c(chk.train_x)
    xev = _as_float64_c(chk.eval_x)
    ytr = chk.train_y
    n_classes = chk.n_classes
    tr_norms = _row_sq_norms(xtr)
    ev_norms = _row_sq_norms(xev)
    max_norm = max(tr_norms.max(), ev_norms.max())
    if max_norm > _KNN_MAX_SQ_NORM:
        raise ValueError(
            "train_x or eval_x has features so large that squared Euclidean distances overflow "
            "float64 (a squared row norm above 1e300); rescale the features, e.g. divide both "
            "by the same constant (the kNN prediction is invariant to a common scale)."
        )
    screen = None
    if _Float32Screen.usable(xtr.shape[1], max_norm):
        screen = _Float32Screen(xtr, tr_norms, max_norm)
    rows = max(1, min(chunk_size, _KNN_MAX_BLOCK_ELEMENTS // n_train))
    pred = np.empty(xev.shape[0], dtype=np.int64)
    for start in range(0, xev.shape[0], rows):
        xb = xev[start : start + rows]
        nb = ev_norms[start : start + rows]
        nearest = None
        if screen is not None:
            maybe = screen.candidates(xb, nb, k)
            cols = np.flatnonzero(maybe.any(axis=0))
            if len(cols) <= _KNN_SCREEN_MAX_FRACTION * n_train:
                d2 = _exact_d2(xb, xtr[cols], nb, tr_norms[cols])
                d2[~maybe[:, cols]] = np.inf  # ruled out: farther than the k-th nearest
                nearest = cols[_nearest(d2, k)]  # cols ascend: index order, hence ties, kept
        if nearest is None:
            nearest = _nearest(_exact_d2(xb, xtr, nb, tr_norms), k)
        if k == 1:
            pred[start : start + len(xb)] = ytr[nearest[:, 0]]
            continue
        r = np.repeat(np.arange(len(xb)), k)
        votes = np.bincount(r * n_classes + ytr[nearest.ravel()], minlength=len(xb) * n_classes)
        # argmax returns the smallest label among tied vote counts.
        pred[start : start + len(xb)] = votes.reshape(len(xb), n_classes).argmax(axis=1)
    return pred


def knn_predict(
    train_x: Any, train_y: Any, eval_x: Any, k: int = 1, chunk_size: int = 2048
) -> np.ndarray:
    """k-nearest-neighbour predictions for ``eval_x`` (Euclidean distance, majority vote).

    Returns an int64 array of predicted labels, one per row of ``eval_x``; the result equals
    ``KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(train_x, train_y)
    .predict(eval_x)`` of scikit-learn (checked against 1.9; see the tie rules below).

    Distances: inputs are converted to float64 on CPU (GPU tensors too) and the squared
    distance is computed with scikit-learn's own arithmetic, ``max(0, (||a||^2 + (-2 a.b)) +
    ||b||^2)``: the row norms by one BLAS ``ddot`` per row, ``a.b`` by BLAS GEMM, added in that
    order, float32 input upcast to float64 first, as scikit-learn's ``EuclideanArgKmin`` does.
    The resulting floats were checked to be bit-identical to scikit-learn's (numpy 2 / scipy
    OpenBLAS); a different BLAS build could differ in the last bit, which matters only for
    near-ties. So can the position of a column within the GEMM kernel's tiles once D is a few
    dozen or more: the dot products of an eval point with two exact duplicates of a training
    point came out 1 ulp apart at D = 96 (in either library, depending on how it cuts the
    matrix), so a point equidistant from duplicates that carry different labels can be
    predicted differently. Ranking uses squared distances (the square root is monotone).

    Float32 screen (D >= 64): a float32 GEMM first estimates every distance, with a proven
    bound on its error (see ``_Float32Screen``); training examples that cannot be among the k
    nearest are ruled out, and the exact float64 distances above are computed only for the
    remaining columns (all of them when more than half remain). The result is unchanged; the
    float32 GEMM costs about half of the float64 one.

    Tie rules:

    * Equal distances, k = 1: the training example of lowest index wins. This is what
      scikit-learn does: its ``heap_push`` rejects a value equal to the current worst (``val >=
      values[0]``), so the first example seen is kept, and with several threads the per-thread
      heaps (contiguous, ascending ranges of training rows) are merged in thread order.
    * Equal distances at the k-th place, k > 1: the examples of lowest training index are
      taken. scikit-learn's heap has no such rule: which of the tied examples survives depends
      on the order of the heap operations (e.g. k=3 and squared distances [4, 4, 2.25, 1] keep
      index 1, not 0) and, when it parallelises over training rows, on the number of threads,
      so it can differ between machines. The two agree whenever the tied examples share a
      label (e.g. duplicated training points), or the tie is not at the k-th place.
    * Vote ties: the smallest label among those with the most votes wins (scikit-learn takes
      ``argmax`` of the class counts in ``predict_proba`` and its ``weighted_mode`` fallback
      also picks the smallest tied value); labels are 0..C-1, so class order is label order.

    Memory and cost: eval rows are processed in blocks of at most ``min(chunk_size, 2**23 //
    n_train)`` rows, so one block of distances is at most 64 MiB; the full eval x train matrix
    is never built (50k x 50k works). Per block: one float32 GEMM (the screen, D >= 64) and a
    float64 GEMM over the remaining columns, then k passes of ``argmin`` (k <= 64;
    ``argpartition`` plus a tie fix-up above). ``chunk_size`` does not change the result.

    Raises ValueError on invalid inputs (see :func:`check_inputs`), k < 1, k > n_train, or
    features so large that squared distances would overflow float64.
    """
    chk = check_inputs(train_x, train_y, eval_x, None, eval_name="eval")
    return _knn_predict_checked(chk, k, chunk_size)


def knn_accuracy(
    train_x: Any,
    train_y: Any,
    eval_x: Any,
    eval_y: Any,
    k: int = 1,
    metric: str = "euclidean",
    chunk_size: int = 2048,
) -> float:
    """kNN proxy: accuracy of k-NN classification of ``eval_x`` against ``train_x``.

    Paper protocol (Renggli et al., CVPR 2022; Puigcerver et al., ICLR 2021): k = 1, Euclidean
    distance, the 200 validation examples of a VTAB-1k task against its 800 training examples.
    Predictions are :func:`knn_predict`'s (identical to scikit-learn's brute-force
    ``KNeighborsClassifier``; tie rules documented there); the proxy is the fraction of eval
    examples whose prediction equals ``eval_y``. Only ``metric="euclidean"`` is supported.
    """
    if metric != "euclidean":
        raise ValueError(
            f"metric={metric!r} is not supported; the kNN proxy uses metric='euclidean' only "
            f"(standardise or normalise the features yourself for other geometries)."
        )
    chk = check_inputs(train_x, train_y, eval_x, eval_y, eval_name="eval")
    pred = _knn_predict_checked(chk, k, chunk_size)
    return float(np.mean(pred == chk.eval_y))


# --------------------------------------------------------------------------------------------
# Linear proxy
# --------------------------------------------------------------------------------------------


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
    device = x.device
    n, d = x.shape
    r_, l_, c_ = repeats, len(lrs), n_classes
    bsz = min(batch_size, n)
    onehot = torch.nn.functional.one_hot(y, c_).to(torch.float32)
    # Weights of all heads: repetition r, columns [l*C, (l+1)*C) are the head of lrs[l].
    w = torch.zeros(r_, d, l_ * c_, dtype=torch.float32, device=device)
    b = torch.zeros(r_, 1, l_ * c_, dtype=torch.float32, device=device)
    scale = torch.tensor([lr / bsz for lr in lrs], dtype=torch.float32, device=device)
    scale = scale.repeat_interleave(c_).view(1, 1, l_ * c_)
    samplers = [_EpochSampler(n, bsz, seed + r) for r in range(r_)]
    done = 0
    while done < steps:
        block = min(_INDEX_BLOCK_STEPS, steps - done)
        # (block, R*B): row t holds repetition 0's batch, then repetition 1's, ...
        idx = torch.cat([s.next(block) for s in samplers], dim=1).to(device)
        for t in range(block):
            it = idx[t]
            xb = x.index_select(0, it).view(r_, bsz, d)
            yb = onehot.index_select(0, it).view(r_, bsz, 1, c_)
            logits = torch.baddbmm(b, xb, w).view(r_, bsz, l_, c_)
            # softmax by hand: torch.softmax over a short last dimension is ~3x slower on CPU.
            e = logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_()
            e = e.div_(e.sum(dim=-1, keepdim=True))
            g = e.sub_(yb).view(r_, bsz, l_ * c_).mul_(scale)
            w.baddbmm_(xb.transpose(1, 2), g, alpha=-1.0)
            b.sub_(g.sum(dim=1, keepdim=True))
        done += block
    w = w.view(r_, d, l_, c_).permute(0, 2, 1, 3).contiguous()
    return w, b.view(r_, l_, c_)


@torch.no_grad()
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
    device = gram.device
    n = gram.shape[0]
    r_, l_, c_ = repeats, len(lrs), n_classes
    bsz = min(batch_size, n)
    # Transposed layout (dual weights (R, L*C, N), logits (R, L*C, B)): the product is then
    # (L*C x N) @ (N x B), which BLAS runs ~1.5x faster on CPU than (B x N) @ (N x L*C).
    onehot_t = torch.nn.functional.one_hot(y, c_).to(torch.float32).T.contiguous()  # (C, N)
    a_t = torch.zeros(r_, l_ * c_, n, dtype=torch.float32, device=device)
    b = torch.zeros(r_, l_ * c_, 1, dtype=torch.float32, device=device)
    # Minus lr / B per column: g below is already the step, added with scatter_add_.
    step = torch.tensor([-lr / bsz for lr in lrs], dtype=torch.float32, device=device)
    step = step.repeat_interleave(c_).view(1, l_ * c_, 1)
    samplers = [_EpochSampler(n, bsz, seed + r) for r in range(r_)]
    done = 0
    while done < steps:
        block = min(_INDEX_BLOCK_STEPS, steps - done)
        idx = torch.cat([s.next(block) for s in samplers], dim=1).to(device)
        for t in range(block):
            it = idx[t]
            kb = gram.index_select(0, it).view(r_, bsz, n)  # K[batch], rows = columns (K = K^T)
            logits = torch.baddbmm(b, a_t, kb.transpose(1, 2)).view(r_, l_, c_, bsz)
            e = logits.sub_(logits.amax(dim=2, keepdim=True)).exp_()
            e = e.div_(e.sum(dim=2, keepdim=True))
            yb = onehot_t.index_select(1, it).view(c_, r_, bsz).transpose(0, 1).unsqueeze(1)
            g = e.sub_(yb).view(r_, l_ * c_, bsz).mul_(step)
            # scatter_add_ accumulates repeated indices (a batch spanning two epochs may hold an
            # example twice), exactly as X_B^T G sums both copies.
            a_t.scatter_add_(2, it.view(r_, 1, bsz).expand(r_, l_ * c_, bsz), g)
            b.add_(g.sum(dim=2, keepdim=True))
        done += block
    return a_t.transpose(1, 2), b.view(r_, 1, l_ * c_)


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
    threads (about 10-20 % with 2 idle cores), while more threads than free cores make OpenMP
    barriers stall on every op (on a loaded 2-core machine: 78 s with 2 threads instead of
    1.1 s with 1, D=128, N=800, C=10, 10 heads, 2500 steps).
    """
    chk = check_inputs(train_x, train_y, val_x, val_y, eval_name="val")
    steps = _check_int(steps, "steps", 1)
    repeats = _check_int(repeats, "repeats", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
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
        num_threads = _check_int(num_threads, "num_threads", 1)
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


# --------------------------------------------------------------------------------------------
# Registry: every task-aware proxy of one probe trial
# --------------------------------------------------------------------------------------------

#: Proxies :func:`compute_proxies` knows, in the order reports list them.
PROXY_NAMES = ("linear", "knn", "logme", "leep", "nce", "hscore", "hscore_lw", "transrate")
#: Proxies that need the backbone's source classifier output (``source_probs_train``).
NEEDS_SOURCE = frozenset({"leep", "nce"})

# The closed-form scores live in selection.transferability, which imports this module's input
# checks; they are re-exported here lazily (PEP 562) so that either module can be imported first.
_TRANSFERABILITY_EXPORTS = ("TaskFeatures", "hscore", "leep", "logme", "nce", "transrate")
__all__ += ["NEEDS_SOURCE", "PROXY_NAMES", "compute_proxies", "list_proxies",
            *_TRANSFERABILITY_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _TRANSFERABILITY_EXPORTS:
        from selection import transferability

        return getattr(transferability, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def list_proxies() -> list[str]:
    """Names of the proxies :func:`compute_proxies` computes (:data:`PROXY_NAMES`)."""
    return list(PROXY_NAMES)


_LINEAR_KEYS = ("lrs", "steps", "repeats", "batch_size", "seed", "num_threads")
_KNN_KEYS = ("k", "metric", "chunk_size")


def _check_names(names: Any) -> list[str]:
    if isinstance(names, str):
        names = [names]
    names = list(dict.fromkeys(names))  # drop repeats, keep order
    unknown = [n for n in names if n not in PROXY_NAMES]
    if unknown:
        raise ValueError(
            f"unknown proxy name(s) {unknown}; known proxies: {', '.join(PROXY_NAMES)} "
            f"(early_stop is a fine-tune, not a feature proxy: see lightning_modules.training)."
        )
    return names


def _check_kwargs(kwargs: Any, name: str, allowed: Sequence[str]) -> dict[str, Any]:
    kwargs = dict(kwargs or {})
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{name} has unknown key(s) {unknown}; allowed: {', '.join(allowed)}.")
    return kwargs


def compute_proxies(
    names: Sequence[str],
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    *,
    source_probs_train: Any = None,
    linear_kwargs: dict[str, Any] | None = None,
    knn_kwargs: dict[str, Any] | None = None,
    num_threads: int | None = 1,
) -> dict[str, tuple[float, float]]:
    """Every requested proxy of one probe trial: ``{name: (value, seconds)}``, in request order.

    Inputs are one frozen forward pass: features and labels of the task's training and
    validation splits (numpy or torch), and optionally ``source_probs_train`` (N_train x Z, the
    softmax of the backbone's source classifier on the training examples). Which data each uses:

    * ``linear`` (:func:`linear_probe`, ``linear_kwargs``) and ``knn`` (:func:`knn_accuracy`,
      ``knn_kwargs``): trained on train, scored on val (paper protocol);
    * ``logme``, ``hscore``, ``hscore_lw`` (H-score with Ledoit-Wolf shrinkage) and
      ``transrate``: train features and labels (:mod:`selection.transferability`);
    * ``leep``: ``source_probs_train``; ``nce``: its argmax as source labels, with train labels.

    Proxies in :data:`NEEDS_SOURCE` are left out of the result when ``source_probs_train`` is
    None (a backbone without a source head). Inputs are checked once, up front, with the
    messages of :func:`check_inputs` (NaN/inf, missing classes, a single class, bad shapes);
    unknown proxy names or kwargs keys raise ValueError listing the known ones.

    ``num_threads`` caps the BLAS threads (threadpoolctl) of the numpy proxies for this call;
    1 by default, for the reason :func:`linear_probe_runs` gives for torch: the matrices are small
    (N x N with N = 800), and more threads than free cores stall (an 800 x 800 eigh took 0.14 s
    on 1 thread and 0.8 s on 2 on a loaded 2-core machine). ``None`` keeps the BLAS setting. The
    linear probe's torch threads are ``linear_kwargs["num_threads"]`` (default 1).

    Timing: ``seconds`` is the wall time of that proxy. LogME, both H-scores and TransRate share
    one :class:`~selection.transferability.TaskFeatures` (float64 copy, Gram matrices and their
    eigendecompositions, computed on first use): a shared piece is charged to the first proxy
    that needs it, so the sum of the seconds is the trial's proxy time.
    """
    from threadpoolctl import threadpool_limits

    from selection import transferability as T

    names = _check_names(names)
    if num_threads is not None:
        num_threads = _check_int(num_threads, "num_threads", 1)
    linear_kwargs = _check_kwargs(linear_kwargs, "linear_kwargs", _LINEAR_KEYS)
    knn_kwargs = _check_kwargs(knn_kwargs, "knn_kwargs", _KNN_KEYS)
    chk = check_inputs(train_x, train_y, val_x, val_y, eval_name="val")
    probs = None
    if source_probs_train is not None:
        probs = T.check_source_probs(source_probs_train, "source_probs_train")
        if probs.shape[0] != len(chk.train_y):
            raise ValueError(
                f"source_probs_train has {probs.shape[0]} rows but train_x has "
                f"{len(chk.train_y)}; pass the source classifier's softmax on the same training "
                f"examples, in the same order."
            )
    tf: list[Any] = []  # the shared TaskFeatures, built by the first score that needs it

    def task() -> Any:
        if not tf:
            tf.append(T.TaskFeatures(chk.train_x, chk.train_y, chk.n_classes))
        return tf[0]

    scorers = {
        "linear": lambda: linear_probe(chk.train_x, chk.train_y, chk.eval_x, chk.eval_y,
                                       **linear_kwargs),
        "knn": lambda: knn_accuracy(chk.train_x, chk.train_y, chk.eval_x, chk.eval_y,
                                    **knn_kwargs),
        "logme": lambda: T.logme_score(task()),
        "leep": lambda: T.leep_score(probs, chk.train_y, chk.n_classes),
        "nce": lambda: T.nce_score(probs.argmax(axis=1), chk.train_y, chk.n_classes),
        "hscore": lambda: T.hscore_score(task()),
        "hscore_lw": lambda: T.hscore_score(task(), regularized=True),
        "transrate": lambda: T.transrate_score(task()),
    }
    out: dict[str, tuple[float, float]] = {}
    with threadpool_limits(limits=num_threads, user_api="blas"):
        for name in names:
            if name in NEEDS_SOURCE and probs is None:
                continue
            start = time.perf_counter()
            value = float(scorers[name]())
            out[name] = (value, time.perf_counter() - start)
    return out
