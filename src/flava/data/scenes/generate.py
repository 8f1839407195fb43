"""Generating one scene: draw its descriptor (objects, relation, background), its image and
its texts, all from one generator in a fixed order."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flava.data.scenes.attributes import (
    BACKGROUNDS,
    COLOURS,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    canonical,
)
from flava.data.scenes.drawing import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, draw_scene
from flava.data.scenes.text import pick, write_captions, write_question, write_statement

_MAX_DRAWS = 10_000


def check_image_size(image_size: int) -> None:
    """Validate the image side length."""
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size}"
        )


def check_objects(min_objects: int, max_objects: int) -> None:
    """Validate the range of objects per scene."""
    if not 1 <= min_objects <= max_objects <= 2:
        raise ValueError(
            f"need 1 <= min_objects <= max_objects <= 2, got {min_objects}, {max_objects}"
        )


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
    relation = pick(rng, RELATIONS) if n == 2 else None
    return objects, relation, pick(rng, BACKGROUNDS)


def generate_accepted(
    rng: np.random.Generator,
    image_size: int,
    min_objects: int,
    max_objects: int,
    accept: Callable[[tuple], bool] | None = None,
) -> Scene:
    """Generate one scene whose canonical descriptor satisfies ``accept`` (if given)."""
    for _ in range(_MAX_DRAWS):
        described, relation, background = _draw_descriptor(rng, min_objects, max_objects)
        if accept is None or accept(canonical(described, relation, background)):
            break
    else:
        raise RuntimeError("no scene descriptor satisfies the split partition")
    image, objects, radii = draw_scene(rng, described, relation, background, image_size)
    captions = write_captions(rng, objects, relation, background)
    question, answer = write_question(rng, objects, relation, background)
    statement, entailed = write_statement(rng, objects, relation, background)
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


def generate_scene(
    rng: np.random.Generator, image_size: int = 64, min_objects: int = 1, max_objects: int = 2
) -> Scene:
    """Generate one random scene from ``rng`` (no split partition applied)."""
    check_image_size(image_size)
    check_objects(min_objects, max_objects)
    return generate_accepted(rng, image_size, min_objects, max_objects)
