"""ChoiceNet: predict a model's fine-tune accuracy on a task from a model and a task embedding.

The meta-learned strategy of the ChoiceNet study (a Stanford CS330 project, 2022; the README's
"ChoiceNet" section): a small net maps (model embedding, task embedding) to the predicted
fine-tune test accuracy s(m, t) (sigmoid output, MSE loss), trained on the results of
*other* tasks and used to rank the pool for a new one. Evaluated leave-one-task-out
(:func:`fit_predict_leave_one_task_out`): the column of task t is predicted by a net that never
saw a target of t. The predictions go into the regret report as the strategies ``choicenet_v1``
and ``choicenet_v2`` (:func:`predict_choicenet` -> ``selection.report.compute.compute_report(...,
predictions=...)``), which also reports their MSE.

Embeddings. The pool mixes architectures (widths, conv shapes), so every embedding has a length
that does not depend on the architecture:

- **v1 model** (:func:`model_embedding_v1`, length :data:`V1_MODEL_DIM`): statistics of the
  weights of the last convolution with a spatial kernel (in registration order; 1x1 shortcut
  projections are skipped, they are not feature filters), reshaped to ``out x (in*kh*kw)``:
  its singular values divided by their L2 norm and resampled by linear interpolation to 32 points
  (the spectrum's *shape*, whatever the layer's size); 16 quantiles of the per-filter L2 norms
  divided by their mean; and log RMS weight, skewness, excess kurtosis, fraction of positive
  weights, effective rank / full rank, log2 of out channels and of fan-in.
- **v1 task** (:func:`task_embedding_v1`, length 256): every task's training images are resized
  to 16x16 (so tasks of any resolution share one space), flattened, and a PCA is fitted on all
  tasks' images together; a task's embedding is the mean of its images' PCA-256 coordinates
  (zero-padded if fewer components exist). The PCA sees images only, never accuracies.
- **v2 model** (:func:`model_embedding_v2`, length C(C-1)/2 + C for a probe set of C classes):
  the model's features on a fixed labelled probe set, averaged per class (C x F), centred over
  classes; embedding = the upper triangle of the class-by-class cosine-similarity matrix of those
  means (how the model separates the probe classes -- invariant to the feature width F and to
  rotations of the feature space) followed by each class mean's norm divided by their average.
- **v2 task** (:func:`task_embedding_v2`, length 10 x F_probe): a FIXED probe backbone's features
  on the task's training images, averaged per class; the 10 classes with the largest mean
  |activation| are kept, ordered by it (zero rows pad tasks with fewer classes), and flattened.
  Its length depends only on the probe model, which is the same for every task.

Nets. :class:`ChoiceNetV1` reduces the model embedding with a learned low-rank linear map (the
study's LoRA-like reduction, no bias), concatenates it with the task embedding and applies the
head: two fully connected layers with dropout (Linear -> ReLU -> Dropout -> Linear -> sigmoid).
:class:`ChoiceNetV2` applies learned low-rank linear reductions (no bias) of each embedding to the
same ``rank``, sums them, and applies the same head. Embeddings are centred on the training
fold's models and tasks and scaled: per feature for the v1 model statistics (mixed units), by one
overall RMS for the others (homogeneous coordinates). Training is a plain
``pl.Trainer(max_steps=...)`` on CPU, Adam, mini-batches drawn with replacement from the known
(model, task) pairs; deterministic for a seed.

For the CLI: ``predict_choicenet(compute_embeddings(backbones, tasks, probe_images, probe_labels,
probe_backbone), targets)`` with ``targets`` from ``selection.records.targets_from_records`` ->
``compute_report(..., predictions=...)``.
No Ray and no MLflow here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.backbones import Backbone, extract_features
from whichmodel.quiet import quiet_lightning

VERSIONS = ("v1", "v2")
STRATEGY_NAMES = {"v1": "choicenet_v1", "v2": "choicenet_v2"}
SPECTRUM_POINTS = 32     # resampled singular-value spectrum of the last conv layer
NORM_QUANTILES = 16      # quantiles of its per-filter norms
N_MOMENTS = 7            # log RMS, skew, kurtosis, fraction > 0, effective-rank ratio, log2 out, log2 fan-in
V1_MODEL_DIM = SPECTRUM_POINTS + NORM_QUANTILES + N_MOMENTS
V1_TASK_DIM = 256        # the ChoiceNet study: PCA-256 of the images
V1_IMAGE_SIZE = 16       # images resized before PCA: 768 pixels keep the PCA fast and size-independent
V2_TASK_CLASSES = 10     # the ChoiceNet study: the 10 classes of largest mean |activation|
DEFAULT_STEPS = 500

# ============================================================================ embeddings, v1
def last_conv(backbone: Backbone) -> nn.Conv2d:
    """The last ``nn.Conv2d`` with a kernel larger than 1x1 (else the last conv of any kernel)."""
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(backbone).__name__}: no nn.Conv2d layer; the v1 model embedding "
                         "reads the weights of the last convolution")
    spatial = [m for m in convs if m.kernel_size[0] * m.kernel_size[1] > 1]
    return (spatial or convs)[-1]


def _resample(values: np.ndarray, points: int) -> np.ndarray:
    if values.size == 1:
        return np.full(points, float(values[0]))
    return np.interp(np.linspace(0.0, 1.0, points), np.linspace(0.0, 1.0, values.size), values)


def model_embedding_v1(backbone: Backbone) -> np.ndarray:
    """Fixed-length statistics of the last conv layer's weights (module docstring); float32,
    length :data:`V1_MODEL_DIM` for every architecture."""
    w = last_conv(backbone).weight.detach().cpu().double().numpy()
    mat = w.reshape(w.shape[0], -1)
    sv = np.linalg.svd(mat, compute_uv=False)
    spectrum = sv / max(float(np.linalg.norm(sv)), 1e-12)
    norms = np.linalg.norm(mat, axis=1)
    norms = norms / max(float(norms.mean()), 1e-12)
    flat = mat.ravel()
    rms = float(np.sqrt(np.mean(flat ** 2)))
    centred = flat - flat.mean()
    std = max(float(centred.std()), 1e-12)
    p = sv ** 2 / max(float(np.sum(sv ** 2)), 1e-24)
    entropy = -float(np.sum(p[p > 0] * np.log(p[p > 0])))
    moments = [math.log(max(rms, 1e-12)), float(np.mean(centred ** 3)) / std ** 3,
               float(np.mean(centred ** 4)) / std ** 4 - 3.0, float(np.mean(flat > 0)),
               math.exp(entropy) / sv.size, math.log2(mat.shape[0]), math.log2(mat.shape[1])]
    out = np.concatenate([_resample(spectrum, SPECTRUM_POINTS),
                          np.quantile(norms, np.linspace(0.0, 1.0, NORM_QUANTILES)), moments])
    return out.astype(np.float32)


def _small_flat(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC -> float (N, 3 * size * size) in [0, 1], resized with antialiasing."""
    x = torch.as_tensor(np.asarray(images))
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3); got shape {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.reshape(len(x), -1).double().numpy()


def task_embedding_v1(task_images: Mapping[str, np.ndarray], n_components: int = V1_TASK_DIM,
                      image_size: int = V1_IMAGE_SIZE) -> dict[str, np.ndarray]:
    """PCA-``n_components`` task embeddings: one PCA fitted on every task's images together, each
    task's embedding the mean of its images' coordinates (zero-padded to ``n_components``)."""
    if not task_images:
        raise ValueError("task_embedding_v1: no tasks given; pass {task: uint8 (N, H, W, 3) train images}")
    flats = {}
    for name, images in task_images.items():
        if len(images) == 0:
            raise ValueError(f"task_embedding_v1: task {name!r} has no images")
        flats[name] = _small_flat(images, image_size)
    every = np.concatenate(list(flats.values()))
    mean = every.mean(axis=0)
    centred = every - mean
    cov = centred.T @ centred / max(len(every) - 1, 1)
    eigvals, eigvecs = np.linalg.eigh(cov)
    k = min(n_components, eigvecs.shape[1], max(len(every) - 1, 1))
    basis = eigvecs[:, ::-1][:, :k]
    # eigenvectors have no sign: fix it (largest-magnitude coordinate positive) for reproducibility
    signs = np.sign(basis[np.argmax(np.abs(basis), axis=0), np.arange(k)])
    basis = basis * np.where(signs == 0, 1.0, signs)
    out = {}
    for name, flat in flats.items():
        emb = np.zeros(n_components)
        emb[:k] = (flat.mean(axis=0) - mean) @ basis
        out[name] = emb.astype(np.float32)
    return out


# ============================================================================ embeddings, v2
def _class_means(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).ravel()
    if len(labels) != len(features):
        raise ValueError(f"{len(features)} images but {len(labels)} labels; pass one label per image")
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    return classes, means


def _features(backbone: Backbone, images: np.ndarray, batch_size: int) -> np.ndarray:
    feats, _ = extract_features(backbone, images, batch_size=batch_size, device="cpu")
    return feats.double().numpy()


def model_embedding_v2(backbone: Backbone, probe_images: np.ndarray, probe_labels: np.ndarray,
                       batch_size: int = 256) -> np.ndarray:
    """Cosine-similarity profile of the per-class mean activations on a fixed probe set
    (module docstring); float32, length C(C-1)/2 + C for C probe classes."""
    classes, means = _class_means(_features(backbone, probe_images, batch_size), probe_labels)
    if len(classes) < 2:
        raise ValueError(f"model_embedding_v2: the probe set has {len(classes)} class(es); it needs "
                         "at least 2 (e.g. load_probe_set)")
    centred = means - means.mean(axis=0)
    norms = np.linalg.norm(centred, axis=1)
    unit = centred / np.where(norms > 1e-12, norms, 1.0)[:, None]
    sims = unit @ unit.T
    iu = np.triu_indices(len(classes), k=1)
    raw = np.linalg.norm(means, axis=1)
    relative = raw / max(float(raw.mean()), 1e-12)
    return np.concatenate([sims[iu], relative]).astype(np.float32)


def task_embedding_v2(probe_backbone: Backbone, task_images: np.ndarray | Mapping[str, np.ndarray],
                      task_labels: np.ndarray | Mapping[str, np.ndarray],
                      n_classes: int = V2_TASK_CLASSES, batch_size: int = 256) -> np.ndarray | dict[str, np.ndarray]:
    """The probe backbone's per-class mean activations on a task's images, the ``n_classes``
    classes of largest mean |activation| (zero rows pad), flattened: length ``n_classes x
    probe_backbone.feature_dim``. Mappings task -> images / labels give a mapping task -> embedding."""
    if isinstance(task_images, Mapping):
        if not isinstance(task_labels, Mapping) or set(task_labels) != set(task_images):
            raise ValueError("task_embedding_v2: with a mapping of task images, pass a mapping of labels "
                             "with the same tasks")
        return {t: task_embedding_v2(probe_backbone, task_images[t], task_labels[t], n_classes, batch_size)
                for t in task_images}
    _, means = _class_means(_features(probe_backbone, task_images, batch_size), task_labels)
    magnitude = np.abs(means).mean(axis=1)
    order = np.argsort(-magnitude, kind="stable")[:n_classes]
    out = np.zeros((n_classes, means.shape[1]))
    out[:len(order)] = means[order]
    return out.ravel().astype(np.float32)


# ============================================================================ gathering
@dataclass
class ChoiceNetEmbeddings:
    """Embeddings by version: ``model[v]`` model -> vector, ``task[v]`` task -> vector."""

    model: dict[str, dict[str, np.ndarray]] = field(default_factory=lambda: {v: {} for v in VERSIONS})
    task: dict[str, dict[str, np.ndarray]] = field(default_factory=lambda: {v: {} for v in VERSIONS})


def _task_split(task: Any) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(task, "train"):  # lightning_modules.task_data.TaskData: its train800 split
        return task.train
    images, labels = task
    return images, labels


def compute_embeddings(backbones: Mapping[str, Backbone], tasks: Mapping[str, Any],
                       probe_images: np.ndarray, probe_labels: np.ndarray,
                       probe_backbone: Backbone) -> ChoiceNetEmbeddings:
    """v1 and v2 embeddings of every model and task.

    ``backbones``: model name -> backbone (e.g. ``load_checkpoint(zoo_root / name)[0]``);
    ``tasks``: task name -> ``TaskData`` (its ``train800`` split is used) or ``(images, labels)``;
    ``probe_images``/``probe_labels``: the fixed probe set of the v2 model embedding
    (:func:`load_probe_set`); ``probe_backbone``: the fixed model of the v2 task embedding (e.g. the
    zoo's ``cnn-generalist``) -- keep both fixed across runs, or embeddings are not comparable.
    """
    emb = ChoiceNetEmbeddings()
    for name, backbone in backbones.items():
        emb.model["v1"][name] = model_embedding_v1(backbone)
        emb.model["v2"][name] = model_embedding_v2(backbone, probe_images, probe_labels)
    splits = {t: _task_split(task) for t, task in tasks.items()}
    emb.task["v1"] = task_embedding_v1({t: x for t, (x, _) in splits.items()})
    emb.task["v2"] = task_embedding_v2(probe_backbone, {t: x for t, (x, _) in splits.items()},
                                       {t: y for t, (_, y) in splits.items()})
    return emb


def load_probe_set(root: Any, image_size: int = 32, seed: int = 0,
                   per_class: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """A fixed labelled probe set: the first ``per_class`` held-out (val) images of every class of
    every source family (labels offset per family, families sorted). No downstream task shares an
    image with the source families."""
    from lightning_modules.sources import list_source_families, load_source

    images, labels, offset = [], [], 0
    for family in list_source_families():
        classes = len(load_source(family, root, image_size, seed, n_train=1, n_val=1).class_names)
        src = load_source(family, root, image_size, seed, n_train=1, n_val=per_class * classes)
        x, y = src.val  # labels cycle through the classes, so this prefix has per_class of each
        images.append(x)
        labels.append(y + offset)
        offset += classes
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


# ============================================================================ nets
def fc_head(d_in: int, hidden: int, dropout: float) -> nn.Sequential:
    """Two fully connected layers with dropout; the sigmoid is applied in forward."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))


class ChoiceNetBase(pl.LightningModule):
    head: nn.Sequential

    def __init__(self, lr: float, weight_decay: float):
        super().__init__()
        self.lr, self.weight_decay = float(lr), float(weight_decay)

    def init_output_bias(self, mean_target: float) -> None:
        """Start at the mean training accuracy: logit of it as the last layer's bias."""
        p = min(max(float(mean_target), 1e-3), 1 - 1e-3)
        with torch.no_grad():
            self.head[-1].bias.fill_(math.log(p / (1 - p)))

    def training_step(self, batch, batch_idx):
        m, t, y = batch
        return F.mse_loss(self(m, t), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class ChoiceNetV1(ChoiceNetBase):
    """Low-rank (LoRA-like) model reduction ++ task embedding -> two FC layers -> sigmoid."""

    def __init__(self, model_dim: int, task_dim: int, rank: int = 16, hidden: int = 64,
                 dropout: float = 0.2, lr: float = 3e-3, weight_decay: float = 1e-4):
        super().__init__(lr, weight_decay)
        self.save_hyperparameters()
        self.model_proj = nn.Linear(model_dim, rank, bias=False)
        self.head = fc_head(rank + task_dim, hidden, dropout)

    def forward(self, model_x: torch.Tensor, task_x: torch.Tensor) -> torch.Tensor:
        joint = torch.cat([self.model_proj(model_x), task_x], dim=1)
        return torch.sigmoid(self.head(joint)).squeeze(1)


class ChoiceNetV2(ChoiceNetBase):
    """Low-rank linear reductions of both embeddings to ``rank``, summed -> the v1 head."""

    def __init__(self, model_dim: int, task_dim: int, rank: int = 16, hidden: int = 64,
                 dropout: float = 0.2, lr: float = 3e-3, weight_decay: float = 1e-4):
        super().__init__(lr, weight_decay)
        self.save_hyperparameters()
        self.model_proj = nn.Linear(model_dim, rank, bias=False)
        self.task_proj = nn.Linear(task_dim, rank, bias=False)
        self.head = fc_head(rank, hidden, dropout)

    def forward(self, model_x: torch.Tensor, task_x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.model_proj(model_x) + self.task_proj(task_x))).squeeze(1)


def create_choicenet(version: str, model_dim: int, task_dim: int, **kwargs: Any) -> ChoiceNetBase:
    if version not in VERSIONS:
        raise ValueError(f"unknown ChoiceNet version {version!r}; known: {', '.join(VERSIONS)}")
    if version == "v1":
        return ChoiceNetV1(model_dim, task_dim, **kwargs)
    return ChoiceNetV2(model_dim, task_dim, **kwargs)


# ============================================================================ training
@contextlib.contextmanager
def quiet_single_thread() -> Iterator[None]:
    """Lightning's info lines and tips off (:func:`whichmodel.quiet.quiet_lightning`), and one
    intra-op thread: the net is tiny, and several threads spinning on a shared CPU made each step
    ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with quiet_lightning():
            yield
    finally:
        torch.set_num_threads(threads)


def stack_embeddings(embeddings: Mapping[str, np.ndarray], what: str) -> tuple[list[str], np.ndarray]:
    names = sorted(embeddings)
    if not names:
        raise ValueError(f"{what} embeddings: none given")
    arrays = [np.asarray(embeddings[n], dtype=np.float64).ravel() for n in names]
    lengths = {a.size for a in arrays}
    if len(lengths) != 1:
        odd = [n for n, a in zip(names, arrays) if a.size != arrays[0].size]
        raise ValueError(f"{what} embeddings differ in length ({sorted(lengths)}), e.g. {odd[:5]} vs "
                         f"{names[0]!r}; embed every {what} with the same function and settings")
    matrix = np.stack(arrays)
    if not np.all(np.isfinite(matrix)):
        bad = [n for n, a in zip(names, arrays) if not np.all(np.isfinite(a))]
        raise ValueError(f"{what} embeddings of {bad[:5]} are not finite")
    return names, matrix


def standardise_embeddings(x: np.ndarray, rows: np.ndarray, per_feature: bool) -> np.ndarray:
    """Centre on the training rows, then scale: per feature (mixed units, the v1 model
    statistics) or by one RMS for all (homogeneous coordinates -- PCA scores, similarities,
    activations -- whose relative sizes carry information; per-feature scaling over a handful of
    training tasks would blow near-constant noise coordinates up to unit size)."""
    centred = x - x[rows].mean(axis=0)
    if per_feature:
        sd = x[rows].std(axis=0)
        return centred / np.where(sd > 1e-8, sd, 1.0)
    rms = float(np.sqrt(np.mean(centred[rows] ** 2)))
    return centred / (rms if rms > 1e-12 else 1.0)


def task_columns(tasks: list[str], only: Sequence[str] | None) -> list[int]:
    """Indices of the tasks to predict: those in ``only`` (each with an embedding), else all."""
    if [t for t in only or () if t not in tasks]:
        raise ValueError(f"only={list(only)}: predict tasks with an embedding ({', '.join(tasks)})")
    return list(range(len(tasks))) if only is None else [tasks.index(t) for t in only]


def check_targets(targets: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(targets, pd.DataFrame):
        raise TypeError(f"targets must be a DataFrame (index model, columns task), got {type(targets).__name__}")
    from whichmodel.accuracy import check_accuracies

    y = targets.apply(pd.to_numeric, errors="coerce").astype(float)
    check_accuracies(y.to_numpy(), "targets",
                     lambda ij: f": model {y.index[ij[0]]!r}, task {y.columns[ij[1]]!r}")
    y.index, y.columns = y.index.astype(str), y.columns.astype(str)
    return y


class Batches(list):
    """A fixed list of batches as the iterable Lightning takes for a dataloader."""


def fit_choicenet(version: str, model_x: np.ndarray, task_x: np.ndarray, y: np.ndarray, *,
                  seed: int = 0, steps: int = DEFAULT_STEPS, batch_size: int = 64,
                  **net_kwargs: Any) -> ChoiceNetBase:
    """Train one net on rows (model_x[i], task_x[i]) -> y[i] (already standardised inputs)."""
    torch.manual_seed(seed)
    net = create_choicenet(version, model_x.shape[1], task_x.shape[1], **net_kwargs)
    net.init_output_bias(float(np.mean(y)))
    return train_net(net, (model_x, task_x, y), seed=seed, steps=steps, batch_size=batch_size)


def train_net(net: ChoiceNetBase, arrays: tuple[np.ndarray, ...], *, seed: int, steps: int,
              batch_size: int) -> ChoiceNetBase:
    """Train ``net`` for ``steps`` batches of rows of ``arrays`` (inputs ..., target) drawn with
    replacement, one index operation each (no per-row collation); returns it in eval mode."""
    data = [torch.as_tensor(a, dtype=torch.float32) for a in arrays]
    n = len(data[-1])
    rows = torch.randint(0, n, (steps, min(int(batch_size), n)),
                         generator=torch.Generator().manual_seed(seed))
    with quiet_single_thread():
        trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
        trainer.fit(net, Batches([tuple(t[r] for t in data) for r in rows]))
    return net.eval()


def fit_predict_leave_one_task_out(version: str, model_emb: Mapping[str, np.ndarray],
                                   task_emb: Mapping[str, np.ndarray], targets: pd.DataFrame, *,
                                   seed: int = 0, steps: int = DEFAULT_STEPS, batch_size: int = 64,
                                   only: Sequence[str] | None = None, **net_kwargs: Any) -> pd.DataFrame:
    """Leave-one-task-out predicted fine-tune accuracy (index model, columns task).

    Rows: every model with an embedding; columns: every task with an embedding (a task with no
    targets at all is simply predicted from all the others -- a new task). Column t comes from a
    net trained only on the known pairs (finite ``targets``: index model, columns task, NaN =
    missing) of the *other* tasks, with inputs standardised over those pairs' models and tasks:
    nothing of task t's targets reaches it. Pairs whose model or task has no embedding are not
    used. A column stays NaN when the other tasks have no known pair (or is not in ``only``, the
    tasks to predict; default all). ``net_kwargs``: ``hidden``, ``dropout``, ``lr``, ``weight_decay``, ``rank``.
    """
    if version not in VERSIONS:
        raise ValueError(f"unknown ChoiceNet version {version!r}; known: {', '.join(VERSIONS)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer")
    models, mx = stack_embeddings(model_emb, "model")
    tasks, tx = stack_embeddings(task_emb, "task")
    y = check_targets(targets).reindex(index=models, columns=tasks).to_numpy(dtype=float)
    known_i, known_j = np.nonzero(np.isfinite(y))
    out = np.full((len(models), len(tasks)), np.nan)
    for j in task_columns(tasks, only):
        train = known_j != j
        if not train.any():
            continue
        rows_i, rows_j = known_i[train], known_j[train]
        m_std = standardise_embeddings(mx, np.unique(rows_i), per_feature=version == "v1")
        t_std = standardise_embeddings(tx, np.unique(rows_j), per_feature=False)
        net = fit_choicenet(version, m_std[rows_i], t_std[rows_j], y[rows_i, rows_j], seed=seed,
                            steps=steps, batch_size=batch_size, **net_kwargs)
        with torch.no_grad():
            m = torch.as_tensor(m_std, dtype=torch.float32)
            t = torch.as_tensor(np.repeat(t_std[j:j + 1], len(models), axis=0), dtype=torch.float32)
            out[:, j] = net(m, t).double().numpy()
    return pd.DataFrame(out, index=pd.Index(models, name="model"), columns=pd.Index(tasks, name="task"))


def predict_choicenet(embeddings: ChoiceNetEmbeddings, targets: pd.DataFrame, *, seed: int = 0,
                      steps: int = DEFAULT_STEPS, versions: tuple[str, ...] = VERSIONS,
                      **net_kwargs: Any) -> dict[str, pd.DataFrame]:
    """Leave-one-task-out predictions of each version, keyed by strategy name
    (``choicenet_v1``, ``choicenet_v2``): pass them as ``compute_report(..., predictions=...)``."""
    return {STRATEGY_NAMES[v]: fit_predict_leave_one_task_out(
                v, embeddings.model[v], embeddings.task[v], targets, seed=seed, steps=steps, **net_kwargs)
            for v in versions}
