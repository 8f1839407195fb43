"""Karpathy splits of COCO and Flickr30K (`dataset_coco.json`, `dataset_flickr30k.json`).

The file lists `images[]`, each with `split` (train / restval / val / test), `filepath` (COCO),
`filename` and `sentences[].raw`; a sample is one image with every caption of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flava.config import SourceConfig
from flava.data.sources.errors import SourceError
from flava.data.sources.readers import IndexedSource
from flava.data.sources.registry import CAPTIONED_IMAGES, SourceType, check_path, need_path
from flava.data.sources.sample import Sample, texts_of
from flava.objectives.kinds import Kind


class KarpathySplit(IndexedSource):
    """The images of one split of a Karpathy annotation file, with all their captions."""

    kinds = frozenset(Kind)

    def __init__(
        self, annotations: str | os.PathLike, image_root: str | os.PathLike, split: str = "test"
    ) -> None:
        path = Path(annotations).expanduser()
        if not path.is_file():
            raise SourceError(f"Karpathy annotation file: {path} not found")
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise SourceError(
                f"Karpathy annotation file: {path} is not valid JSON ({exc})"
            ) from None
        root = Path(image_root).expanduser()
        self.path, self.split = path, split
        self.images: list[str] = []
        self.captions: list[list[str]] = []
        for entry in data.get("images", []):
            if entry.get("split") != split:
                continue
            self.images.append(str(root / entry.get("filepath", "") / entry["filename"]))
            self.captions.append(
                [t for s in entry.get("sentences", []) for t in texts_of(s.get("raw"))]
            )
        if not self.images:
            raise SourceError(f"Karpathy annotation file {path} has no {split} images")
        if not Path(self.images[0]).is_file():
            raise SourceError(f"image {self.images[0]} not found (set the image root)")

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int) -> Sample:
        """Image `index` (its path) with every caption."""
        texts = list(self.captions[index])
        return Sample(
            key=Path(self.images[index]).name,
            image=self.images[index],
            texts=texts,
            empty_text=not texts,
        )

    def describe(self) -> str:
        """File, split and image count."""
        return f"karpathy {self.path} ({self.split}, {len(self)} images)"


def _build(cfg: SourceConfig, role: str, image_size: int) -> KarpathySplit:
    split = cfg.split or ("train" if role == "train" else "test")
    path = Path(need_path(cfg)).expanduser()
    return KarpathySplit(path, cfg.image_root or path.parent, split)


KARPATHY = SourceType(
    "karpathy", ("path", "image_root", "split"), _build, check_path, frozenset({CAPTIONED_IMAGES})
)
"""`type: karpathy`: the annotation file `path`, images under `image_root` (default: its folder)."""
