"""Procedurally generated shape scenes: an embedded, download-free vision-language dataset.

Every sample is a small RGB image with one or two coloured shapes on a muted textured background,
together with several captions, a shape class label, a question / answer pair, and a statement
that is or is not entailed by the scene. Generation is pure PIL + numpy and deterministic per
``(seed, split, index)``; the train / val / test splits use disjoint scene descriptors, so the
held-out splits test generalisation to unseen combinations of attributes.

The same sample serves every task: ``image`` alone (image-only), ``captions`` alone (text-only),
``(image, captions)`` (retrieval / contrastive), ``(image, label)`` (classification, classes in
``SHAPES``), ``(image, question, answer)`` (VQA-like, answers in ``ANSWERS``) and
``(captions[0], statement, entailed)`` (sentence-pair entailment; ``captions[0]`` always mentions
every attribute of the scene, so the statement can be judged from it alone).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = [
    "ANSWERS",
    "BACKGROUNDS",
    "COLOURS",
    "COLOUR_RGB",
    "COLOUR_SYNONYMS",
    "RELATIONS",
    "RELATION_PHRASES",
    "SHAPES",
    "SHAPE_SYNONYMS",
    "SIZES",
    "SIZE_SYNONYMS",
    "SPLITS",
    "ZERO_SHOT_TEMPLATES",
    "Scene",
    "SceneDataset",
    "SceneObject",
    "distinct_scenes",
    "generate_scene",
]

SHAPES: list[str] = ["circle", "square", "triangle", "star", "diamond", "cross", "heart"]
COLOURS: list[str] = ["red", "green", "blue", "yellow", "purple", "orange", "white"]
SIZES: list[str] = ["small", "large"]
BACKGROUNDS: list[str] = ["plain", "striped", "dotted", "checked", "noisy", "gradient"]
RELATIONS: list[str] = ["left of", "right of", "above", "below"]
SPLITS: tuple[str, ...] = ("train", "val", "test")

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 45),
    "green": (40, 195, 60),
    "blue": (45, 95, 235),
    "yellow": (245, 230, 50),
    "purple": (160, 60, 210),
    "orange": (255, 130, 0),
    "white": (245, 245, 245),
}

SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "star": ("star",),
    "diamond": ("diamond",),
    "cross": ("cross", "plus sign"),
    "heart": ("heart",),
}
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {c: (c,) for c in COLOURS} | {
    "purple": ("purple", "violet")
}
SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big"),
}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
_BACKGROUND_PHRASES: dict[str, tuple[str, ...]] = {
    "plain": ("on a plain background", "on a plain dark background", "on a dark background"),
    "striped": ("on a striped background", "on stripes", "on a background with stripes"),
    "dotted": ("on a dotted background", "on dots", "on a background with dots"),
    "checked": ("on a checked background", "on a checkerboard", "on a chessboard pattern"),
    "noisy": ("on a noisy background", "on a background with noise"),
    "gradient": ("on a gradient background", "on a smooth gradient", "on a fading background"),
}
_BACKGROUND_STATEMENTS: dict[str, str] = {
    "plain": "the background is plain",
    "striped": "the background is striped",
    "dotted": "the background is dotted",
    "checked": "the background is checked",
    "noisy": "the background is noisy",
    "gradient": "the background is a gradient",
}
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_COUNT_WORDS = ("zero", "one", "two")
_COLOUR_QUESTIONS = (
    "what colour is the {}?",
    "what is the colour of the {}?",
    "which colour does the {} have?",
)
_SHAPE_QUESTIONS = ("what shape is the {} object?", "what is the {} shape?", "which shape is {}?")

ANSWERS: list[str] = ["yes", "no", "one", "two", *COLOURS, *SHAPES, *SIZES, *BACKGROUNDS]

# Prompts phrased like the captions, so a model trained on them can classify shapes zero-shot.
ZERO_SHOT_TEMPLATES: list[str] = [
    "a {}",
    "a picture of a {}",
    "a drawing of a {}",
    "there is a {}",
    "an image with a {}",
    "a {} shape",
]

NUM_CAPTIONS = 4
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 512
# Object radius ranges (half the larger bbox side) as fractions of the image side; two large
# objects always fit side by side: 2 * (0.22 + 0.22) + _GAP + 2 * _MARGIN <= 1.
_RADIUS = {"small": (0.08, 0.12), "large": (0.17, 0.22)}
_MARGIN, _GAP = 0.03, 0.04
_MIN_RADIUS_RATIO = 1.15  # two objects of the same size class still differ visibly in size
_DOMINANCE = 1.5  # a relation's axis offset is at least this times the other axis offset
_SUPERSAMPLE = 4
_MAX_DRAWS = 10_000
_DISTINCT_DRAWS = 4  # draws per scene that distinct_scenes may look through
# A held-out split holds about 8,500 descriptors (10% of 85,000), half of its draws come from the
# ~60 one-object ones: 4 draws per scene reliably give this many distinct scenes.
MAX_DISTINCT_SCENES = 2000
# Drawn scenes kept per process (each loader worker has its own), by memory: a run draws each
# training scene a few times (several epochs, and the image, text and vl streams of one split),
# and drawing costs more than a batch's tokenising and transforms together. A 64 px scene takes
# about 20 KiB (12 KiB of pixels, the rest its texts and objects): 384 MiB hold about 19,600.
SCENE_CACHE_BYTES = 384 * 2**20
_SCENE_OVERHEAD_BYTES = 8 * 2**10


class SceneObject(NamedTuple):
    """Metadata of one drawn object; ``bbox`` is ``(x0, y0, x1, y1)`` in pixels."""

    shape: str
    colour: str
    size: str
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True)
class Scene:
    """One sample: image, captions, class label, question / answer and statement / entailment."""

    image: Image.Image
    captions: list[str]
    label: int
    question: str
    answer: str
    statement: str
    entailed: bool
    objects: tuple[SceneObject, ...]
    background: str = "plain"
    relation: str | None = None  # where objects[0] is relative to objects[1]

    @property
    def descriptor(self) -> tuple:
        """Canonical discrete description (what the split partition is based on)."""
        return _canonical(
            tuple((o.shape, o.colour, o.size) for o in self.objects), self.relation, self.background
        )


def _canonical(objects: tuple, relation: str | None, background: str) -> tuple:
    """Describe "A right of B" as "B left of A" (and below as above) so both read the same."""
    if relation in ("right of", "below"):
        objects, relation = objects[::-1], _INVERSE[relation]
    return (objects, relation, background)


def _split_of(seed: int, descriptor: tuple) -> str:
    """Deterministically assign a scene descriptor to the train, val or test partition."""
    digest = hashlib.blake2b(repr((seed, descriptor)).encode(), digest_size=8).digest()
    bucket = int.from_bytes(digest, "little") % 1000
    return "val" if bucket < 100 else "test" if bucket < 200 else "train"


def _check_image_size(image_size: int) -> None:
    """Validate the image side length."""
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size}"
        )


def _check_objects(min_objects: int, max_objects: int) -> None:
    """Validate the range of objects per scene."""
    if not 1 <= min_objects <= max_objects <= 2:
        raise ValueError(
            f"need 1 <= min_objects <= max_objects <= 2, got {min_objects}, {max_objects}"
        )


# ---------------------------------------------------------------------------------------------
# Geometry and rendering
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Language: captions, questions, statements
# ---------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    """Uniformly choose one of ``options``."""
    return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
    """Prefix ``phrase`` with "a" or "an"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun_phrase(rng: np.random.Generator, obj: SceneObject, with_size: bool) -> str:
    """E.g. "a large red circle" or, without size, "a red disc"."""
    words = [_pick(rng, SIZE_SYNONYMS[obj.size])] if with_size else []
    words += [_pick(rng, COLOUR_SYNONYMS[obj.colour]), _pick(rng, SHAPE_SYNONYMS[obj.shape])]
    return _article(" ".join(words))


# (template, mentions size, mentions background); {x} / {y} are noun phrases, {bg} a background
# phrase such as "on a striped background", {rel} a relation phrase such as "to the left of".
_ONE_OBJECT_TEMPLATES: list[tuple[str, bool, bool]] = [
    ("{x} {bg}", True, True),
    ("there is {x} {bg}", True, True),
    ("a picture of {x} {bg}", True, True),
    ("an image with {x} {bg}", True, True),
    ("one shape {bg}: {x}", True, True),
    ("a drawing of {x}", True, False),
    ("{x} {bg}", False, True),
]
_TWO_OBJECT_TEMPLATES: list[tuple[str, bool, bool]] = [
    ("{x} {rel} {y} {bg}", True, True),
    ("there is {x} {rel} {y} {bg}", True, True),
    ("a picture of {x} {rel} {y} {bg}", True, True),
    ("an image with {x} {rel} {y} {bg}", True, True),
    ("two shapes {bg}: {x} {rel} {y}", True, True),
    ("a drawing of {x} {rel} {y} {bg}", True, True),
    ("two shapes: {x} {rel} {y}", True, False),
    ("{x} {rel} {y} {bg}", False, True),
]


def _caption(
    rng: np.random.Generator,
    template: tuple[str, bool, bool],
    objects: tuple[SceneObject, ...],
    relation: str | None,
    background: str,
) -> str:
    """Fill one caption template with randomly chosen synonyms and object order."""
    fmt, with_size, _ = template
    bg = _pick(rng, _BACKGROUND_PHRASES[background])
    if relation is None:
        return fmt.format(x=_noun_phrase(rng, objects[0], with_size), bg=bg)
    x, y, rel = objects[0], objects[1], relation
    if rng.random() < 0.5:  # describe "b right of a" instead of "a left of b"
        x, y, rel = y, x, _INVERSE[rel]
    return fmt.format(
        x=_noun_phrase(rng, x, with_size),
        y=_noun_phrase(rng, y, with_size),
        rel=_pick(rng, RELATION_PHRASES[rel]),
        bg=bg,
    )


def _captions(
    rng: np.random.Generator,
    objects: tuple[SceneObject, ...],
    relation: str | None,
    background: str,
) -> list[str]:
    """``NUM_CAPTIONS`` distinct captions; the first always mentions size and background."""
    templates = _ONE_OBJECT_TEMPLATES if relation is None else _TWO_OBJECT_TEMPLATES
    complete = [t for t in templates if t[1] and t[2]]
    captions = [_caption(rng, _pick(rng, complete), objects, relation, background)]
    for _ in range(100):
        if len(captions) == NUM_CAPTIONS:
            break
        template = templates[int(rng.integers(len(templates)))]
        caption = _caption(rng, template, objects, relation, background)
        if caption not in captions:
            captions.append(caption)
    return captions


def _other(rng: np.random.Generator, options: list[str], exclude: set[str]) -> str:
    """A random element of ``options`` not in ``exclude``."""
    return _pick(rng, [o for o in options if o not in exclude])


def _false_object(rng: np.random.Generator, objects: tuple[SceneObject, ...]) -> tuple[str, str]:
    """A (colour, shape) pair absent from the scene, usually one attribute away from an object."""
    present = {(o.colour, o.shape) for o in objects}
    obj = objects[int(rng.integers(len(objects)))]
    for _ in range(100):
        kind = rng.integers(3)
        colour = _pick(rng, COLOURS) if kind != 1 else obj.colour
        shape = _pick(rng, SHAPES) if kind != 0 else obj.shape
        if (colour, shape) not in present:
            return colour, shape
    raise AssertionError("unreachable: a scene cannot contain every colour-shape pair")


def _question(
    rng: np.random.Generator,
    objects: tuple[SceneObject, ...],
    relation: str | None,
    background: str,
) -> tuple[str, str]:
    """A question about the scene and its answer (from ``ANSWERS``)."""
    kinds = ["colour", "shape", "size", "count", "exists", "background"]
    if relation is not None:
        kinds += ["relation", "relation_yes_no"]
    kind = _pick(rng, kinds)
    obj = objects[int(rng.integers(len(objects)))]
    if kind == "colour":
        fmt = _pick(rng, _COLOUR_QUESTIONS)
        return fmt.format(obj.shape), obj.colour
    if kind == "shape":
        fmt = _pick(rng, _SHAPE_QUESTIONS)
        return fmt.format(obj.colour), obj.shape
    if kind == "size":
        fmt = _pick(rng, ("what size is the {} {}?", "is the {} {} small or large?"))
        return fmt.format(obj.colour, obj.shape), obj.size
    if kind == "count":
        fmt = _pick(rng, ("how many shapes are there?", "how many objects are in the picture?"))
        return fmt, _COUNT_WORDS[len(objects)]
    if kind == "background":
        fmt = _pick(rng, ("what kind of background is it?", "what pattern is the background?"))
        return fmt, background
    if kind == "exists":
        if rng.random() < 0.5:
            return f"is there {_article(f'{obj.colour} {obj.shape}')}?", "yes"
        colour, shape = _false_object(rng, objects)
        return f"is there {_article(f'{colour} {shape}')}?", "no"
    # Two objects: relations of "other" relative to "obj".
    index = objects.index(obj)
    other = objects[1 - index]
    rel = relation if index == 1 else _INVERSE[relation]  # where other is relative to obj
    if kind == "relation":
        phrase = _pick(rng, RELATION_PHRASES[rel])
        if rng.random() < 0.5:
            return f"what is {phrase} the {obj.shape}?", other.shape
        return f"what colour is the shape {phrase} the {obj.shape}?", other.colour
    truth = rng.random() < 0.5
    phrase = _pick(rng, RELATION_PHRASES[rel if truth else _INVERSE[rel]])
    return f"is the {other.shape} {phrase} the {obj.shape}?", "yes" if truth else "no"


def _statement(
    rng: np.random.Generator,
    objects: tuple[SceneObject, ...],
    relation: str | None,
    background: str,
) -> tuple[str, bool]:
    """A statement about the scene, true or (one attribute swapped) false with equal odds."""
    truth = bool(rng.random() < 0.5)
    kinds = ["colour", "shape", "size", "count", "background", "exists"]
    if relation is not None:
        kinds.append("relation")
    kind = _pick(rng, kinds)
    index = int(rng.integers(len(objects)))
    obj = objects[index]
    if kind == "colour":
        colour = obj.colour if truth else _other(rng, COLOURS, {obj.colour})
        return f"the {obj.shape} is {colour}", truth
    if kind == "shape":
        shape = obj.shape if truth else _other(rng, SHAPES, {obj.shape})
        return f"the {obj.colour} shape is {_article(shape)}", truth
    if kind == "size":
        size = obj.size if truth else _other(rng, SIZES, {obj.size})
        return f"the {obj.colour} {obj.shape} is {size}", truth
    if kind == "count":
        count = len(objects) if truth else 3 - len(objects)
        return ("there is one shape" if count == 1 else "there are two shapes"), truth
    if kind == "background":
        bg = background if truth else _other(rng, BACKGROUNDS, {background})
        return _BACKGROUND_STATEMENTS[bg], truth
    if kind == "exists":
        colour, shape = (obj.colour, obj.shape) if truth else _false_object(rng, objects)
        return f"there is {_article(f'{colour} {shape}')}", truth
    other = objects[1 - index]
    rel = relation if index == 0 else _INVERSE[relation]  # where obj is relative to other
    phrase = _pick(rng, RELATION_PHRASES[rel if truth else _INVERSE[rel]])
    return f"the {obj.shape} is {phrase} the {other.shape}", truth


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


def _draw_descriptor(
    rng: np.random.Generator, min_objects: int, max_objects: int
) -> tuple[tuple[tuple[str, str, str], ...], str | None, str]:
    """Draw the discrete part of a scene: objects (distinct shapes and colours), relation, bg."""
    n = int(rng.integers(min_objects, max_objects + 1))
    shapes = rng.choice(len(SHAPES), n, replace=False)
    colours = rng.choice(len(COLOURS), n, replace=False)
    sizes = rng.integers(len(SIZES), size=n)
    objects = tuple(
        (SHAPES[s], COLOURS[c], SIZES[z]) for s, c, z in zip(shapes, colours, sizes, strict=True)
    )
    relation = _pick(rng, RELATIONS) if n == 2 else None
    return objects, relation, _pick(rng, BACKGROUNDS)


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


def _generate(
    rng: np.random.Generator,
    image_size: int,
    min_objects: int,
    max_objects: int,
    accept: Callable[[tuple], bool] | None = None,
) -> Scene:
    """Generate one scene whose canonical descriptor satisfies ``accept`` (if given)."""
    for _ in range(_MAX_DRAWS):
        described, relation, background = _draw_descriptor(rng, min_objects, max_objects)
        if accept is None or accept(_canonical(described, relation, background)):
            break
    else:
        raise RuntimeError("no scene descriptor satisfies the split partition")
    side = image_size
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
    objects = tuple(objects)
    image = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), "RGB")
    captions = _captions(rng, objects, relation, background)
    question, answer = _question(rng, objects, relation, background)
    statement, entailed = _statement(rng, objects, relation, background)
    largest = max(range(len(objects)), key=lambda i: radii[i])
    return Scene(
        image=image,
        captions=captions,
        label=SHAPES.index(objects[largest].shape),
        question=question,
        answer=answer,
        statement=statement,
        entailed=entailed,
        objects=objects,
        background=background,
        relation=relation,
    )


class _SceneCache:
    """Least-recently-used scenes, bounded by their estimated memory."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0
        self.scenes: OrderedDict[tuple, Scene] = OrderedDict()

    @staticmethod
    def cost(scene: Scene) -> int:
        pixels = scene.image.width * scene.image.height * len(scene.image.getbands())
        return pixels + _SCENE_OVERHEAD_BYTES

    def get(self, key: tuple) -> Scene | None:
        scene = self.scenes.get(key)
        if scene is not None:
            self.scenes.move_to_end(key)
        return scene

    def put(self, key: tuple, scene: Scene) -> None:
        self.scenes[key] = scene
        self.used += self.cost(scene)
        while self.used > self.budget:
            self.used -= self.cost(self.scenes.popitem(last=False)[1])


_CACHE = _SceneCache(SCENE_CACHE_BYTES)


def generate_scene(
    rng: np.random.Generator, image_size: int = 64, min_objects: int = 1, max_objects: int = 2
) -> Scene:
    """Generate one random scene from ``rng`` (no split partition applied)."""
    _check_image_size(image_size)
    _check_objects(min_objects, max_objects)
    return _generate(rng, image_size, min_objects, max_objects)


class SceneDataset(torch.utils.data.Dataset):
    """Deterministic, random-access dataset of ``size`` generated scenes for one split."""

    def __init__(
        self,
        split: str = "train",
        size: int = 10_000,
        image_size: int = 64,
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 2,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if size < 1:
            raise ValueError(f"size must be a positive number of scenes, got {size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        _check_image_size(image_size)
        _check_objects(min_objects, max_objects)
        self.split, self.size, self.image_size, self.seed = split, size, image_size, seed
        self.min_objects, self.max_objects = min_objects, max_objects
        self._split_id = SPLITS.index(split)

    def __len__(self) -> int:
        """Number of scenes."""
        return self.size

    def rng(self, index: int) -> np.random.Generator:
        """The generator of scene ``index``: a child of the ``(seed, split)`` seed sequence."""
        sequence = np.random.SeedSequence(self.seed, spawn_key=(self._split_id, index))
        return np.random.default_rng(sequence)

    def accepts(self, descriptor: tuple) -> bool:
        """Whether a canonical scene descriptor belongs to this dataset's split partition."""
        return _split_of(self.seed, descriptor) == self.split

    def __getitem__(self, index: int) -> Scene:
        """Scene ``index``, identical whatever the access order or worker."""
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} scenes")
        key = (self.seed, self.split, self.image_size, self.min_objects, self.max_objects, index)
        scene = _CACHE.get(key)
        if scene is None:
            scene = self.generate(index)
            _CACHE.put(key, scene)
        return scene

    def generate(self, index: int) -> Scene:
        """Draw scene ``index`` (0 <= index < size) afresh: what indexing returns, without the
        per-process cache (``SCENE_CACHE_BYTES``) that indexing keeps."""
        return _generate(
            self.rng(index), self.image_size, self.min_objects, self.max_objects, self.accepts
        )


def distinct_scenes(split: str, count: int, image_size: int = 64, seed: int = 0) -> list[Scene]:
    """The first ``count`` scenes of ``split`` whose descriptors all differ (retrieval sets).

    A split draws descriptors with repetition, and one-object descriptors are few (about 60 per
    held-out split), so a few hundred consecutive scenes repeat some descriptions exactly. Two
    such scenes fit each other's captions equally well, which leaves retrieval without a single
    right answer; a retrieval set keeps only the first scene of each descriptor.
    """
    if not 1 <= count <= MAX_DISTINCT_SCENES:
        raise ValueError(
            f"a retrieval set holds 1 to {MAX_DISTINCT_SCENES} distinct scenes, got {count}"
        )
    dataset = SceneDataset(
        split=split, size=_DISTINCT_DRAWS * count, image_size=image_size, seed=seed
    )
    scenes: list[Scene] = []
    seen: set[tuple] = set()
    for index in range(len(dataset)):
        scene = dataset[index]
        if scene.descriptor not in seen:
            seen.add(scene.descriptor)
            scenes.append(scene)
            if len(scenes) == count:
                return scenes
    raise ValueError(
        f"the {split} split gave only {len(scenes)} distinct scenes in {len(dataset)} draws; "
        f"ask for fewer than {count}"
    )
