"""Procedural image rendering for the offline task suite (:mod:`lightning_modules.offline`).

Everything here draws at a fixed native resolution (:data:`NATIVE` pixels, square) with PIL and
numpy; :func:`resize_batch` brings a batch to the requested ``image_size``. Every function that
takes ``rng`` draws all of its randomness from it, so a seeded generator gives the same pixels.

- sprites and scenes for the structured downstream tasks (dSprites / CLEVR in spirit);
- shapes, glyphs (letters) and procedural textures for the pre-training source families.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

NATIVE = 64

SHAPE_CLASSES = ("circle", "square", "triangle", "ring", "cross", "star", "hexagon", "arrow")
SPRITE_SHAPES = ("square", "ellipse", "heart")  # dSprites' three shapes
ORIENTED_SHAPES = ("heart", "arrow", "ell")  # no rotational symmetry: angle in [0, 360) is visible
LETTERS = tuple("ACEFHKMPRW")
TEXTURE_CLASSES = (
    "grating_low", "grating_high", "plaid", "checker", "rings", "blobs", "dots", "smooth_noise",
)


# ---------------------------------------------------------------- pixels


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8 (rounded, clipped)."""
    return np.clip(np.asarray(x, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def resize_batch(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """uint8 images (H, W) or (H, W, 3) -> (N, size, size, 3) uint8, bilinear with antialiasing."""
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        img = np.asarray(img, dtype=np.uint8)
        pil = Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(pil)
        out[i] = arr[..., None] if arr.ndim == 2 else arr
    return out


def random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=3)


def contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour whose mean brightness differs from ``background``'s by at least 0.25."""
    for _ in range(100):
        c = random_colour(rng)
        if abs(c.mean() - background.mean()) >= 0.25:
            return c
    return 1.0 - background


def noisy_background(rng: np.random.Generator, n: int = NATIVE) -> np.ndarray:
    """Float (n, n, 3): a random base colour, a linear gradient and Gaussian pixel noise."""
    base = random_colour(rng)
    ramp = np.linspace(-0.5, 0.5, n)
    angle = rng.uniform(0, 2 * math.pi)
    grad = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    img = base + rng.uniform(0.0, 0.3) * grad[..., None]
    img = img + rng.normal(0.0, rng.uniform(0.02, 0.1), size=(n, n, 3))
    return np.clip(img, 0.0, 1.0)


def rgb_tuple(c: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in to_uint8(c))  # type: ignore[return-value]


# ---------------------------------------------------------------- shapes


def _rotate(points: np.ndarray, angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    x = points[:, 0] * c - points[:, 1] * s + cx
    y = points[:, 0] * s + points[:, 1] * c + cy
    return list(zip(x.tolist(), y.tolist()))


def _regular(k: int, r: float, phase: float = -math.pi / 2) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(k) / k
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _star(r: float) -> np.ndarray:
    t = -math.pi / 2 + math.pi * np.arange(10) / 5
    radius = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _cross(r: float) -> np.ndarray:
    a, b = 0.35 * r, r
    return np.array([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b),
                     (-a, a), (-b, a), (-b, -a), (-a, -a)])


def _heart(r: float) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2], axis=1) * (r / 17.0)


def _arrow(r: float) -> np.ndarray:
    return np.array([(0, -r), (0.7 * r, -0.1 * r), (0.25 * r, -0.1 * r), (0.25 * r, r),
                     (-0.25 * r, r), (-0.25 * r, -0.1 * r), (-0.7 * r, -0.1 * r)])


def _ell(r: float) -> np.ndarray:
    return np.array([(-0.6 * r, -r), (-0.1 * r, -r), (-0.1 * r, 0.5 * r), (0.7 * r, 0.5 * r),
                     (0.7 * r, r), (-0.6 * r, r)])


def _ellipse(r: float) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    return np.stack([r * np.cos(t), 0.5 * r * np.sin(t)], axis=1)


_POLYGONS = {
    "square": lambda r: _regular(4, r, -math.pi / 4),
    "triangle": lambda r: _regular(3, r),
    "hexagon": lambda r: _regular(6, r),
    "star": _star,
    "cross": _cross,
    "heart": _heart,
    "arrow": _arrow,
    "ell": _ell,
    "ellipse": _ellipse,
}


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float,
               angle: float, fill) -> None:
    """Draw one filled shape of radius ``r`` centred at (cx, cy), rotated by ``angle`` radians."""
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "ring":
        draw.ellipse(box, outline=fill, width=max(2, round(0.35 * r)))
    else:
        draw.polygon(_rotate(_POLYGONS[kind](r), angle, cx, cy), fill=fill)


def render_shape(rng: np.random.Generator, label: int) -> np.ndarray:
    """Source family ``shapes``: one ``SHAPE_CLASSES[label]`` shape on a noisy background."""
    bg = noisy_background(rng)
    img = Image.fromarray(to_uint8(bg))
    r = rng.uniform(9, 22)
    cx, cy = rng.uniform(r + 1, NATIVE - r - 1, size=2)
    fill = rgb_tuple(contrasting_colour(rng, bg.mean(axis=(0, 1))))
    draw_shape(ImageDraw.Draw(img), SHAPE_CLASSES[label], cx, cy, r, rng.uniform(0, 2 * math.pi),
               fill)
    noise = rng.normal(0.0, 0.03, size=(NATIVE, NATIVE, 3))
    return to_uint8(np.asarray(img) / 255.0 + noise)


# ---------------------------------------------------------------- structured scenes


def render_sprite(rng: np.random.Generator, shape: str, cx: float, cy: float, r: float,
                  angle: float) -> np.ndarray:
    """dSprites-like: one white sprite on black, (NATIVE, NATIVE) uint8."""
    img = Image.new("L", (NATIVE, NATIVE), 0)
    draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, angle, 255)
    return np.asarray(img)


def _floor(rng: np.random.Generator, horizon: int = 0) -> np.ndarray:
    """CLEVR-like grey floor (lighter far away) with a darker sky above ``horizon``."""
    grey = rng.uniform(0.35, 0.6)
    rows = np.linspace(0.08, -0.08, NATIVE)[:, None, None]
    img = np.broadcast_to(grey + rows, (NATIVE, NATIVE, 3)).copy()
    img[:horizon] = grey * 0.55
    img += rng.normal(0.0, 0.015, size=img.shape)
    return np.clip(img, 0.0, 1.0)


def _solid(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
           r: float) -> None:
    """A shaded CLEVR-ish object (sphere or cube) with a soft shadow below it."""
    colour = rng.uniform(0.15, 0.95, size=3)
    draw.ellipse((cx - r, cy + 0.5 * r, cx + r, cy + 1.1 * r), fill=(40, 40, 40))
    if rng.random() < 0.5:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb_tuple(colour * 0.7))
        h = 0.55 * r
        draw.ellipse((cx - h - 0.25 * r, cy - h - 0.25 * r, cx + h - 0.25 * r, cy + h - 0.25 * r),
                     fill=rgb_tuple(np.minimum(colour * 1.1, 1.0)))
    else:
        draw.rectangle((cx - r, cy - 0.8 * r, cx + r, cy + r), fill=rgb_tuple(colour * 0.7))
        draw.rectangle((cx - r, cy - r, cx + r, cy - 0.55 * r),
                       fill=rgb_tuple(np.minimum(colour * 1.15, 1.0)))


def render_count_scene(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` non-overlapping objects on a floor, (NATIVE, NATIVE, 3) uint8."""
    img = Image.fromarray(to_uint8(_floor(rng)))
    draw = ImageDraw.Draw(img)
    placed: list[tuple[float, float, float]] = []
    while len(placed) < count:
        r = rng.uniform(4, 7)
        cx, cy = rng.uniform(r + 1, NATIVE - r - 1), rng.uniform(r + 1, NATIVE - 1.2 * r - 1)
        if all(math.hypot(cx - x, cy - y) > r + q + 3 for x, y, q in placed):
            placed.append((cx, cy, r))
    for cx, cy, r in sorted(placed, key=lambda p: p[1]):
        _solid(draw, rng, cx, cy, r)
    return np.asarray(img)


HORIZON = 18
DEPTH_RANGE = (1.0, 3.0)


def render_depth_scene(rng: np.random.Generator, depths: Sequence[float]) -> np.ndarray:
    """Objects on a ground plane seen in perspective: an object at depth z stands on the row
    ``HORIZON + 44 / z`` and has radius ``12 / z`` (pinhole camera), far ones drawn first."""
    img = Image.fromarray(to_uint8(_floor(rng, HORIZON)))
    draw = ImageDraw.Draw(img)
    for z in sorted(depths, reverse=True):
        r = 12.0 / z
        base = HORIZON + 44.0 / z
        cx = rng.uniform(r + 1, NATIVE - r - 1)
        _solid(draw, rng, cx, base - r, r)
    return np.asarray(img)


# ---------------------------------------------------------------- glyphs


@functools.cache
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def render_glyph(rng: np.random.Generator, label: int) -> np.ndarray:
    """Source family ``glyphs``: letter ``LETTERS[label]`` with random size, position, rotation,
    stroke thickness and colours, on a noisy background."""
    mask = Image.new("L", (NATIVE, NATIVE), 0)
    size = int(rng.integers(26, 46))
    stroke = int(rng.integers(0, 3))
    cx, cy = rng.uniform(0.4 * NATIVE, 0.6 * NATIVE, size=2)
    ImageDraw.Draw(mask).text((cx, cy), LETTERS[label], fill=255, font=_font(size), anchor="mm",
                              stroke_width=stroke, stroke_fill=255)
    mask = mask.rotate(rng.uniform(-30, 30), resample=Image.Resampling.BILINEAR)
    m = np.asarray(mask, dtype=np.float64)[..., None] / 255.0
    bg = noisy_background(rng)
    ink = contrasting_colour(rng, bg.mean(axis=(0, 1)))
    return to_uint8(bg * (1.0 - m) + ink * m)


# ---------------------------------------------------------------- procedural textures


def _coords(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in [0, 1), rotated by a random angle: (u, v)."""
    t = np.arange(NATIVE) / NATIVE
    x, y = np.meshgrid(t, t)
    a = rng.uniform(0, math.pi)
    return x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)


def _grating(rng, lo, hi):
    u, _ = _coords(rng)
    return 0.5 + 0.5 * np.sin(2 * math.pi * rng.uniform(lo, hi) * u + rng.uniform(0, 2 * math.pi))


def _plaid(rng):
    return 0.5 * (_grating(rng, 3, 8) + _grating(rng, 3, 8))


def _checker(rng):
    u, v = _coords(rng)
    f = rng.uniform(2, 6)
    return (np.sin(2 * math.pi * f * u) * np.sin(2 * math.pi * f * v) > 0).astype(float)


def _rings(rng):
    t = np.arange(NATIVE) / NATIVE
    x, y = np.meshgrid(t, t)
    cx, cy = rng.uniform(-0.2, 1.2, size=2)
    return 0.5 + 0.5 * np.sin(2 * math.pi * rng.uniform(4, 10) * np.hypot(x - cx, y - cy))


def _smooth(rng, lo, hi):
    field = ndimage.gaussian_filter(rng.normal(size=(NATIVE, NATIVE)), rng.uniform(lo, hi),
                                    mode="wrap")
    return (field - field.min()) / (np.ptp(field) + 1e-9)


def _blobs(rng):
    field = _smooth(rng, 2.5, 5)
    return (field > np.quantile(field, rng.uniform(0.4, 0.7))).astype(float)


def _dots(rng):
    img = Image.new("L", (NATIVE, NATIVE), 0)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(1.2, 3.0)
    for x, y in rng.uniform(0, NATIVE, size=(int(rng.integers(15, 60)), 2)):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return np.asarray(img) / 255.0


_TEXTURES = {
    "grating_low": lambda rng: _grating(rng, 1.5, 4),
    "grating_high": lambda rng: _grating(rng, 8, 14),
    "plaid": _plaid,
    "checker": _checker,
    "rings": _rings,
    "blobs": _blobs,
    "dots": _dots,
    "smooth_noise": lambda rng: _smooth(rng, 3, 8),
}


def render_texture(rng: np.random.Generator, label: int) -> np.ndarray:
    """Source family ``textures``: pattern ``TEXTURE_CLASSES[label]`` mapped between two random
    colours, plus pixel noise."""
    p = _TEXTURES[TEXTURE_CLASSES[label]](rng)[..., None]
    c0 = random_colour(rng)
    c1 = contrasting_colour(rng, c0)
    noise = rng.normal(0.0, rng.uniform(0.01, 0.06), size=(NATIVE, NATIVE, 3))
    return to_uint8(c0 * (1.0 - p) + c1 * p + noise)
