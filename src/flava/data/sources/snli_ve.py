"""SNLI-VE as published: `snli_ve_<split>.jsonl` (Flickr30k image id, sentence2, gold_label)
and the Flickr30k image directory.

A sample is one hypothesis: its image (a path, read when decoded), sentence2 as its text and the
index of its gold label in `SNLI_VE_LABELS`; rows without annotator agreement ("-") are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flava.data.sources.errors import SourceError
from flava.data.sources.folders import read_rows
from flava.data.sources.readers import IndexedSource
from flava.data.sources.registry import layout_file, layout_type
from flava.data.sources.sample import Sample
from flava.objectives.kinds import Kind

SNLI_VE_LABELS = ["entailment", "neutral", "contradiction"]
"""The gold labels, in label order."""
_ANNOTATIONS = ("annotations", "snli_ve_train.jsonl", "SNLI-VE file")


class SnliVe(IndexedSource):
    """The hypotheses of one SNLI-VE split with their Flickr30k images and gold labels."""

    kinds = frozenset({Kind.vl})

    def __init__(self, root: str | Path | None, files: dict[str, str]) -> None:
        self.path = layout_file(root, files, *_ANNOTATIONS)
        rows = read_rows(self.path)
        images = layout_file(root, files, "images", "flickr30k_images", "SNLI-VE image directory")
        labels = {name: i for i, name in enumerate(SNLI_VE_LABELS)}
        self.rows: list[tuple[Path, str, int]] = []
        for r in rows:
            if r.get("gold_label") not in labels:
                continue  # "-": no annotator agreement
            image_id = str(r.get("Flikr30kID") or r.get("Flickr30kID") or r.get("Flickr30K_ID"))
            name = image_id if Path(image_id).suffix else f"{image_id}.jpg"
            self.rows.append((images / name, r["sentence2"], labels[r["gold_label"]]))
        if self.rows and not self.rows[0][0].exists():
            raise SourceError(f"SNLI-VE image {self.rows[0][0]} not found (files.images)")
        self.class_names = list(SNLI_VE_LABELS)
        self.numbered_classes = self.class_names

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, index: int) -> Sample:
        """Hypothesis `index`: its image path, sentence2 and its label index."""
        path, sentence, label = self.rows[index]
        return Sample(
            key=f"{self.path.name}:{index}",
            image=str(path),
            texts=[sentence],
            label=label,
            raw_label=label,
        )

    def labels(self) -> list[Any]:
        """The label index of every hypothesis (no image is read)."""
        return [label for _, _, label in self.rows]

    def describe(self) -> str:
        """File and count."""
        return f"snli_ve {self.path} ({len(self)} hypotheses)"


SNLI_VE = layout_type("snli_ve", SnliVe, _ANNOTATIONS)
"""`type: snli_ve`: SNLI-VE under the root `path`; `files`: annotations (default
snli_ve_train.jsonl) and images (default flickr30k_images)."""
