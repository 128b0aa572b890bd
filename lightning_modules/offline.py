"""The offline task suite: ten VTAB-1k style tasks built from bundled and rendered data.

whichmodel needs downstream tasks to fine-tune on without network access. Everything here is
built from data that ships with scikit-learn and scikit-image, or rendered procedurally
(:mod:`lightning_modules.render`), in three groups as in VTAB: ``natural`` (digits, textures,
faces), ``specialized`` (immunohistochemistry and retina patches with labels computed from the
pixels), ``structured`` (dSprites / CLEVR-like renderings). Each task has the splits ``train800``
and ``val200`` (from a training pool) and a disjoint ``test`` split; no test image equals a
training image, and patch tasks take train and test patches from spatially disjoint regions of
the source images.

Each task registers itself where it is defined (:func:`offline_task`); look tasks up through
:func:`lightning_modules.tasks.get_task`. Content is made at a native resolution, then resized,
so sizes differ only by resampling. Builds are deterministic for a seed and cached as
``root/tasks/<name>-<size>px-seed<seed>.npz`` (written atomically).
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lightning_modules import render
from lightning_modules.task_data import (
    N_TRAIN,
    N_VAL,
    TASKS,
    Task,
    TaskData,
    TaskInfo,
    arrays_splits,
    check_sizes,
    load_arrays,
    register_task,
    save_arrays,
    split_arrays,
    task_rng,
)
from whichmodel.registry import UnknownNameError

POOL = N_TRAIN + N_VAL
_MARGIN = 1.1  # builders make 10% extra candidates, so dropping exact duplicates never runs short

Array = np.ndarray
Builder = Callable[[np.random.Generator, int, int, int], tuple[Array, Array, Array, Array]]


@dataclass(frozen=True)
class OfflineTask(Task):
    """A task of the suite: ``builder(rng, image_size, n_pool, n_test)`` returns candidate pool
    and test images with labels; :meth:`build` drops duplicates and cuts the splits."""

    info: TaskInfo
    builder: Builder
    kind: str = "offline"

    def load(self, data_root, image_size: int = 32, seed: int = 0, download: bool = False,
             n_train: int = N_TRAIN, n_val: int = N_VAL, cache_root=None) -> TaskData:
        """Cached as ``<cache_root>/tasks/<name>-<size>px-seed<seed>.npz`` (``cache_root``
        defaults to ``data_root``). The suite is built at 800/200; smaller ``n_train``/``n_val``
        take the first examples of ``train800``/``val200`` (both in random order)."""
        check_sizes(n_train, n_val)
        if n_train > N_TRAIN or n_val > N_VAL:
            raise ValueError(f"{self.info.name}: the offline suite has {N_TRAIN} train and "
                             f"{N_VAL} val examples; asked for {n_train} and {n_val}")
        path = task_cache_path(data_root if cache_root is None else cache_root, self.info.name,
                               image_size, seed)
        arrays = load_arrays(path)
        if arrays is None:
            splits = self.build(image_size, seed)
            save_arrays(path, split_arrays(splits))
        else:
            splits = arrays_splits(arrays)
        if (n_train, n_val) != (N_TRAIN, N_VAL):
            splits = {**splits, "train800": tuple(a[:n_train] for a in splits["train800"]),
                      "val200": tuple(a[:n_val] for a in splits["val200"])}
        return TaskData(self.info, image_size, seed, splits)

    def check(self, data_root, download: bool = False) -> None:
        """Always fine: the suite is built from data that ships with the project's packages."""

    def build(self, image_size: int, seed: int) -> dict[str, tuple[Array, Array]]:
        """The splits, built deterministically for ``seed`` (no cache)."""
        rng = task_rng(seed, self.info.name)
        n_pool, n_test = math.ceil(POOL * _MARGIN), math.ceil(self.info.test_size * _MARGIN)
        px, py, tx, ty = self.builder(rng, image_size, n_pool, n_test)
        return _finalize(self.info, rng, (px, py), (tx, ty))


def offline_task(name: str, group: str, num_classes: int, description: str, note: str = "",
                 test_size: int = 1000) -> Callable[[Builder], Builder]:
    """Register the decorated builder as the offline task ``name``."""
    def deco(fn: Builder) -> Builder:
        register_task(OfflineTask(TaskInfo(name, group, num_classes, description, note,
                                           test_size), fn))
        return fn
    return deco


def task_cache_path(root: str | os.PathLike, name: str, image_size: int = 32,
                    seed: int = 0) -> pathlib.Path:
    return pathlib.Path(root) / "tasks" / f"{name}-{image_size}px-seed{seed}.npz"


def build_suite(root: str | os.PathLike, names: list[str] | None = None, image_size: int = 32,
                seed: int = 0) -> list[pathlib.Path]:
    """Build (or find cached) every offline task, or the named ones; returns their cache paths."""
    names = _offline_names() if names is None else list(names)
    tasks = [_offline(name) for name in names]  # fail before building anything
    for task in tasks:
        task.load(root, image_size, seed)
    return [task_cache_path(root, n, image_size, seed) for n in names]


def _offline_names() -> list[str]:
    return sorted(n for n, t in TASKS.items() if t.kind == "offline")


def _offline(name: str) -> Task:
    if name not in _offline_names():
        raise UnknownNameError("task", name, _offline_names())
    return TASKS.get(name)


def _unique(rng: np.random.Generator, x: Array, y: Array, exclude: set[bytes] = frozenset(),
            ) -> tuple[Array, Array]:
    """Shuffle, then keep the first copy of each image and none that is in ``exclude``."""
    seen, keep = set(exclude), []
    for i in rng.permutation(len(x)):
        key = x[i].tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return x[keep], y[keep]


def _finalize(info: TaskInfo, rng: np.random.Generator, pool: tuple[Array, Array],
              test: tuple[Array, Array]) -> dict[str, tuple[Array, Array]]:
    px, py = _unique(rng, *pool)
    px, py = px[:POOL], py[:POOL]
    tx, ty = _unique(rng, *test, exclude={x.tobytes() for x in px})
    tx, ty = tx[:info.test_size], ty[:info.test_size]
    if len(px) < POOL or len(tx) < info.test_size:
        raise RuntimeError(f"{info.name}: only {len(px)} pool / {len(tx)} test unique images")
    missing = set(range(info.num_classes)) - set(py[:N_TRAIN].tolist())
    if missing:
        raise RuntimeError(f"{info.name}: classes {sorted(missing)} missing from train800")
    return {"train800": _pair(px[:N_TRAIN], py[:N_TRAIN]),
            "val200": _pair(px[N_TRAIN:], py[N_TRAIN:]),
            "test": _pair(tx, ty)}


def _pair(x: Array, y: Array) -> tuple[Array, Array]:
    return np.ascontiguousarray(x, np.uint8), np.asarray(y, np.int64)


# ---- helpers for crops of bundled images


@functools.cache
def _skimage(name: str) -> Array:
    """A bundled scikit-image picture (no download), read once per process."""
    import skimage.data

    img = getattr(skimage.data, name)()
    img.setflags(write=False)
    return img


def _grey(name: str) -> Array:
    img = _skimage(name)
    return img if img.ndim == 2 else np.asarray(np.round(img[..., :3].mean(axis=2)), np.uint8)


def _block_split(rng: np.random.Generator, shape: tuple[int, ...], block: int,
                 test_frac: float = 0.3) -> tuple[list, list]:
    """Tile the image into ``block``-px blocks and give a random ``test_frac`` of them to test."""
    blocks = [(y, x, min(y + block, shape[0]), min(x + block, shape[1]))
              for y in range(0, shape[0], block) for x in range(0, shape[1], block)]
    order = rng.permutation(len(blocks))
    n_test = round(test_frac * len(blocks))
    return [blocks[i] for i in order[n_test:]], [blocks[i] for i in order[:n_test]]


def _positions(rng: np.random.Generator, blocks: list, patch: int, n: int,
               accept: Callable[[int, int], bool] | None = None) -> list[tuple[int, int]]:
    """``n`` distinct top-left corners of ``patch``-px crops lying wholly inside one block."""
    blocks = [b for b in blocks if b[2] - b[0] >= patch and b[3] - b[1] >= patch]
    found: dict[tuple[int, int], None] = {}
    for _ in range(200 * n):
        y0, x0, y1, x1 = blocks[rng.integers(len(blocks))]
        pos = (int(rng.integers(y0, y1 - patch + 1)), int(rng.integers(x0, x1 - patch + 1)))
        if pos not in found and (accept is None or accept(*pos)):
            found[pos] = None
            if len(found) == n:
                return list(found)
    raise RuntimeError(f"could not place {n} crops of {patch} px")


def _flip_rot(rng: np.random.Generator, img: Array) -> Array:
    img = np.rot90(img, int(rng.integers(4)))
    return img[:, ::-1] if rng.random() < 0.5 else img


def _jitter(rng: np.random.Generator, img: Array, gain: float, bias: float) -> Array:
    """Random brightness/contrast: img * U(1-gain, 1+gain) + U(-bias, bias), in uint8."""
    out = img / 255.0 * rng.uniform(1 - gain, 1 + gain) + rng.uniform(-bias, bias)
    return render.to_uint8(out)


def _tertiles(feat_pool: Array, feat_test: Array) -> tuple[Array, Array]:
    """Labels 0/1/2 by the training pool's tertiles of a per-patch measurement."""
    edges = np.quantile(feat_pool, [1 / 3, 2 / 3])
    return np.digitize(feat_pool, edges), np.digitize(feat_test, edges)


def _measured_patches(rng, image, feature_map, patch, block, size, n_pool, n_test, accept=None):
    """Patches from disjoint train/test blocks of ``image``, labelled by tertiles of the mean of
    ``feature_map`` over the patch; flips and 90-degree rotations (which keep the mean)."""
    train_blocks, test_blocks = _block_split(rng, image.shape, block)
    out = []
    for blocks, n in ((train_blocks, n_pool), (test_blocks, n_test)):
        pos = _positions(rng, blocks, patch, n, accept)
        feats = np.array([feature_map[y:y + patch, x:x + patch].mean() for y, x in pos])
        imgs = [_flip_rot(rng, image[y:y + patch, x:x + patch]) for y, x in pos]
        out.append((render.resize_batch(imgs, size), feats))
    (px, pf), (tx, tf) = out
    py, ty = _tertiles(pf, tf)
    return px, py, tx, ty


# ---- natural


@offline_task("digits", "natural", 10,
           "Handwritten digit 0-9 (scikit-learn's 8x8 grey digits, upsampled).",
           note="Source has 1,797 images: 1,000 form the train pool (train800 + val200) and the "
                "other 797 are the test split.", test_size=797)
def _digits(rng, size, n_pool, n_test):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = render.resize_batch(render.to_uint8(d.images / 16.0), size)
    order = rng.permutation(len(x))
    return x[order[:POOL]], d.target[order[:POOL]], x[order[POOL:]], d.target[order[POOL:]]


_TEXTURE_SOURCES = ("brick", "grass", "gravel", "moon", "hubble_deep_field")


@offline_task("textures", "natural", len(_TEXTURE_SOURCES),
           "Which texture photograph a 64-px grey crop comes from: " + ", ".join(_TEXTURE_SOURCES)
           + " (scikit-image's bundled pictures).",
           note="Train and test crops come from disjoint 128-px blocks of each picture; crops "
                "are flipped/rotated and brightness-jittered.")
def _textures(rng, size, n_pool, n_test):
    out = ([], [], [], [])
    for label, name in enumerate(_TEXTURE_SOURCES):
        img = _grey(name)
        train_blocks, test_blocks = _block_split(rng, img.shape, 128)
        for k, (blocks, n) in enumerate(((train_blocks, n_pool), (test_blocks, n_test))):
            m = math.ceil(n / len(_TEXTURE_SOURCES))
            for y, x in _positions(rng, blocks, 64, m):
                crop = _flip_rot(rng, img[y:y + 64, x:x + 64])
                out[2 * k].append(_jitter(rng, crop, 0.15, 0.08))
                out[2 * k + 1].append(label)
    px, py, tx, ty = out
    return (render.resize_batch(px, size), np.array(py), render.resize_batch(tx, size),
            np.array(ty))


@offline_task("faces", "natural", 2, "Face (1) or non-face (0): scikit-image's LFW subset.",
           note="The source has only 200 images (100 faces, 100 non-faces, 25x25 px): 140 "
                "source images feed train800/val200 and 60 others feed test; every example is an "
                "augmented crop (random 19-25 px crop, flip, brightness/contrast jitter), so "
                "examples within a split share source images, but train and test never do.",
           test_size=500)
def _faces(rng, size, n_pool, n_test):
    lfw = np.asarray(_skimage("lfw_subset"), dtype=np.float64)
    lfw = lfw / 255.0 if lfw.max() > 1.0 else lfw
    per_class = [rng.permutation(np.arange(100) + 100 * (1 - c)) for c in (0, 1)]  # 0 = non-face
    train_src, test_src = [p[:70] for p in per_class], [p[70:] for p in per_class]
    out = []
    for sources, n in ((train_src, n_pool), (test_src, n_test)):
        labels = np.arange(n) % 2
        imgs = [_face_crop(rng, lfw[rng.choice(sources[c])]) for c in labels]
        out += [render.resize_batch(imgs, size), labels]
    return tuple(out)


def _face_crop(rng: np.random.Generator, img: Array) -> Array:
    s = int(rng.integers(19, 26))
    y, x = rng.integers(0, 26 - s, size=2)
    crop = img[y:y + s, x:x + s]
    crop = crop[:, ::-1] if rng.random() < 0.5 else crop
    return render.to_uint8(crop * rng.uniform(0.7, 1.3) + rng.uniform(-0.15, 0.15))


# ---- specialized


@functools.cache
def _hed() -> Array:
    from skimage.color import rgb2hed

    return rgb2hed(_skimage("immunohistochemistry"))


@offline_task("ihc_dab", "specialized", 3,
           "DAB (brown) stain fraction of a 48-px immunohistochemistry patch, in tertiles: "
           "0 = low, 1 = medium, 2 = high (fraction of pixels with DAB > 0.08 after "
           "skimage.color.rgb2hed).",
           note="One 512x512 source picture; train and test patches come from disjoint 128-px "
                "blocks; tertile edges are set on the train pool, so test class balance follows "
                "the test region.")
def _ihc_dab(rng, size, n_pool, n_test):
    dab = (_hed()[..., 2] > 0.08).astype(np.float32)
    return _measured_patches(rng, _skimage("immunohistochemistry"), dab, 48, 128, size, n_pool,
                             n_test)


@offline_task("ihc_nuclei", "specialized", 3,
           "Nuclei density of a 48-px immunohistochemistry patch, in tertiles: 0 = low, "
           "1 = medium, 2 = high (fraction of pixels with haematoxylin > 0.04 after "
           "skimage.color.rgb2hed).",
           note="Same source picture as ihc_dab (a different label); disjoint 128-px blocks for "
                "train and test; tertile edges set on the train pool.")
def _ihc_nuclei(rng, size, n_pool, n_test):
    nuclei = (_hed()[..., 0] > 0.04).astype(np.float32)
    return _measured_patches(rng, _skimage("immunohistochemistry"), nuclei, 48, 128, size,
                             n_pool, n_test)


@functools.cache
def _retina() -> tuple[Array, Array, Array]:
    """Retina at half resolution, its vessel map (black top-hat of the green channel) and the
    eroded fundus mask."""
    from PIL import Image
    from scipy import ndimage
    from skimage.morphology import black_tophat, disk

    full = _skimage("retina")
    half = np.asarray(Image.fromarray(full).resize((full.shape[1] // 2, full.shape[0] // 2),
                                                   Image.Resampling.BILINEAR))
    fundus = ndimage.binary_erosion(half[..., 0] > 40, structure=disk(8))
    vessels = (black_tophat(half[..., 1] / 255.0, disk(5)) > 0.04) & fundus
    return half, vessels.astype(np.float32), fundus


@offline_task("retina_vessels", "specialized", 3,
           "Blood-vessel density of a fundus patch (96 px of the original retina picture), in "
           "tertiles: 0 = low, 1 = medium, 2 = high (vessel pixels by black top-hat of the "
           "green channel).",
           note="One 1411x1411 source picture (halved); only patches inside the fundus; train "
                "and test patches from disjoint 96-px blocks; tertile edges set on the train "
                "pool.")
def _retina_vessels(rng, size, n_pool, n_test):
    half, vessels, fundus = _retina()
    inside = lambda y, x: fundus[y:y + 48, x:x + 48].all()  # noqa: E731
    return _measured_patches(rng, half, vessels, 48, 96, size, n_pool, n_test, inside)


# ---- structured


def _rendered(rng: np.random.Generator, size: int, n_pool: int, n_test: int, classes: int,
              draw: Callable[[np.random.Generator, int], Array]):
    """Balanced labels (i % classes), one rendering each, for the pool then the test split."""
    out = []
    for n in (n_pool, n_test):
        labels = np.arange(n) % classes
        out += [render.resize_batch([draw(rng, int(c)) for c in labels], size), labels]
    return tuple(out)


def _bin(rng: np.random.Generator, lo: float, hi: float, label: int, bins: int) -> float:
    width = (hi - lo) / bins
    return rng.uniform(lo + label * width, lo + (label + 1) * width)


@offline_task("sprite_location", "structured", 8,
           "x-position of a dSprites-like sprite (square, ellipse or heart; random y, scale, "
           "angle), in 8 equal bins from left (0) to right (7).",
           note="VTAB's dSprites-location uses 16 bins; 8 here.")
def _sprite_location(rng, size, n_pool, n_test):
    def draw(rng, label):
        shape = render.SPRITE_SHAPES[rng.integers(3)]
        x = _bin(rng, 10, render.NATIVE - 10, label, 8)
        y = rng.uniform(10, render.NATIVE - 10)
        return render.render_sprite(rng, shape, x, y, rng.uniform(5, 10),
                                    rng.uniform(0, 2 * math.pi))
    return _rendered(rng, size, n_pool, n_test, 8, draw)


@offline_task("sprite_orientation", "structured", 8,
           "Orientation of a dSprites-like sprite with no rotational symmetry (heart, arrow or "
           "L), in 8 bins of 45 degrees.",
           note="VTAB's dSprites-orientation uses 16 bins; 8 here.")
def _sprite_orientation(rng, size, n_pool, n_test):
    def draw(rng, label):
        shape = render.ORIENTED_SHAPES[rng.integers(3)]
        r = rng.uniform(10, 18)
        x, y = rng.uniform(r + 2, render.NATIVE - r - 2, size=2)
        return render.render_sprite(rng, shape, x, y, r, _bin(rng, 0, 2 * math.pi, label, 8))
    return _rendered(rng, size, n_pool, n_test, 8, draw)


@offline_task("count", "structured", 6,
           "Number of objects (spheres and cubes) in a CLEVR-like scene, 1-6 (label = count - 1).")
def _count(rng, size, n_pool, n_test):
    return _rendered(rng, size, n_pool, n_test, 6,
                     lambda rng, label: render.render_count_scene(rng, label + 1))


@offline_task("distance", "structured", 4,
           "Depth of the nearest of 1-4 objects on a ground plane seen in perspective, in 4 equal "
           "bins of depth 1-3 (0 = nearest; an object at depth z stands on row 18 + 44/z of 64).")
def _distance(rng, size, n_pool, n_test):
    lo, hi = render.DEPTH_RANGE

    def draw(rng, label):
        z0 = _bin(rng, lo, hi, label, 4)
        depths = [z0, *rng.uniform(z0, hi, size=int(rng.integers(0, 4)))]
        return render.render_depth_scene(rng, depths)
    return _rendered(rng, size, n_pool, n_test, 4, draw)
