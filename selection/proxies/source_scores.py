"""Transferability from the backbone's own upstream classifier: LEEP and NCE.

Both read ``source_probs`` (N x Z, the softmax of the backbone's source classifier on the task's
training examples) and the target labels; a backbone without a source head has neither score.
Float64; higher is better. References: Nguyen et al., "LEEP: A New Measure to Evaluate
Transferability of Learned Representations", ICML 2020; Tran et al., "Transferability and
Hardness of Supervised Classification Tasks", ICCV 2019 (NCE).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from selection.proxies.inputs import check_features, check_labels, check_task_labels, to_numpy64
from selection.proxies.registry import ProxyInputs, register_proxy

# LEEP: rows of source_probs must sum to 1 within this tolerance (float16/32 softmax outputs).
_PROBS_SUM_TOL = 1e-3


def check_source_probs(source_probs: Any, name: str = "source_probs") -> np.ndarray:
    """``source_probs`` as float64 (N, Z); ValueError unless 2-D, finite, >= 0, rows sum to 1."""
    p = to_numpy64(check_features(source_probs, name))
    if p.min() < 0:
        r, c = (int(v) for v in np.argwhere(p < 0)[0])
        raise ValueError(
            f"{name} holds a negative value at row {r}, column {c}; pass probabilities (the "
            f"softmax of the source classifier's logits), not logits."
        )
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > _PROBS_SUM_TOL)
    if bad.size:
        raise ValueError(
            f"{name} row {int(bad[0])} sums to {sums[bad[0]]:.6g} ({bad.size} row(s) are not "
            f"within {_PROBS_SUM_TOL} of 1); pass the softmax of the source logits, e.g. "
            f"torch.softmax(logits, dim=1)."
        )
    return p


def leep(source_probs: Any, labels: Any) -> float:
    r"""LEEP (Nguyen et al., ICML 2020): log expected empirical prediction of the source model.

    With theta_i = source_probs[i] (the source classifier's softmax over its Z classes for
    target example i) and y_i its target label:

        P(y, z) = 1/N sum_{i: y_i = y} theta_iz,   P(y | z) = P(y, z) / sum_y' P(y', z),
        LEEP = 1/N sum_i log sum_z P(y_i | z) theta_iz.

    LEEP <= 0; higher is better. Source classes with no probability mass on the target data
    (sum_y P(y, z) = 0) contribute nothing. Rows of ``source_probs`` must be probabilities (>= 0,
    summing to 1 within 1e-3). Float64.
    """
    p = check_source_probs(source_probs)
    y, n_classes = check_task_labels(labels, p.shape[0], "source_probs")
    return leep_score(p, y, n_classes)


def leep_score(p: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    onehot = np.zeros((len(y), n_classes))
    onehot[np.arange(len(y)), y] = 1.0
    joint = onehot.T @ p / len(y)  # (C, Z)
    marginal = joint.sum(axis=0)
    cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    eep = np.einsum("iz,iz->i", p, cond[y])  # expected empirical prediction of y_i
    return float(np.mean(np.log(eep)))


def nce(source_labels: Any, labels: Any) -> float:
    r"""NCE (Tran et al., ICCV 2019): negative conditional entropy of target given source labels.

    ``source_labels`` are the source model's hard predictions z_i (any integers >= 0, e.g. the
    argmax of its softmax), ``labels`` the target labels y_i. With the empirical joint
    P(y, z) = #{i: y_i = y, z_i = z} / N and P(z) = sum_y P(y, z):

        NCE = -H(Y | Z) = sum_{y, z} P(y, z) log(P(y, z) / P(z)).

    NCE <= 0 (0: the target label is a function of the source label); higher is better.
    """
    z = check_labels(source_labels, "source_labels")
    y, n_classes = check_task_labels(labels, len(z), "source_labels")
    return nce_score(z, y, n_classes)


def nce_score(z: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    _, z = np.unique(z, return_inverse=True)
    n_source = int(z.max()) + 1
    joint = np.bincount(z * n_classes + y, minlength=n_source * n_classes)
    joint = joint.reshape(n_source, n_classes).astype(np.float64) / len(y)
    marginal = joint.sum(axis=1, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / marginal)[nz])))


@register_proxy("leep", needs=("source_probs",))
def leep_proxy(inputs: ProxyInputs) -> float:
    """LEEP (Nguyen et al., ICML 2020): log expected empirical prediction of the source head."""
    return leep_score(inputs.source_probs_train, inputs.train_y, inputs.n_classes)


@register_proxy("nce", needs=("source_probs",))
def nce_proxy(inputs: ProxyInputs) -> float:
    """NCE (Tran et al., ICCV 2019): negative conditional entropy given the source labels."""
    return nce_score(inputs.source_probs_train.argmax(axis=1), inputs.train_y, inputs.n_classes)
