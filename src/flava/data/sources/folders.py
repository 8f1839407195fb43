"""Local folders: image-class folders, images with a captions / records file (JSONL or CSV)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flava.data.sources.base import (
    CAPTION_FIELDS,
    IndexedSource,
    Sample,
    SourceError,
    image_files,
    texts_of,
)


class ImageFolder(IndexedSource):
    """Images in class sub-folders (``root/<class>/<image>``); label = sorted class index."""

    kinds = frozenset({"image"})

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise SourceError(f"image folder {self.root} not found")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise SourceError(f"image folder {self.root} has no class sub-folders")
        self.files: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(self.classes):
            found = image_files(self.root / name)
            self.files += [str(p.relative_to(self.root)) for p in found]
            labels += [label] * len(found)
        if not self.files:
            raise SourceError(f"image folder {self.root} has no images in its class folders")
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, index: int) -> Sample:
        """Image `index` (encoded bytes) with its class label."""
        rel = self.files[index]
        data = (self.root / rel).read_bytes()
        return Sample(key=rel, image=data, label=int(self.labels[index]))

    def describe(self) -> str:
        """Folder, image and class counts."""
        return f"image_folder {self.root} ({len(self.files)} images, {len(self.classes)} classes)"


def read_captions(
    path: Path, image_field: str = "image", text_fields: Sequence[str] = ("text",)
) -> dict[str, list[str]]:
    """image relpath -> captions, from JSONL (caption / captions / text) or CSV (image,caption)."""
    fields = [*dict.fromkeys([*CAPTION_FIELDS, *text_fields])]
    out: dict[str, list[str]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".csv":
            rows: Iterator[dict[str, Any]] = csv.DictReader(f)
        else:
            rows = (json.loads(line) for line in f if line.strip())
        try:
            for row in rows:
                image = row.get(image_field)
                if not image:
                    raise SourceError(f"{path}: a row has no {image_field!r} field")
                texts = [t for name in fields if row.get(name) for t in texts_of(row[name])]
                out.setdefault(str(image), []).extend(texts)
        except ValueError as exc:
            if isinstance(exc, SourceError):
                raise
            raise SourceError(f"{path}: not valid JSONL ({exc})") from None
    return out


class CaptionedImages(IndexedSource):
    """Images under a folder with a captions file (JSONL or CSV; several captions per image)."""

    def __init__(
        self,
        root: str | os.PathLike,
        captions_file: str | None = None,
        image_field: str = "image",
        text_fields: Sequence[str] = ("text",),
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise SourceError(f"captions folder {self.root} not found")
        if captions_file:
            path = Path(captions_file).expanduser()
            path = path if path.is_absolute() else self.root / path
        else:
            candidates = [self.root / n for n in ("captions.jsonl", "captions.csv")]
            path = next((p for p in candidates if p.is_file()), candidates[0])
        if not path.is_file():
            raise SourceError(f"captions file {path} not found (JSONL or CSV: image,caption)")
        self.captions_path = path
        captions = read_captions(path, image_field, text_fields)
        self.images = list(captions)
        self.captions = [captions[k] for k in self.images]
        if not self.images:
            raise SourceError(f"captions file {path} lists no images")
        first = self.root / self.images[0]
        if not first.is_file():
            raise SourceError(f"image {first} (first in {path}) not found")

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int) -> Sample:
        """Image `index` (encoded bytes) with all its captions."""
        rel = self.images[index]
        data = (self.root / rel).read_bytes()
        return Sample(key=rel, image=data, texts=list(self.captions[index]))

    def describe(self) -> str:
        """Folder, captions file and image count."""
        return f"captions {self.captions_path} ({len(self.images)} images)"
