"""The scenes' language: captions, questions with their answers (``ANSWERS``), statements
that are or are not entailed, and zero-shot prompts, with the synonyms and phrases they draw on.

Every choice is drawn from the scene's generator, in a fixed order, so a scene's texts are
deterministic per ``(seed, split, index)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from flava.data.scenes.attributes import (
    BACKGROUNDS,
    COLOURS,
    INVERSE,
    SHAPES,
    SIZES,
    SceneObject,
)

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


T = TypeVar("T")


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    """Uniformly choose one of ``options``."""
    return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
    """Prefix ``phrase`` with "a" or "an"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun_phrase(rng: np.random.Generator, obj: SceneObject, with_size: bool) -> str:
    """E.g. "a large red circle" or, without size, "a red disc"."""
    words = [pick(rng, SIZE_SYNONYMS[obj.size])] if with_size else []
    words += [pick(rng, COLOUR_SYNONYMS[obj.colour]), pick(rng, SHAPE_SYNONYMS[obj.shape])]
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
    bg = pick(rng, _BACKGROUND_PHRASES[background])
    if relation is None:
        return fmt.format(x=_noun_phrase(rng, objects[0], with_size), bg=bg)
    x, y, rel = objects[0], objects[1], relation
    if rng.random() < 0.5:  # describe "b right of a" instead of "a left of b"
        x, y, rel = y, x, INVERSE[rel]
    return fmt.format(
        x=_noun_phrase(rng, x, with_size),
        y=_noun_phrase(rng, y, with_size),
        rel=pick(rng, RELATION_PHRASES[rel]),
        bg=bg,
    )


def write_captions(
    rng: np.random.Generator,
    objects: tuple[SceneObject, ...],
    relation: str | None,
    background: str,
) -> list[str]:
    """``NUM_CAPTIONS`` distinct captions; the first always mentions size and background."""
    templates = _ONE_OBJECT_TEMPLATES if relation is None else _TWO_OBJECT_TEMPLATES
    complete = [t for t in templates if t[1] and t[2]]
    captions = [_caption(rng, pick(rng, complete), objects, relation, background)]
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
    return pick(rng, [o for o in options if o not in exclude])


def _false_object(rng: np.random.Generator, objects: tuple[SceneObject, ...]) -> tuple[str, str]:
    """A (colour, shape) pair absent from the scene, usually one attribute away from an object."""
    present = {(o.colour, o.shape) for o in objects}
    obj = objects[int(rng.integers(len(objects)))]
    for _ in range(100):
        kind = rng.integers(3)
        colour = pick(rng, COLOURS) if kind != 1 else obj.colour
        shape = pick(rng, SHAPES) if kind != 0 else obj.shape
        if (colour, shape) not in present:
            return colour, shape
    raise AssertionError("unreachable: a scene cannot contain every colour-shape pair")


def write_question(
    rng: np.random.Generator,
    objects: tuple[SceneObject, ...],
    relation: str | None,
    background: str,
) -> tuple[str, str]:
    """A question about the scene and its answer (from ``ANSWERS``)."""
    kinds = ["colour", "shape", "size", "count", "exists", "background"]
    if relation is not None:
        kinds += ["relation", "relation_yes_no"]
    kind = pick(rng, kinds)
    obj = objects[int(rng.integers(len(objects)))]
    if kind == "colour":
        fmt = pick(rng, _COLOUR_QUESTIONS)
        return fmt.format(obj.shape), obj.colour
    if kind == "shape":
        fmt = pick(rng, _SHAPE_QUESTIONS)
        return fmt.format(obj.colour), obj.shape
    if kind == "size":
        fmt = pick(rng, ("what size is the {} {}?", "is the {} {} small or large?"))
        return fmt.format(obj.colour, obj.shape), obj.size
    if kind == "count":
        fmt = pick(rng, ("how many shapes are there?", "how many objects are in the picture?"))
        return fmt, _COUNT_WORDS[len(objects)]
    if kind == "background":
        fmt = pick(rng, ("what kind of background is it?", "what pattern is the background?"))
        return fmt, background
    if kind == "exists":
        if rng.random() < 0.5:
            return f"is there {_article(f'{obj.colour} {obj.shape}')}?", "yes"
        colour, shape = _false_object(rng, objects)
        return f"is there {_article(f'{colour} {shape}')}?", "no"
    # Two objects: relations of "other" relative to "obj".
    assert relation is not None  # the relation kinds are drawn only for two objects
    index = objects.index(obj)
    other = objects[1 - index]
    rel = relation if index == 1 else INVERSE[relation]  # where other is relative to obj
    if kind == "relation":
        phrase = pick(rng, RELATION_PHRASES[rel])
        if rng.random() < 0.5:
            return f"what is {phrase} the {obj.shape}?", other.shape
        return f"what colour is the shape {phrase} the {obj.shape}?", other.colour
    truth = rng.random() < 0.5
    phrase = pick(rng, RELATION_PHRASES[rel if truth else INVERSE[rel]])
    return f"is the {other.shape} {phrase} the {obj.shape}?", "yes" if truth else "no"


def write_statement(
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
    kind = pick(rng, kinds)
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
    assert relation is not None  # the relation kind is drawn only for two objects
    other = objects[1 - index]
    rel = relation if index == 0 else INVERSE[relation]  # where obj is relative to other
    phrase = pick(rng, RELATION_PHRASES[rel if truth else INVERSE[rel]])
    return f"the {obj.shape} is {phrase} the {other.shape}", truth
