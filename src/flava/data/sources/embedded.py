"""The embedded source type: the generated scenes of `flava.data.scenes` (nothing to download)."""

from __future__ import annotations

from typing import Any

import numpy as np

from flava.data.sources.base import IndexedSource, Sample, SourceType


class SceneSource(IndexedSource):
    """The embedded generated scenes (flava.data.scenes): images, captions, pairs."""

    kinds = frozenset({"image", "text", "vl"})

    def __init__(self, split: str, size: int, image_size: int, seed: int = 0) -> None:
        from flava.data.scenes import SceneDataset

        self.scenes = SceneDataset(split=split, size=size, image_size=image_size, seed=seed)

    def __len__(self) -> int:
        return len(self.scenes)

    def sample(self, index: int) -> Sample:
        """Scene `index` with all its captions."""
        scene = self.scenes[index]
        return Sample(key=str(index), image=scene.image, texts=list(scene.captions))

    def item(self, index: int, kind: str, rng: np.random.Generator) -> Sample:
        """Scene `index` decoded for `kind`: its image, one of its captions, or both."""
        scene = self.scenes[index]
        caption = scene.captions[int(rng.integers(len(scene.captions)))]
        return Sample(
            key=str(index),
            image=scene.image if kind in ("image", "vl") else None,
            texts=[caption] if kind in ("text", "vl") else [],
        )

    def describe(self) -> str:
        """Split size."""
        return f"embedded scenes ({len(self)})"


def _build(cfg: Any, role: str, image_size: int) -> SceneSource:
    split = cfg.split or ("train" if role == "train" else "val")
    return SceneSource(split=split, size=cfg.size, image_size=image_size, seed=cfg.seed)


def _nothing_to_check(cfg: Any) -> None:
    """The scenes are generated: nothing to reach."""


EMBEDDED = SourceType("embedded", ("split", "size", "seed"), _build, _nothing_to_check)
"""`type: embedded`: `split` (default train / val by role), `size` scenes, generator `seed`."""
