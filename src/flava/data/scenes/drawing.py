"""Drawing a scene: shapes as polygons, anti-aliased (supersampled) onto a muted textured
background, placed inside the image without overlap and unambiguously in their relation."""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from flava.data.scenes.attributes import COLOUR_RGB, SceneObject

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 512
# Object radius ranges (half the larger bbox side) as fractions of the image side; two large
# objects always fit side by side: 2 * (0.22 + 0.22) + _GAP + 2 * _MARGIN <= 1.
_RADIUS = {"small": (0.08, 0.12), "large": (0.17, 0.22)}
_MARGIN, _GAP = 0.03, 0.04
_MIN_RADIUS_RATIO = 1.15  # two objects of the same size class still differ visibly in size
_DOMINANCE = 1.5  # a relation's axis offset is at least this times the other axis offset
_SUPERSAMPLE = 4


def _normalise(points: np.ndarray) -> np.ndarray:
    """Centre a polygon on its bbox and scale its larger half-extent to 1."""
    lo, hi = points.min(0), points.max(0)
    return (points - (lo + hi) / 2) / ((hi - lo).max() / 2)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    """Vertices of a star pointing up."""
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)


def _heart(n: int = 48) -> np.ndarray:
    """Vertices of the classic parametric heart curve (y pointing down)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], 1)


def _cross(arm: float = 0.34) -> np.ndarray:
    """Vertices of a plus-shaped cross with half arm width ``arm``."""
    a = arm
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
         (-1, -a), (-a, -a)],
        dtype=float,
    )  # fmt: skip


_circle_angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
_POLYGONS: dict[str, np.ndarray] = {
    name: _normalise(np.asarray(points, dtype=float))
    for name, points in {
        "circle": np.stack([np.cos(_circle_angles), np.sin(_circle_angles)], 1),
        "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
        "triangle": [(0, -1), (1.05, 0.82), (-1.05, 0.82)],
        "star": _star(),
        "diamond": [(0, -1), (0.72, 0), (0, 1), (-0.72, 0)],
        "cross": _cross(),
        "heart": _heart(),
    }.items()
}


def _bbox(shape: str, cx: float, cy: float, r: float) -> tuple[float, float, float, float]:
    """Pixel bbox of a shape centred at ``(cx, cy)`` with radius ``r``."""
    pts = _POLYGONS[shape]
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    return (float(cx + x0 * r), float(cy + y0 * r), float(cx + x1 * r), float(cy + y1 * r))


def _draw_object(
    canvas: np.ndarray, shape: str, cx: float, cy: float, r: float, rgb: np.ndarray
) -> None:
    """Alpha-blend an anti-aliased (supersampled) shape into ``canvas`` (H, W, 3 float32)."""
    side = canvas.shape[0]
    px0, py0 = max(0, math.floor(cx - r) - 1), max(0, math.floor(cy - r) - 1)
    px1, py1 = min(side, math.ceil(cx + r) + 1), min(side, math.ceil(cy + r) + 1)
    ss = _SUPERSAMPLE
    mask = Image.new("L", ((px1 - px0) * ss, (py1 - py0) * ss), 0)
    pts = (_POLYGONS[shape] * r + (cx - px0, cy - py0)) * ss
    ImageDraw.Draw(mask).polygon([tuple(p) for p in pts.tolist()], fill=255)
    alpha = np.asarray(mask.reduce(ss), dtype=np.float32)[..., None] / 255.0
    region = canvas[py0:py1, px0:px1]
    region += alpha * (rgb - region)


@functools.lru_cache(maxsize=8)
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Broadcastable pixel-centre coordinates ``(yy, xx)`` of shapes (side, 1) and (1, side)."""
    coords = np.arange(side, dtype=np.float32) + 0.5
    return coords[:, None], coords[None, :]


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] to an RGB float vector in [0, 255]."""
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return (v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(np.float32) * 255


def _square_wave(u: np.ndarray, half_period: float) -> np.ndarray:
    """Pixel-averaged (anti-aliased) square wave in [-1, 1]: +1 on even half periods of ``u``."""
    f = u % (2 * half_period)
    inside = np.minimum(f, half_period - f)  # distance to an edge, positive in the +1 half
    outside = np.minimum(f - half_period, 2 * half_period - f)
    return np.clip(2 * np.where(f < half_period, inside, -outside), -1.0, 1.0)


def _background(rng: np.random.Generator, kind: str, side: int) -> np.ndarray:
    """A muted, dark, low-contrast texture (H, W, 3 float32) so bright objects stay visible."""
    hue, sat, val = rng.random(), rng.uniform(0.1, 0.35), rng.uniform(0.14, 0.3)
    c1 = _hsv(hue, sat, val)
    c2 = _hsv((hue + rng.uniform(-0.06, 0.06)) % 1, sat, val + rng.uniform(0.08, 0.13))
    yy, xx = _grid(side)
    period = rng.uniform(0.1, 0.2) * side
    ox, oy = rng.uniform(0, period, 2)
    if kind == "plain":
        return np.broadcast_to(c1, (side, side, 3)).copy()
    if kind == "striped":
        angle = rng.choice([0.0, 0.25, 0.5, 0.75]) * np.pi
        t = xx * np.cos(angle) + yy * np.sin(angle) + ox
        cover = 0.5 + 0.5 * _square_wave(t, period / 2)
    elif kind == "dotted":
        radius = period * rng.uniform(0.2, 0.3)
        dx, dy = (xx + ox) % period - period / 2, (yy + oy) % period - period / 2
        cover = np.clip(radius + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)
    elif kind == "checked":
        cover = 0.5 - 0.5 * _square_wave(xx + ox, period) * _square_wave(yy + oy, period)
    elif kind == "noisy":
        noise = rng.standard_normal((side, side, 1), dtype=np.float32) * rng.uniform(8, 14)
        return np.clip(c1 + noise, 0, 255)
    elif kind == "gradient":
        c2 = _hsv((hue + rng.uniform(0.2, 0.5)) % 1, sat, val + rng.uniform(0.1, 0.16))
        angle = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(angle) + yy * np.sin(angle)
        cover = (t - t.min()) / (t.max() - t.min())
    else:  # pragma: no cover - guarded by BACKGROUNDS
        raise ValueError(f"unknown background {kind!r}")
    cover = np.broadcast_to(cover, (side, side))[..., None].astype(np.float32)
    return c1 + cover * (c2 - c1)


def _place(
    rng: np.random.Generator, radii: list[float], relation: str | None, side: int
) -> list[tuple[float, float]]:
    """Object centres: inside the image, non-overlapping, and unambiguously in ``relation``."""
    margin = _MARGIN * side
    if relation is None:
        (r,) = radii
        return [tuple(rng.uniform(margin + r, side - margin - r, 2))]
    ra, rb = radii
    # "along" is the relation's axis (x for left / right, y for above / below).
    lo, hi = ra + rb + _GAP * side, side - 2 * margin - ra - rb
    dist = rng.uniform(lo, max(lo, hi))
    first_is_a = relation in ("left of", "above")  # a has the smaller coordinate along the axis
    r_low, r_high = (ra, rb) if first_is_a else (rb, ra)
    low = rng.uniform(margin + r_low, max(margin + r_low, side - margin - r_high - dist))
    along_a, along_b = (low, low + dist) if first_is_a else (low + dist, low)
    across_a = rng.uniform(margin + ra, side - margin - ra)
    slack = dist / _DOMINANCE
    across_b = rng.uniform(
        max(margin + rb, across_a - slack), min(side - margin - rb, across_a + slack)
    )
    if relation in ("left of", "right of"):
        return [(along_a, across_a), (along_b, across_b)]
    return [(across_a, along_a), (across_b, along_b)]


def _relation_between(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Where centre ``a`` is relative to centre ``b`` (image y axis points down)."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _radii(rng: np.random.Generator, sizes: list[str], side: int) -> list[float]:
    """Object radii in pixels; objects of equal size class still differ by a visible ratio."""
    if len(sizes) == 2 and sizes[0] == sizes[1]:
        lo, hi = _RADIUS[sizes[0]]
        small = rng.uniform(lo, hi / _MIN_RADIUS_RATIO)
        big = rng.uniform(small * _MIN_RADIUS_RATIO, hi)
        radii = [small, big] if rng.random() < 0.5 else [big, small]
    else:
        radii = [rng.uniform(*_RADIUS[s]) for s in sizes]
    return [r * side for r in radii]


def draw_scene(
    rng: np.random.Generator,
    described: tuple[tuple[str, str, str], ...],
    relation: str | None,
    background: str,
    side: int,
) -> tuple[Image.Image, tuple[SceneObject, ...], list[float]]:
    """The image of a scene descriptor ((shape, colour, size) per object, relation, background)
    at ``side`` pixels: (image, the objects with their bboxes, their radii in pixels)."""
    radii = _radii(rng, [d[2] for d in described], side)
    centres = _place(rng, radii, relation, side)
    if relation is not None:
        assert _relation_between(*centres) == relation
    canvas = _background(rng, background, side)
    jitter = rng.integers(-12, 13, size=(len(described), 3)).astype(np.float32)
    objects = []
    for (shape, colour, size), r, (cx, cy), dc in zip(
        described, radii, centres, jitter, strict=True
    ):
        rgb = np.clip(np.asarray(COLOUR_RGB[colour], dtype=np.float32) + dc, 0, 255)
        _draw_object(canvas, shape, cx, cy, r, rgb)
        objects.append(SceneObject(shape, colour, size, _bbox(shape, cx, cy, r)))
    image = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), "RGB")
    return image, tuple(objects), radii
