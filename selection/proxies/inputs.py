"""The proxies' input checks: features, labels and integer settings.

Proxies take the backbone's features of a task's examples and the examples' integer labels; a
bad array gets a ``ValueError`` that names the array, what is wrong (NaN/inf with the first
position, a missing class, a single class, mismatched lengths or widths) and how to fix it.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, NamedTuple

import numpy as np
import torch


class CheckedInputs(NamedTuple):
    """Validated proxy inputs: features keep their type (numpy array or torch tensor)."""

    train_x: Any  # 2-D, real, finite; np.ndarray or torch.Tensor
    train_y: np.ndarray  # int64, values 0..n_classes-1, every class present
    eval_x: Any  # 2-D, real, finite, same number of columns as train_x
    eval_y: np.ndarray | None  # int64, values 0..n_classes-1 (or None when not given)
    n_classes: int


def check_features(x: Any, name: str) -> Any:
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


def check_labels(y: Any, name: str) -> np.ndarray:
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


def check_classes(y: np.ndarray, name: str, also: str = "") -> int:
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
    train_x = check_features(train_x, "train_x")
    eval_x = check_features(eval_x, xn)
    if train_x.shape[1] != eval_x.shape[1]:
        raise ValueError(
            f"train_x has {train_x.shape[1]} features per example but {xn} has "
            f"{eval_x.shape[1]}; both must come from the same backbone and layer."
        )
    train_y = check_labels(train_y, "train_y")
    if len(train_y) != train_x.shape[0]:
        raise ValueError(
            f"train_x has {train_x.shape[0]} rows but train_y has {len(train_y)} labels; pass "
            f"one label per training example, in the same order."
        )
    n_classes = check_classes(train_y, "train_y", f" (and map {yn} the same way)")
    if eval_y is not None:
        eval_y = check_labels(eval_y, yn)
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


def check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def to_numpy64(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float64)


def check_task_labels(labels: Any, n_rows: int, rows_of: str) -> tuple[np.ndarray, int]:
    y = check_labels(labels, "labels")
    if len(y) != n_rows:
        raise ValueError(
            f"{rows_of} has {n_rows} rows but labels has {len(y)} entries; pass one label per "
            f"example, in the same order."
        )
    return y, check_classes(y, "labels")
