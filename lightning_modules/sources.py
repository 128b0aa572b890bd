"""Source families: the rendered data the model zoo is pre-trained on.

``shapes``, ``glyphs`` (letters) and ``textures``, all rendered (:mod:`lightning_modules.render`),
sharing no image with any downstream task. :func:`load_source` gives one family's train split and
held-out val split, :func:`load_source_mix` the union of several (generalist models). Builds are
deterministic for a seed and cached as ``root/sources/<family>-<size>px-seed<seed>.npz`` (written
atomically).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lightning_modules import render
from lightning_modules.task_data import load_arrays, save_arrays, task_rng
from whichmodel.registry import Registry

Array = np.ndarray


@dataclass(frozen=True)
class SourceFamily:
    """A family's class names and ``draw(rng, label)``, which renders one native-size image."""

    classes: tuple[str, ...]
    draw: Callable[[np.random.Generator, int], Array]


# Registered in alphabetical order, the order of list_source_families() and of error messages.
FAMILIES: Registry[SourceFamily] = Registry("source family")
FAMILIES.register("glyphs", SourceFamily(render.LETTERS, render.render_glyph))
FAMILIES.register("shapes", SourceFamily(render.SHAPE_CLASSES, render.render_shape))
FAMILIES.register("textures", SourceFamily(render.TEXTURE_CLASSES, render.render_texture))


@dataclass
class SourceData:
    family: str
    class_names: list[str]
    image_size: int
    seed: int
    train: tuple[Array, Array]
    val: tuple[Array, Array] = field(repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def list_source_families() -> list[str]:
    return sorted(FAMILIES)


def source_cache_path(root: str | os.PathLike, family: str, image_size: int = 32,
                      seed: int = 0) -> pathlib.Path:
    return pathlib.Path(root) / "sources" / f"{family}-{image_size}px-seed{seed}.npz"


def _build_split(family: str, split: int, n: int, image_size: int, seed: int):
    """Example i has label i % classes and its own generator, so a shorter build is a prefix of
    a longer one."""
    fam = FAMILIES.get(family)
    labels = np.arange(n, dtype=np.int64) % len(fam.classes)
    imgs = [fam.draw(task_rng(seed, family, split, i), int(c)) for i, c in enumerate(labels)]
    return render.resize_batch(imgs, image_size), labels


def load_source(family: str, root: str | os.PathLike, image_size: int = 32, seed: int = 0,
                n_train: int = 4000, n_val: int = 1000) -> SourceData:
    """A source family's train split and held-out val split (labels cycle through the classes;
    shuffle when training). A cache with at least as many examples is sliced, else rebuilt."""
    classes = FAMILIES.get(family).classes
    path = source_cache_path(root, family, image_size, seed)
    arrays = load_arrays(path)
    if arrays is None or len(arrays["train_y"]) < n_train or len(arrays["val_y"]) < n_val:
        tx, ty = _build_split(family, 0, n_train, image_size, seed)
        vx, vy = _build_split(family, 1, n_val, image_size, seed)
        arrays = {"train_x": tx, "train_y": ty, "val_x": vx, "val_y": vy}
        save_arrays(path, arrays)
    return SourceData(family, list(classes), image_size, seed,
                      (arrays["train_x"][:n_train], arrays["train_y"][:n_train]),
                      (arrays["val_x"][:n_val], arrays["val_y"][:n_val]))


def load_source_mix(families: list[str], root: str | os.PathLike, image_size: int = 32,
                    seed: int = 0, n_train: int = 4000, n_val: int = 1000) -> SourceData:
    """Union of families for generalist models: labels offset per family (in the given order),
    class names ``family/class``; ``n_train``/``n_val`` are per family; train is shuffled."""
    if not families:
        raise ValueError("load_source_mix needs at least one family")
    parts = [load_source(f, root, image_size, seed, n_train, n_val) for f in families]
    offsets = np.cumsum([0] + [p.num_classes for p in parts[:-1]])
    names = [f"{p.family}/{c}" for p in parts for c in p.class_names]

    def join(split: str) -> tuple[Array, Array]:
        xs = np.concatenate([getattr(p, split)[0] for p in parts])
        ys = np.concatenate([getattr(p, split)[1] + o for p, o in zip(parts, offsets)])
        return xs, ys

    (tx, ty), val = join("train"), join("val")
    order = task_rng(seed, "mix", *families).permutation(len(ty))
    return SourceData("+".join(families), names, image_size, seed, (tx[order], ty[order]), val)
