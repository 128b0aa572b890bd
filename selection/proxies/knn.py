"""The kNN proxy: k-nearest-neighbour accuracy of the validation examples against the training
examples, on one frozen forward pass's features.

k-nearest-neighbour classification (Cover & Hart, 1967), Euclidean distance, majority vote; paper
protocol k = 1, the 200 validation examples of a VTAB-1k task against its 800 training examples
(Renggli et al., CVPR 2022; Puigcerver et al., "Scalable Transfer Learning with Expert Models",
ICLR 2021). Predictions reproduce scikit-learn's ``KNeighborsClassifier(n_neighbors=k,
algorithm="brute")``; see :func:`knn_predict` for the distance arithmetic and the tie rules.
Labels are integers 0..C-1 with every class present in training (:mod:`selection.proxies.inputs`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from selection.proxies.inputs import CheckedInputs, check_inputs, check_int
from selection.proxies.registry import ProxyInputs, register_proxy

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
    k = check_int(k, "k", 1)
    chunk_size = check_int(chunk_size, "chunk_size", 1)
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


@register_proxy("knn", settings=("k", "metric", "chunk_size"))
def knn_proxy(inputs: ProxyInputs, k: int = 1, metric: str = "euclidean",
              chunk_size: int = 2048) -> float:
    """k-NN accuracy of validation against training features (paper: k = 1, Euclidean)."""
    return knn_accuracy(inputs.train_x, inputs.train_y, inputs.val_x, inputs.val_y, k=k,
                        metric=metric, chunk_size=chunk_size)
