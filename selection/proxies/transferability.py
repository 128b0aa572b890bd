"""Closed-form transferability scores of the features: LogME, H-score (plain and shrunk), TransRate.

Each score rates how well a frozen backbone suits a labelled target task from one forward pass
over the task's training split, without training a head: ``features`` (N x D, the backbone's
penultimate activations) and ``labels`` (N integer target classes 0..C-1). The scores of the
source classifier's predictions (LEEP, NCE) are in :mod:`selection.proxies.source_scores`.
Arrays in (numpy or torch, any device), a float out, higher is better. Everything is computed in float64 on CPU.

Cost: every score reduces to an eigendecomposition of the N x N Gram matrix when N <= D (VTAB-1k:
N = 800, D = 512..4096), else to a thin SVD of the N x D matrix; nothing of size D x D is formed.
:func:`selection.proxies.compute_proxies` shares these decompositions between the scores of one
probe trial (:class:`TaskFeatures`). Input checks are :mod:`selection.proxies.inputs`' (``ValueError``
naming the array and the fix: NaN/inf, a class without examples, a single class, labels that are
not 0..C-1).

References: You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021; Bao et al., "An Information-Theoretic Approach to
Transferability in Task Transfer Learning", ICIP 2019 (H-score); Ibrahim et al., "Newer is not
always better: Rethinking transferability metrics, their peculiarities, stability and
performance", ECML-PKDD 2022 (shrinkage H-score); Huang et al., "Frustratingly Easy
Transferability Estimation", ICML 2022 (TransRate).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, NamedTuple

import numpy as np

from selection.proxies.inputs import check_features, check_task_labels, to_numpy64
from selection.proxies.registry import ProxyInputs, register_proxy

__all__ = [
    "TaskFeatures",
    "hscore",
    "hscore_score",
    "ledoit_wolf_shrinkage",
    "logme",
    "logme_fit",
    "logme_score",
    "transrate",
    "transrate_score",
]

_EPS = np.finfo(np.float64).eps
# LogME: alpha and beta stay within these bounds, so degenerate features (constant, or
# orthogonal to a class indicator) still give a finite score instead of 0/0.
_LOGME_BOUNDS = (1e-150, 1e150)


# --------------------------------------------------------------------------------------------
# Inputs and shared decompositions
# --------------------------------------------------------------------------------------------



class _Spectrum(NamedTuple):
    """Left singular pairs of an N x D matrix A: A A^T = U diag(lam) U^T restricted to U."""

    lam: np.ndarray  # (k,) squared singular values, descending, >= 0; k = min(N, D)
    u: np.ndarray  # (N, k) orthonormal columns


def _left_spectrum(a: np.ndarray, gram: np.ndarray | None) -> _Spectrum:
    """Eigh of the N x N Gram matrix when N <= D (``gram`` = A A^T), else a thin SVD of A.

    Both give the min(N, D) squared singular values and left singular vectors; the remaining
    D - N directions of A^T A (when N < D) have eigenvalue 0 and are accounted for by the
    callers in closed form. Round-off can make Gram eigenvalues slightly negative: clipped at 0.
    """
    if gram is not None:
        lam, u = np.linalg.eigh(gram)
        return _Spectrum(np.clip(lam[::-1], 0.0, None), u[:, ::-1])
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    return _Spectrum(s * s, u)


class TaskFeatures:
    """Float64 features and labels of one task's training split, and the decompositions the
    scores share, each computed on first use (Gram matrices, spectra of the raw and of the
    centred features). Build with :meth:`from_arrays` (validates), or directly from inputs
    already checked (features numpy or torch, labels int64 0..C-1, every class present), and
    pass to the ``*_score`` functions; :func:`selection.proxies.compute_proxies` builds one per
    probe trial."""

    def __init__(self, x: Any, y: np.ndarray, n_classes: int) -> None:
        self.x = to_numpy64(x)
        self.y = y
        self.n_classes = n_classes
        self.n, self.d = self.x.shape

    @classmethod
    def from_arrays(cls, features: Any, labels: Any) -> TaskFeatures:
        x = check_features(features, "features")
        y, n_classes = check_task_labels(labels, x.shape[0], "features")
        return cls(x, y, n_classes)

    @cached_property
    def counts(self) -> np.ndarray:
        return np.bincount(self.y, minlength=self.n_classes).astype(np.float64)

    @cached_property
    def onehot(self) -> np.ndarray:
        out = np.zeros((self.n, self.n_classes))
        out[np.arange(self.n), self.y] = 1.0
        return out

    @cached_property
    def gram(self) -> np.ndarray | None:
        return self.x @ self.x.T if self.n <= self.d else None

    @cached_property
    def spectrum(self) -> _Spectrum:
        return _left_spectrum(self.x, self.gram)

    @cached_property
    def xc(self) -> np.ndarray:
        """Features centred with their mean over the N examples."""
        return self.x - self.x.mean(axis=0)

    @cached_property
    def centred_gram(self) -> np.ndarray | None:
        # Formed from the centred features, not as J G J: ReLU features have a large common
        # mean, and centring G would cancel most of its digits.
        return self.xc @ self.xc.T if self.n <= self.d else None

    @cached_property
    def centred_spectrum(self) -> _Spectrum:
        return _left_spectrum(self.xc, self.centred_gram)

    def class_sums(self, u: np.ndarray) -> np.ndarray:
        """(C, k): sum of the rows of ``u`` over the examples of each class."""
        return self.onehot.T @ u

    def rank_mask(self, lam: np.ndarray) -> np.ndarray:
        """Squared singular values above max(N, D) eps lam_max: numpy's matrix_rank tolerance
        for the Gram matrix, whose eigenvalues carry round-off of about eps lam_max (so the
        centring direction, exactly 0 in exact arithmetic, falls below it)."""
        top = lam[0] if lam.size else 0.0
        return lam > top * max(self.n, self.d) * _EPS


# --------------------------------------------------------------------------------------------
# LogME
# --------------------------------------------------------------------------------------------


def logme(features: Any, labels: Any, *, tol: float = 1e-12, max_iter: int = 10_000) -> float:
    r"""LogME (You et al., ICML 2021): mean over classes of the maximum log evidence per example.

    For each class c the target is its indicator column y = onehot(labels)[:, c] and the model is
    Bayesian linear regression on the raw features F (N x D, no bias, no standardisation, as in
    the paper), w ~ N(0, alpha^-1 I_D), y | F, w ~ N(F w, beta^-1 I_N). Its log evidence is

        L(alpha, beta) = D/2 log alpha + N/2 log beta - N/2 log 2 pi
                         - beta/2 ||y - F m||^2 - alpha/2 m^T m - 1/2 log det A,
        A = alpha I_D + beta F^T F,   m = beta A^{-1} F^T y.

    alpha and beta maximise it through MacKay's fixed-point iteration (the paper's Algorithm 1),
    from alpha = beta = 1:

        gamma = sum_j beta s_j / (alpha + beta s_j),  alpha <- gamma / m^T m,
        beta <- (N - gamma) / ||y - F m||^2,

    with s_j the eigenvalues of F^T F, until L / N changes by at most ``tol`` in one step (for
    every class; at most ``max_iter`` steps). LogME = mean over c of L / N at the final alpha,
    beta.

    All D eigenvalues count. F^T F has only k = min(N, D) nonzero ones (their eigenvectors are
    those of the N x N Gram matrix F F^T, which is what is decomposed when N <= D); the other
    D - k contribute log alpha each to log det A. Then

        D/2 log alpha - 1/2 log det A = -1/2 sum_{j <= k} log(1 + beta s_j / alpha),

    which is what is computed. (Iterating on the thin SVD of F while keeping D/2 log alpha but only
    k terms of log det A, a common shortcut, adds (D - k)/2 log alpha and is wrong when N < D,
    as on VTAB-1k with 2048-d features.) In the eigenbasis, with x = U^T y:
    m^T m = sum beta^2 s_j x_j^2 / (alpha + beta s_j)^2,
    ||y - F m||^2 = sum x_j^2 alpha^2 / (alpha + beta s_j)^2 + ||y - U U^T y||^2 and
    N - gamma = (N - k) + sum alpha / (alpha + beta s_j), the last without cancellation.

    When N <= D the features can often interpolate y; the maximum is then approached as
    beta -> infinity (the noise-free evidence), which the iteration follows geometrically with
    these formulas (the D x D formulas lose N - gamma to cancellation there). Eigenvalues below
    numpy's rank tolerance are set to 0. Exactly repeated examples with equal labels make the
    evidence unbounded; alpha and beta are confined to [1e-150, 1e150], so such (and other
    degenerate) inputs give a large but finite score. The authors' code stops after at most 11
    steps or a 1e-3 relative change of alpha/beta (one version also adds 1e-5 to both
    denominators), so its values can differ slightly from these converged ones. Float64.
    """
    return logme_score(TaskFeatures.from_arrays(features, labels), tol=tol, max_iter=max_iter)


def logme_score(tf: TaskFeatures, *, tol: float = 1e-12, max_iter: int = 10_000) -> float:
    """:func:`logme` on prepared :class:`TaskFeatures` (shares its Gram spectrum)."""
    evidence, _, _ = logme_fit(tf, tol=tol, max_iter=max_iter)
    return float(np.mean(evidence / tf.n))


def logme_fit(
    tf: TaskFeatures, *, tol: float = 1e-12, max_iter: int = 10_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: the maximum log evidence (not divided by N), and the maximising alpha, beta."""
    if not (tol > 0) or isinstance(max_iter, bool) or int(max_iter) < 1:
        raise ValueError(f"tol must be > 0 and max_iter >= 1; got tol={tol!r}, "
                         f"max_iter={max_iter!r}.")
    n = tf.n
    lam, u = tf.spectrum
    # Eigenvalues below numpy's rank tolerance are round-off of exact zeros (e.g. repeated
    # examples): treat them as 0, else a tiny alpha/beta would count them as fitted directions.
    lam = np.where(tf.rank_mask(lam), lam, 0.0)[:, None]  # (k, 1)
    y = tf.onehot
    x = u.T @ y  # (k, C)
    x2 = x * x
    # Part of y outside the span of U (only when N > D): no feature direction can fit it.
    out = ((y - u @ x) ** 2).sum(axis=0) if u.shape[1] < n else np.zeros(tf.n_classes)
    lo, hi = _LOGME_BOUNDS

    def at(alpha: np.ndarray, beta: np.ndarray):
        t = alpha / beta  # (C,)
        den = lam + t  # (k, C): (alpha + beta s_j) / beta
        gamma = (lam / den).sum(axis=0)
        # N - gamma without cancellation: gamma -> N as alpha/beta -> 0 when N <= D.
        n_gamma = (n - len(lam)) + (t / den).sum(axis=0)
        m2 = (lam * x2 / (den * den)).sum(axis=0)
        res = (x2 * (t / den) ** 2).sum(axis=0) + out
        evidence = (
            n / 2.0 * np.log(beta)
            - 0.5 * np.log1p(lam / t).sum(axis=0)
            - beta / 2.0 * res
            - alpha / 2.0 * m2
            - n / 2.0 * np.log(2.0 * np.pi)
        )
        return gamma, n_gamma, m2, res, evidence

    alpha = np.ones(tf.n_classes)
    beta = np.ones(tf.n_classes)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        gamma, n_gamma, m2, res, evidence = at(alpha, beta)
        for _ in range(int(max_iter)):
            a_new, b_new = gamma / m2, n_gamma / res
            # 0/0 (e.g. constant features: gamma = m2 = 0, L does not depend on alpha): keep.
            alpha = np.where(np.isnan(a_new), alpha, np.clip(a_new, lo, hi))
            beta = np.where(np.isnan(b_new), beta, np.clip(b_new, lo, hi))
            previous = evidence
            gamma, n_gamma, m2, res, evidence = at(alpha, beta)
            if np.all(np.abs(evidence - previous) <= tol * n):
                break
    return evidence, alpha, beta


# --------------------------------------------------------------------------------------------
# H-score
# --------------------------------------------------------------------------------------------


def hscore(features: Any, labels: Any, regularized: bool = False) -> float:
    r"""H-score (Bao et al., ICIP 2019), or its shrinkage version (Ibrahim et al., 2022).

    With f the features and g_i = E[f | y_i] the mean feature of example i's class,

        H = tr(cov(f)^+ cov(g))                                      (``regularized=False``)
        H_alpha = tr(cov_alpha(f)^{-1} (1 - alpha) cov(g))           (``regularized=True``)

    cov(.) is the empirical covariance over the N examples (1/N; the plain H-score is invariant
    to this choice), ^+ the pseudo-inverse, and cov_alpha(f) = (1 - alpha) cov(f) + alpha mu I
    the Ledoit-Wolf estimate, mu = tr cov(f) / D, with the shrinkage alpha of
    ``sklearn.covariance.ledoit_wolf_shrinkage`` (computed here in closed form from the Gram
    spectrum; equal to scikit-learn's to rounding). Higher is better; 0 <= H <= C - 1.

    Computation: with the centred features X = U diag(s) V^T, cov(g) = X^T P X / N where P
    averages within classes, so in the eigenbasis

        H = sum_j u_j^T P u_j,
        H_alpha = sum_j (1 - alpha) (s_j^2 / N) u_j^T P u_j / ((1 - alpha) s_j^2 / N + alpha mu),

    both over the j with s_j^2 > max(N, D) eps s_max^2 (numpy's matrix_rank tolerance for the
    Gram matrix; it drops the centring direction, 0 in exact arithmetic; for H_alpha the dropped
    terms are that small anyway). Consequence worth knowing:
    when the N centred training rows are linearly independent (N <= D, e.g. VTAB-1k, 800 x 2048)
    the projection sum_j u_j u_j^T is I - 11^T/N and the plain H-score is exactly C - 1 for every
    backbone; reference implementations that pseudo-invert the D x D covariance with
    rcond=1e-15 return round-off noise around that value. It is NaN here (no score: it cannot
    tell models apart; :data:`HSCORE_DEGENERATE`). Use ``regularized=True`` there (that is the
    point of Ibrahim et al.). Differences from tllib's ``regularized_h_score``: it divides
    cov(g) by N - 1 but cov_alpha(f) by N, so its values are N / (N - 1) times these (same
    ranking within a task). Float64.
    """
    return hscore_score(TaskFeatures.from_arrays(features, labels), regularized=regularized)


def ledoit_wolf_shrinkage(tf: TaskFeatures) -> float:
    """Ledoit-Wolf shrinkage of the centred features, scikit-learn's formula, from the spectrum.

    With S = X^T X / N (X centred), mu = tr S / D and r_i = ||x_i||^2:
    delta = (||S||_F^2 - (tr S)^2 / D) / D, beta = (sum_i r_i^2 / N - ||S||_F^2) / (D N),
    shrinkage = min(beta, delta) / delta (0 for D = 1 or delta = 0). ||S||_F^2 = sum s_j^4 / N^2.
    """
    if tf.d == 1:
        return 0.0
    n, d = tf.n, tf.d
    lam = tf.centred_spectrum.lam
    tr_s = lam.sum() / n
    fro2 = (lam * lam).sum() / n**2
    r = np.einsum("ij,ij->i", tf.xc, tf.xc)
    beta = ((r * r).sum() / n - fro2) / (d * n)
    delta = (fro2 - tr_s * tr_s / d) / d
    beta = min(beta, delta)
    return 0.0 if beta <= 0 or delta <= 0 else float(beta / delta)


def hscore_score(tf: TaskFeatures, *, regularized: bool = False) -> float:
    """:func:`hscore` on prepared :class:`TaskFeatures` (shares the centred spectrum)."""
    lam, u = tf.centred_spectrum
    p = (tf.class_sums(u) ** 2 / tf.counts[:, None]).sum(axis=0)  # u_j^T P u_j
    keep = tf.rank_mask(lam)
    if not regularized:
        if int(keep.sum()) >= tf.n - 1:  # degenerate: C - 1 for every backbone (docstring)
            return float("nan")
        return float(p[keep].sum())
    a = ledoit_wolf_shrinkage(tf)
    mu = lam.sum() / (tf.n * tf.d)
    var = (1.0 - a) * lam[keep] / tf.n
    return float(np.sum(var * p[keep] / (var + a * mu)))


# --------------------------------------------------------------------------------------------
# TransRate
# --------------------------------------------------------------------------------------------


def transrate(features: Any, labels: Any, eps: float = 1e-4) -> float:
    r"""TransRate (Huang et al., ICML 2022): coding rate of the features minus that given labels.

    With Z the features centred over all N examples, Z_c the rows of class c (n_c of them) and
    the coding rate R(A, eps) = 1/2 log det(I + A^T A / (n_A eps)) of an n_A x D matrix A,

        TransRate = R(Z, eps) - 1/C sum_c R(Z_c, eps),

    as in the authors' code (eps = 1e-4; the class term is the mean over classes, and classes are
    not re-centred). Higher is better. Each log-determinant is taken on the smaller side
    (det(I_D + A^T A t) = det(I_n + A A^T t)): Cholesky of an n_c x n_c block of the centred Gram
    matrix when n_c <= D, else of the D x D matrix. Float64.
    """
    if not (eps > 0):
        raise ValueError(f"eps must be > 0 (the distortion of the coding rate); got {eps!r}.")
    return transrate_score(TaskFeatures.from_arrays(features, labels), eps=eps)


def _half_logdet_eye_plus(gram_or_cov: np.ndarray, scale: float, rows: np.ndarray) -> float:
    """1/2 log det(I + scale G) for G = ``rows`` @ ``rows``.T (or ``rows``.T @ ``rows``)."""
    m = np.eye(len(gram_or_cov)) + scale * gram_or_cov
    try:
        return float(np.log(np.diag(np.linalg.cholesky(m))).sum())  # 1/2 log det = sum log diag L
    except np.linalg.LinAlgError:
        # G is positive semi-definite only up to rounding: the centred Gram matrix's zero
        # eigenvalue comes out near -1e-16 x its largest, which a large scale (huge features,
        # e.g. a randomly initialised Inception V3's) turns below -1. The squared singular
        # values of the rows are the eigenvalues; those below numpy's rank tolerance
        # (matrix_rank's: max dimension x machine epsilon x the largest) are the zeros that
        # centring makes, taken as 0.
        s = np.linalg.svd(rows, compute_uv=False)
        s[s <= s.max(initial=0.0) * max(rows.shape) * np.finfo(s.dtype).eps] = 0.0
        return 0.5 * float(np.log1p(scale * s * s).sum())


def transrate_score(tf: TaskFeatures, *, eps: float = 1e-4) -> float:
    """:func:`transrate` on prepared :class:`TaskFeatures` (shares the centred Gram matrix)."""
    n, d = tf.n, tf.d
    g = tf.centred_gram
    rate = _half_logdet_eye_plus(g if g is not None else tf.xc.T @ tf.xc, 1.0 / (n * eps), tf.xc)
    class_rate = 0.0
    for c in range(tf.n_classes):
        rows = np.flatnonzero(tf.y == c)
        zc = tf.xc[rows]
        if g is not None:  # n_c <= N <= D: a block of the centred Gram matrix
            block = g[np.ix_(rows, rows)]
        else:
            block = zc @ zc.T if len(rows) <= d else zc.T @ zc
        class_rate += _half_logdet_eye_plus(block, 1.0 / (len(rows) * eps), zc)
    return rate - class_rate / tf.n_classes


# --------------------------------------------------------------------------------------------
# Registered proxies: one probe trial's scores share one TaskFeatures
# --------------------------------------------------------------------------------------------


def task_features(inputs: ProxyInputs) -> TaskFeatures:
    """The trial's shared :class:`TaskFeatures` of the training split (built on first use)."""
    return inputs.cached("task_features",
                         lambda: TaskFeatures(inputs.train_x, inputs.train_y, inputs.n_classes))


@register_proxy("logme")
def logme_proxy(inputs: ProxyInputs) -> float:
    """LogME (You et al., ICML 2021): maximum log evidence of linear models on the features."""
    return logme_score(task_features(inputs))


#: Why the plain H-score is NaN on a pair (shown by the report where a proxy has no score).
HSCORE_DEGENERATE = ("NaN where the centred training features are linearly independent (N <= D, "
                     "e.g. VTAB-1k at 2048 dims): the plain H-score is then C - 1 for every "
                     "backbone; hscore_lw is defined there")


@register_proxy("hscore", nan_reason=HSCORE_DEGENERATE)
def hscore_proxy(inputs: ProxyInputs) -> float:
    """H-score (Bao et al., ICIP 2019); NaN where degenerate (N <= D)."""
    return hscore_score(task_features(inputs))


@register_proxy("hscore_lw")
def hscore_lw_proxy(inputs: ProxyInputs) -> float:
    """H-score with Ledoit-Wolf shrinkage (Ibrahim et al., ECML-PKDD 2022)."""
    return hscore_score(task_features(inputs), regularized=True)


@register_proxy("transrate")
def transrate_proxy(inputs: ProxyInputs) -> float:
    """TransRate (Huang et al., ICML 2022): coding rate minus the rate given the labels."""
    return transrate_score(task_features(inputs))
