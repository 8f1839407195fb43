"""Hateful Memes as published: `train.jsonl` / `dev_seen.jsonl` rows (img, text, label) with the
image paths relative to the dataset root: a `records` source with the layout's columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flava.data.sources.folders import Records
from flava.data.sources.registry import layout_file, layout_type

MEME_CLASSES = ["not hateful", "hateful"]
"""The names of labels 0 and 1."""
_ANNOTATIONS = ("annotations", "train.jsonl", "Hateful Memes file")


def hateful_memes(root: str | Path | None, files: dict[str, Any]) -> Records:
    """The memes of one annotations file (files.annotations, default train.jsonl; image paths
    relative to root / files.images, default root)."""
    path = layout_file(root, files, *_ANNOTATIONS)
    image_root = Path(root or ".") / files.get("images", "")
    records = Records(path, "img", ["text"], None, "label", image_root)
    records.class_names = list(MEME_CLASSES)
    records.numbered_classes = records.class_names
    return records


HATEFUL_MEMES = layout_type("hateful_memes", hateful_memes, _ANNOTATIONS)
"""`type: hateful_memes`: the memes under the root `path`; `files`: annotations, images."""
