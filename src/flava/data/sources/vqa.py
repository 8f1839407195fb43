"""VQAv2 as published: the questions and annotations JSON files and the COCO image directory.

A sample is one question: its image (a path, read when decoded), the question as its text, and
the ten human answers as its label as read (`raw_label`); the answer vocabulary and the soft
scores are the fine-tuning task's (`flava.tasks.task_data`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flava.config import ConfigError
from flava.data.sources.errors import SourceError
from flava.data.sources.readers import IndexedSource
from flava.data.sources.registry import layout_type, need_exists
from flava.data.sources.sample import Sample
from flava.objectives.kinds import Kind

VQA_FILES = ("questions", "annotations", "images")
"""The `files` a VQA source needs: questions (v2_OpenEnded_mscoco_<split>2014_questions.json),
annotations (v2_mscoco_<split>2014_annotations.json) and images (the COCO <split>2014
directory); image_pattern is optional (default COCO_<images dir name>_{image_id:012d}.jpg)."""


def load_json(path: Path, what: str) -> Any:
    """A JSON file; one-line `SourceError` when it is missing or not JSON."""
    need_exists(path, what)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SourceError(f"{what}: {path} is not valid JSON ({exc.msg})") from None


class VqaQuestions(IndexedSource):
    """The questions of one VQAv2 split with their images and human answers."""

    kinds = frozenset({Kind.vl})

    def __init__(self, root: str | Path | None, files: dict[str, str]) -> None:
        base = Path(root or ".")
        for key in VQA_FILES:
            if key not in files:
                raise ConfigError(f"VQA data needs files.{key} in the split config")
        questions = load_json(base / files["questions"], "VQA questions file")["questions"]
        annotations = load_json(base / files["annotations"], "VQA annotations file")["annotations"]
        images = need_exists(base / files["images"], "VQA image directory")
        pattern = files.get("image_pattern") or f"COCO_{images.name}_{{image_id:012d}}.jpg"
        by_id = {a["question_id"]: a for a in annotations}
        self.rows: list[tuple[Path, str, list[str], int]] = []
        for q in questions:
            ann = by_id.get(q["question_id"])
            if ann is None:
                raise SourceError(
                    f"VQA annotations file has no answers for question {q['question_id']}"
                )
            answers = [a["answer"] for a in ann["answers"]]
            path = images / pattern.format(image_id=q["image_id"])
            self.rows.append((path, q["question"], answers, q["question_id"]))
        if self.rows and not self.rows[0][0].exists():
            raise SourceError(
                f"VQA image {self.rows[0][0]} not found (files.images / files.image_pattern)"
            )
        self.questions_file = base / files["questions"]

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, index: int) -> Sample:
        """Question `index`: its image path, the question, the human answers as `raw_label`."""
        path, question, answers, question_id = self.rows[index]
        return Sample(key=str(question_id), image=str(path), texts=[question], raw_label=answers)

    def labels(self) -> list[Any]:
        """The human answers of every question (no image is read)."""
        return [answers for _, _, answers, _ in self.rows]

    def describe(self) -> str:
        """Questions file and count."""
        return f"vqa {self.questions_file} ({len(self)} questions)"


VQA = layout_type("vqa", VqaQuestions, ("questions", None, "VQA questions file"))
"""`type: vqa`: VQAv2 under the root `path`, `files` as in `VQA_FILES`."""
