"""The embedded source type: the generated scenes of `flava.data.scenes` (nothing to download)."""

from __future__ import annotations

import numpy as np

from flava.config import SourceConfig
from flava.data.sources.errors import SourceError
from flava.data.sources.readers import IndexedSource, SampleList
from flava.data.sources.registry import CAPTIONED_IMAGES, LABELLED_IMAGES, SourceType
from flava.data.sources.sample import Sample
from flava.objectives.kinds import IMAGE_KINDS, TEXT_KINDS, Kind


class SceneSource(IndexedSource):
    """The embedded generated scenes (flava.data.scenes): images with all their captions and
    a class, the shape of the largest object (`class_names`: the shapes)."""

    kinds = frozenset(Kind)

    def __init__(self, split: str, size: int, image_size: int, seed: int = 0) -> None:
        from flava.data.scenes import SHAPES, SceneDataset

        self.scenes = SceneDataset(split=split, size=size, image_size=image_size, seed=seed)
        self.split = split
        self.class_names = list(SHAPES)

    def __len__(self) -> int:
        return len(self.scenes)

    def sample(self, index: int) -> Sample:
        """Scene `index` with all its captions and its shape class."""
        scene = self.scenes[index]
        return Sample(
            key=str(index),
            image=scene.image,
            texts=list(scene.captions),
            label=scene.label,
            raw_label=scene.label,
        )

    def item(self, index: int, kind: str, rng: np.random.Generator) -> Sample:
        """Scene `index` decoded for `kind`: its image, one of its captions, or both."""
        scene = self.scenes[index]
        caption = scene.captions[int(rng.integers(len(scene.captions)))]
        return Sample(
            key=str(index),
            image=scene.image if kind in IMAGE_KINDS else None,
            texts=[caption] if kind in TEXT_KINDS else [],
        )

    def retrieval_set(self, size: int | None = None) -> IndexedSource:
        """One scene of each description (`distinct_scenes`: two identical scenes would leave
        retrieval without one right answer), as many as this source holds (or `size`)."""
        from flava.data.scenes import distinct_scenes

        s = self.scenes
        count = len(self) if size is None else min(size, len(self))
        try:
            found = distinct_scenes(s.split, count, image_size=s.image_size, seed=s.seed)
        except ValueError as exc:
            raise SourceError(f"embedded scenes: {exc}") from None
        samples = [Sample(str(i), x.image, list(x.captions)) for i, x in enumerate(found)]
        return SampleList(samples, "embedded scenes")

    def describe(self) -> str:
        """Split size."""
        return f"embedded scenes ({len(self)})"


def _build(cfg: SourceConfig, role: str, image_size: int) -> SceneSource:
    split = cfg.split or ("train" if role == "train" else "val")
    return SceneSource(split=split, size=cfg.size, image_size=image_size, seed=cfg.seed)


def _nothing_to_check(cfg: SourceConfig) -> None:
    """The scenes are generated: nothing to reach."""


EMBEDDED = SourceType(
    "embedded",
    ("split", "size", "seed"),
    _build,
    _nothing_to_check,
    frozenset({LABELLED_IMAGES, CAPTIONED_IMAGES}),
)
"""`type: embedded`: `split` (default train / val by role), `size` scenes, generator `seed`;
labelled by shape, captioned."""
