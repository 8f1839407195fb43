"""The named data kinds: each a spelling of a source config, translated here alone.

Every fine-tuning and evaluation dataset is a source (`flava.data.sources`, built by the one
factory). `data.kind=source` is `data.source` as written; each named kind of the fine-tuning
and evaluation schemas (kept so that users' YAML keeps working) stands for these source fields,
for the whole data (the evaluation commands) or for one split (fine-tuning's `data.train` /
`data.val` entries, `SplitConfig`):

- `embedded` -> `{type: embedded, size, seed}` (size: data.size or the split's, default 512);
- `image_folder` -> `{type: image_folder, path: data.root}` (a split: `root/<split>` when it
  exists, else the root's own class folders: `split_of`);
- `torchvision` -> `{type: torchvision, key: data.name, path: data.root, download, split}`;
- `glue` -> `{type: glue, key: data.hf_path, subset: data.name, split, cache_dir}`;
- `vqa` / `snli_ve` / `hateful_memes` -> `{type: <kind>, path: data.root, files: <split>.files}`;
- `captions` -> `{type: captions, path: data.root}`;
- `coco` / `flickr30k` -> `{type: karpathy, path: data.annotations (default
  root/dataset_<kind>.json), image_root: data.image_root (default root, Flickr30K's
  root/flickr30k-images when there)}`.

A new dataset needs no named kind: it is a source type (`flava.data.sources`) and a config file
that reads it with `data.kind=source` (docs/layout.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from flava.config import ConfigError, SourceConfig
from flava.config.common import EvalDataConfig
from flava.config.finetune import FinetuneDataConfig, SplitConfig
from flava.config.loader import from_fields
from flava.data.sources import image_files, source_type
from flava.data.sources.glue import GLUE_TASKS
from flava.data.sources.registry import need_exists
from flava.data.sources.torchvision_sets import TORCHVISION_DATASETS

EMBEDDED_SIZE = 512
"""Scenes of an embedded set when neither data.size nor the split's size is given."""
KARPATHY_FILES = {"coco": "dataset_coco.json", "flickr30k": "dataset_flickr30k.json"}
"""The Karpathy annotation file of data.kind=coco / flickr30k under data.root."""

Fields = dict[str, Any]
DataSection = FinetuneDataConfig | EvalDataConfig
"""A data section that names its data by a kind (fine-tuning's, the evaluation commands')."""


def source_of(
    d: DataSection, scenes: int | None = None, split: SplitConfig | None = None
) -> SourceConfig:
    """The `SourceConfig` a data section names: data.source for data.kind=source, else the
    named kind's translation (see the module doc); `scenes`: the number of embedded scenes
    (default data.size, else 512); `split`: one fine-tuning split (`SplitConfig`: its name,
    files, size, seed, path), None: the whole data. A named kind missing a key it needs fails in one
    line (`ConfigError`)."""
    if d.kind == "source":
        entry = copy.deepcopy(d.source)  # the run's config stays as it was given
        if split is not None:
            entry.split = d.source.split or split.name
            if split.path:
                entry.path, entry.shards = split.path, []
            if split.files:  # a layout type's files of this split (vqa, snli_ve, ...)
                entry.files = dict(split.files)
    else:
        fields = TRANSLATIONS[str(d.kind)](d, split, scenes)
        if split is not None and "split" in source_type(fields["type"]).fields:
            fields.setdefault("split", split.name)
        entry = from_fields(SourceConfig, fields)
    if split is not None and d.kind == "image_folder":
        entry = split_of(entry, split.name) or entry
    return entry


def _evaluation(d: DataSection) -> EvalDataConfig:
    """`d` as an evaluation command's data section (the kinds only they read)."""
    if not isinstance(d, EvalDataConfig):
        raise ConfigError(f"data.kind={d.kind} is read by the evaluation commands only")
    return d


def _finetuning(d: DataSection) -> FinetuneDataConfig:
    """`d` as fine-tuning's data section (the kinds only it reads)."""
    if not isinstance(d, FinetuneDataConfig):
        raise ConfigError(f"data.kind={d.kind} is read by flava.finetune only")
    return d


def _embedded(d: DataSection, split: SplitConfig | None, scenes: int | None) -> Fields:
    if split is not None:
        return {"type": "embedded", "size": split.size or EMBEDDED_SIZE, "seed": split.seed}
    e = _evaluation(d)
    return {"type": "embedded", "size": scenes or e.size or EMBEDDED_SIZE, "seed": e.seed}


def _image_folder(d: DataSection, split: SplitConfig | None, scenes: int | None) -> Fields:
    if d.root is None:
        raise ConfigError("data.root is required for image_folder data")
    return {"type": "image_folder", "path": d.root}


def _torchvision(d: DataSection, split: SplitConfig | None, scenes: int | None) -> Fields:
    if not d.name:
        raise ConfigError("data.name is required for torchvision data (e.g. cifar10)")
    if d.name not in TORCHVISION_DATASETS:
        known = ", ".join(TORCHVISION_DATASETS)
        raise ConfigError(f"data.name={d.name!r} is invalid: torchvision datasets are {known}")
    if d.root is None:
        raise ConfigError(f"data.root is required for the torchvision dataset {d.name}")
    return {"type": "torchvision", "key": d.name, "path": d.root, "download": d.download}


def _glue(data: DataSection, split: SplitConfig | None, scenes: int | None) -> Fields:
    d = _finetuning(data)
    if not d.name:
        raise ConfigError("data.name is required for glue data (e.g. mnli)")
    if d.name not in GLUE_TASKS:
        known = ", ".join(GLUE_TASKS)
        raise ConfigError(f"data.name={d.name!r} is invalid: GLUE tasks are {known}")
    return {"type": "glue", "key": d.hf_path, "subset": d.name, "cache_dir": d.cache_dir}


def _layout(d: DataSection, split: SplitConfig | None, scenes: int | None) -> Fields:
    files = dict(split.files) if split is not None else {}
    return {"type": str(d.kind), "path": d.root, "files": files}


def _captions(d: DataSection, split: SplitConfig | None, scenes: int | None) -> Fields:
    if not d.root:
        raise ConfigError("data.root is required for captions data (DIR/captions.jsonl)")
    return {"type": "captions", "path": d.root}


def _karpathy(data: DataSection, split: SplitConfig | None, scenes: int | None) -> Fields:
    d, kind = _evaluation(data), str(data.kind)
    if d.root:
        root = Path(d.root)
    elif d.annotations:
        root = Path(d.annotations).parent
    else:
        raise ConfigError(f"data.root (or data.annotations) is required for {kind} data")
    annotations = Path(d.annotations) if d.annotations else root / KARPATHY_FILES[kind]
    image_root = Path(d.image_root) if d.image_root else root
    if not d.image_root and kind == "flickr30k" and (root / "flickr30k-images").is_dir():
        image_root = root / "flickr30k-images"
    return {"type": "karpathy", "path": str(annotations), "image_root": str(image_root)}


TRANSLATIONS: dict[str, Callable[[DataSection, SplitConfig | None, int | None], Fields]] = {
    "embedded": _embedded,
    "image_folder": _image_folder,
    "torchvision": _torchvision,
    "glue": _glue,
    "vqa": _layout,
    "snli_ve": _layout,
    "hateful_memes": _layout,
    "captions": _captions,
    "coco": _karpathy,
    "flickr30k": _karpathy,
}
"""Every named data kind (of any command's schema) and its translation into source fields."""


def holds_class_folders(folder: Path) -> bool:
    """Whether `folder` is itself a class folder layout (images under its sub-folders)."""
    return any(c.is_dir() and image_files(c) for c in folder.iterdir())


def split_of(entry: SourceConfig, split: str | None) -> SourceConfig | None:
    """`entry` narrowed to its split `split`, or None when the data has no split of that name
    (read it as it is). An image folder with neither `<path>/<split>` nor class folders of its
    own fails in one line naming `<path>/<split>`."""
    if not split:
        return None
    if "split" in source_type(entry.type).fields:
        return replace(entry, split=split)
    if entry.type == "image_folder" and entry.path:
        folder = Path(entry.path).expanduser()
        if (folder / split).is_dir():
            return replace(entry, path=str(folder / split))
        if not (folder.is_dir() and holds_class_folders(folder)):
            need_exists(folder / split, "image folder")
    return None
