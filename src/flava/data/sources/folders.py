"""Local folders and record files: image-class folders, images with captions, JSONL / CSV records.

`read_rows` is the one reader of JSONL and CSV files; `captions` gathers the captions of each
image from its rows, `records` keeps one example per row (fine-tuning on your own data).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flava.config import SourceConfig
from flava.data.sources.errors import SourceError
from flava.data.sources.images import image_files
from flava.data.sources.readers import IndexedSource
from flava.data.sources.registry import (
    CAPTIONED_IMAGES,
    LABELLED_IMAGES,
    SourceType,
    check_path,
    need_path,
)
from flava.data.sources.sample import CAPTION_FIELDS, Sample, has_text_field, set_label, texts_of
from flava.objectives.kinds import Kind


class ImageFolder(IndexedSource):
    """Images in class sub-folders (``root/<class>/<image>``); label = index of the class name.

    `classes` fixes the class list (a validation folder must use its training folder's order);
    by default it is the sorted sub-folder names.
    """

    kinds = frozenset({Kind.image})

    def __init__(self, root: str | os.PathLike, classes: Sequence[str] | None = None) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise SourceError(f"image folder {self.root} not found")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not found:
            raise SourceError(f"image folder {self.root} has no class sub-folders")
        self.classes = list(classes) if classes is not None else found
        unknown = [c for c in found if c not in self.classes]
        if unknown:
            raise SourceError(
                f"image folder {self.root}: class {unknown[0]!r} is not among the training classes"
            )
        self.class_names = [c.replace("_", " ") for c in self.classes]
        self.numbered_classes = self.class_names
        self.files: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(self.classes):
            found_files = image_files(self.root / name) if name in found else []
            self.files += [str(p.relative_to(self.root)) for p in found_files]
            labels += [label] * len(found_files)
        if not self.files:
            raise SourceError(f"image folder {self.root} has no images in its class folders")
        self.label_array = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, index: int) -> Sample:
        """Image `index` (encoded bytes) with its class label."""
        rel = self.files[index]
        data = (self.root / rel).read_bytes()
        label = int(self.label_array[index])
        origin = str(self.root / rel)
        return Sample(key=rel, image=data, label=label, raw_label=label, origin=origin)

    def labels(self) -> list[Any]:
        """Class index of every image (no file is read)."""
        return self.label_array.tolist()

    def describe(self) -> str:
        """Folder, image and class counts."""
        return f"image_folder {self.root} ({len(self.files)} images, {len(self.classes)} classes)"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file (one JSON object per non-empty line) or a CSV file (header row);
    a UTF-8 byte-order mark (spreadsheets write one) is not part of the first column's name."""
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        if path.suffix.lower() == ".csv":
            return [dict(r) for r in csv.DictReader(f)]
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise SourceError(f"{path} line {number}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise SourceError(f"{path} line {number}: expected a JSON object")
            rows.append(row)
    return rows


def _need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise SourceError(f"{what} {path} not found")
    return path


def read_captions(
    path: Path, image_field: str = "image", text_fields: Sequence[str] = ("text",)
) -> dict[str, list[str]]:
    """image relpath -> captions, from JSONL (caption / captions / text) or CSV (image,caption)."""
    fields = [*dict.fromkeys([*CAPTION_FIELDS, *text_fields])]
    out: dict[str, list[str]] = {}
    for row in read_rows(path):
        image = row.get(image_field)
        if not image:
            columns = ", ".join(map(repr, row))
            raise SourceError(
                f"{path}: a row has no {image_field!r} field (it has {columns}); "
                "set image_column to the column holding the image path"
            )
        texts = [t for name in fields if row.get(name) for t in texts_of(row[name])]
        out.setdefault(str(image), []).extend(texts)
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
        self.captions_path = _need_file(path, "captions file (JSONL or CSV: image,caption)")
        captions = read_captions(path, image_field, text_fields)
        self.images = list(captions)
        self.captions = [captions[k] for k in self.images]
        if not self.images:
            raise SourceError(f"captions file {path} lists no images")
        if not any((self.root / rel).is_file() for rel in self.images[:8]):
            raise SourceError(f"image {self.root / self.images[0]} (first in {path}) not found")

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int) -> Sample:
        """Image `index` (its path: read when decoded) with all its captions."""
        rel = self.images[index]
        texts = list(self.captions[index])
        return Sample(key=rel, image=str(self.root / rel), texts=texts, empty_text=not texts)

    def describe(self) -> str:
        """Folder, captions file and image count."""
        return f"captions {self.captions_path} ({len(self.images)} images)"


class Records(IndexedSource):
    """One example per row of a JSONL or CSV file: an image path, texts, a second text, a label.

    Image paths are relative to `image_root` (default: the file's folder); `image_field` None
    (or absent from every row) makes a text-only source. The first non-empty of `text_fields`
    is the text, `pair_field` the second text, `label_field` the label as read.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        image_field: str | None = "image",
        text_fields: Sequence[str] = ("text",),
        pair_field: str | None = None,
        label_field: str | None = "label",
        image_root: str | os.PathLike | None = None,
    ) -> None:
        self.path = _need_file(Path(path).expanduser(), "records file (JSONL or CSV)")
        self.rows = read_rows(self.path)
        if not self.rows:
            raise SourceError(f"records file {self.path} holds no rows")
        self.image_root = Path(image_root).expanduser() if image_root else self.path.parent
        self.fields = (image_field, list(text_fields), pair_field, label_field)
        has = {k for row in self.rows for k in row}
        missing = [f for f in (image_field, pair_field) if f and f not in has]
        if image_field in missing and not any(f in has for f in text_fields):
            raise SourceError(
                f"records file {self.path}: no column {image_field!r} and none of the text "
                f"columns {list(text_fields)} (columns: {', '.join(sorted(has))})"
            )
        if pair_field in missing:
            raise SourceError(f"records file {self.path}: no column {pair_field!r}")
        has_image = bool(image_field) and image_field in has
        has_text = any(f in has for f in text_fields)
        self.kinds = frozenset(
            {k for k, ok in ((Kind.image, has_image), (Kind.text, has_text)) if ok}
            | ({Kind.vl} if has_image and has_text else set())
        )

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, index: int) -> Sample:
        """Row `index` as a raw sample (the image is read when decoded)."""
        row = self.rows[index]
        image_field, text_fields, pair_field, label_field = self.fields
        image = row.get(image_field) if image_field else None
        image = str(self.image_root / str(image).strip()) if image and str(image).strip() else None
        texts = next((texts_of(row[f]) for f in text_fields if texts_of(row.get(f))), [])
        empty = not texts and any(has_text_field(row.get(f)) for f in text_fields)
        pair = texts_of(row.get(pair_field))[:1] if pair_field else []
        sample = Sample(
            key=f"{self.path.name}:{index}",
            image=image,
            texts=texts[:1],
            pair=pair[0] if pair else None,
            empty_text=empty,
        )
        if label_field and row.get(label_field) not in (None, ""):
            set_label(sample, row[label_field])
        read = {image_field, *text_fields, pair_field, label_field}
        sample.meta = {k: v for k, v in row.items() if k not in read}
        return sample

    def labels(self) -> list[Any]:
        """The label field of every row, as read (no image is read)."""
        label_field = self.fields[3]
        return [row.get(label_field) if label_field else None for row in self.rows]

    def describe(self) -> str:
        """File and row count."""
        return f"records {self.path} ({len(self.rows)} rows)"


def _image_folder(cfg: SourceConfig, role: str, image_size: int) -> ImageFolder:
    return ImageFolder(need_path(cfg), list(cfg.classes) if cfg.classes else None)


def _captions(cfg: SourceConfig, role: str, image_size: int) -> CaptionedImages:
    return CaptionedImages(
        need_path(cfg), cfg.captions_file, cfg.image_column, list(cfg.text_columns)
    )


def _records(cfg: SourceConfig, role: str, image_size: int) -> Records:
    return Records(
        need_path(cfg),
        cfg.image_column or None,
        list(cfg.text_columns),
        cfg.text_pair_column,
        cfg.label_column or None,
        cfg.image_root,
    )


IMAGE_FOLDER = SourceType(
    "image_folder", ("path", "classes"), _image_folder, check_path, frozenset({LABELLED_IMAGES})
)
"""`type: image_folder`: `path/<class>/<image>`; `classes` fixes the class order."""
CAPTIONS = SourceType(
    "captions",
    ("path", "captions_file", "image_column", "text_columns"),
    _captions,
    check_path,
    frozenset({CAPTIONED_IMAGES}),
)
"""`type: captions`: images under `path` with a JSONL / CSV `captions_file`."""
RECORDS = SourceType(
    "records",
    ("path", "image_root", "image_column", "text_columns", "text_pair_column", "label_column"),
    _records,
    check_path,
    frozenset({LABELLED_IMAGES, CAPTIONED_IMAGES}),
)
"""`type: records`: one example per row of the JSONL / CSV file `path`."""
