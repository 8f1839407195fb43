"""What a scene is made of: the attribute values (shapes, colours, sizes, backgrounds,
relations, splits), the records of a drawn scene, and the canonical descriptor that the split
partition is based on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from PIL import Image

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
# A relation seen from the other object ("A left of B" is "B right of A").
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


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
        return canonical(
            tuple((o.shape, o.colour, o.size) for o in self.objects), self.relation, self.background
        )


def canonical(objects: tuple, relation: str | None, background: str) -> tuple:
    """Describe "A right of B" as "B left of A" (and below as above) so both read the same."""
    if relation in ("right of", "below"):
        objects, relation = objects[::-1], INVERSE[relation]
    return (objects, relation, background)
