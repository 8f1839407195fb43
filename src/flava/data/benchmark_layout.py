"""LAION CLIP_benchmark's local webdataset layout, written by `flava-write-shards
layout=clip_benchmark` and read by `clip_benchmark eval --dataset wds/NAME --dataset_root DST`
(its `build_wds_dataset`; `python -m flava.clip_benchmark` with `--model_type flava`):

    DST/<split>/0.tar, 1.tar, ...   one sample: <key>.jpg / .png and <key>.cls (the label) or
                                    <key>.txt (the image's captions, one a line)
    DST/<split>/nshards.txt         the number of shards
    DST/<split>/manifest.json       ours (counts, skipped samples; CLIP_benchmark ignores it)
    DST/classnames.txt              zero-shot classification: a class name a line, label order
    DST/zeroshot_classification_templates.txt   a template a line, {c} where the name goes
    DST/dataset_type.txt            "retrieval" for a retrieval set, else "classification"

The class names and templates are the ones `flava.zero_shot` uses for the same data
(`flava.data.prompts`: clip_benchmark.class_names / .templates, else the dataset's defaults), and
a retrieval set holds the images `flava.retrieval` ranks (`retrieval_set`), so both commands
evaluate the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flava.config import ConfigError
from flava.data.prompts import prompts
from flava.objectives.kinds import Kind

CLASSIFICATION, RETRIEVAL = "zeroshot_classification", "zeroshot_retrieval"
NAMES_FILE, TEMPLATES_FILE = "classnames.txt", "zeroshot_classification_templates.txt"
TYPE_FILE, COUNT_FILE = "dataset_type.txt", "nshards.txt"


@dataclass
class BenchmarkSet:
    """What to write: the samples, the task, and the text files beside the shards."""

    source: Any
    task: str
    texts: dict[str, str]

    @property
    def retrieval(self) -> bool:
        """Whether captions go into the shards (all of a sample's, one a line)."""
        return self.task == RETRIEVAL


def _task(source: Any, asked: str, where: str) -> str:
    """The task `asked` (auto: by what `source` holds), checked against what it holds."""
    labelled = bool(getattr(source, "class_names", None)) and Kind.image in source.kinds
    captioned = Kind.vl in source.kinds
    if asked == "auto":
        if labelled == captioned:
            held = "labels and captions" if labelled else "neither labelled images nor captions"
            raise ConfigError(
                f"{where} holds {held}: give clip_benchmark.task={CLASSIFICATION} or {RETRIEVAL}"
            )
        return CLASSIFICATION if labelled else RETRIEVAL
    if asked == CLASSIFICATION and not labelled:
        raise ConfigError(
            f"{where} has no images labelled by named classes (class folders, a ClassLabel): "
            f"clip_benchmark.task={CLASSIFICATION} needs them"
        )
    if asked == RETRIEVAL and not captioned:
        raise ConfigError(f"{where} has no images with captions: {RETRIEVAL} needs them")
    return asked


def plan(source: Any, source_type: str, options: Any, where: str) -> BenchmarkSet:
    """The set to write from `source` (of type `source_type`) for `options` (a
    `ClipBenchmarkOptions`: task, class_names, templates); `where` names it in errors."""
    task = _task(source, str(options.task), where)
    if task == RETRIEVAL:
        return BenchmarkSet(source.retrieval_set(), task, {TYPE_FILE: "retrieval\n"})
    folders = getattr(source, "classes", None)  # raw folder names: ImageNet's ids are known
    classes, kind = (list(folders), "image_folder") if folders else (source.class_names, "")
    kind = kind or source_type
    names, templates = prompts(
        classes, kind, options.class_names, options.templates, "clip_benchmark"
    )
    lines = [" ".join(t.replace("{}", "{c}").splitlines()) for t in templates]
    texts = {
        TYPE_FILE: "classification\n",
        NAMES_FILE: "".join(f"{' '.join(n.splitlines())}\n" for n in names),
        TEMPLATES_FILE: "".join(f"{t}\n" for t in lines),
    }
    return BenchmarkSet(source, task, texts)


def finish(root: Path, shards: Path, manifest: dict[str, Any], chosen: BenchmarkSet) -> None:
    """Write nshards.txt beside the shards and the set's text files in `root`."""
    (shards / COUNT_FILE).write_text(f"{manifest['num_shards']}\n")
    for name, text in chosen.texts.items():
        (root / name).write_text(text)
