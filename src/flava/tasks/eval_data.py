"""The data of the evaluation commands (`flava.zero_shot`, `flava.retrieval`,
`flava.linear_probe`): the `data` section translated into one `SourceConfig` (`source_of` of
`flava.tasks.named_kinds`, which fine-tuning uses too) and read by the one source factory
(`flava.data.sources.build`), whatever the kind (the embedded scenes' size: data.size, default
512; the linear probe's splits: probe.<split>_size).

A split (`split_of`) is the source's own where its type reads `split`, or the `<path>/<split>`
sub-folder of an image folder; otherwise the data has no split of that name and is read as it
is (the linear probe then carves test and validation out of it; `validation_of`: a torchvision
set other than RenderedSST2 has its validation data held out of train). Zero-shot and the
linear probe read labelled images (`labelled_images`: classes named by the data), retrieval
images with all their captions (`captioned_images`). data.size caps every kind but the embedded
one (whose size is the number of scenes); a stream is read only that far.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from flava.config import ConfigError, SourceConfig
from flava.config.common import EvalCommandConfig, EvalDataConfig
from flava.data.sources import (
    TYPES,
    IndexedSource,
    SourceError,
    StreamingSource,
    build,
    check_fields,
    source_type,
)
from flava.data.sources.labels import label_space
from flava.data.sources.registry import CAPTIONED_IMAGES, LABELLED_IMAGES
from flava.data.sources.torchvision_sets import EVALUATED_VALIDATION
from flava.objectives.kinds import Kind
from flava.tasks.named_kinds import source_of, split_of
from flava.tasks.task_data import TaskDataset, source_task

NEEDS = {
    "zero_shot": LABELLED_IMAGES,
    "linear_probe": LABELLED_IMAGES,
    "retrieval": CAPTIONED_IMAGES,
}
"""What each evaluation command reads from its source."""

C = TypeVar("C", bound=EvalCommandConfig)


def check_data(cfg: EvalCommandConfig, command: str) -> None:
    """The evaluation loaders' data checks, before any work (one line each): data.source sets
    only fields of its type, the section translates into a source, and that source's type
    holds what `command` reads."""
    check_fields(cfg.data.source, "data.source")
    entry = source_of(cfg.data)
    need = NEEDS[command]
    if need not in source_type(entry.type).holds:
        fit = ", ".join(t.name for t in TYPES.values() if need in t.holds)
        raise SourceError(
            f"data.source.type={entry.type} cannot serve {command}: it needs {need} "
            f"(use one of the types {fit})"
        )


def validator(validate: Callable[[C], None], command: str) -> Callable[[C], None]:
    """An evaluation command's loader checks: its schema's `validate`, then `check_data`."""

    def checks(cfg: C) -> None:
        validate(cfg)
        check_data(cfg, command)

    return checks


def validation_of(entry: SourceConfig, split: str | None) -> SourceConfig | None:
    """The validation split `split` of `entry`, or None when it is carved out of the training
    split: the data has no such split, or it is a torchvision set other than RenderedSST2 (whose
    validation data the paper's probes hold out of train)."""
    if entry.type == "torchvision" and entry.key not in EVALUATED_VALIDATION:
        return None
    return split_of(entry, split)


def need_split(d: EvalDataConfig, entry: SourceConfig, split: str, key: str) -> SourceConfig:
    """`split_of(entry, split)`, or one line saying the data has no such split (`key`: the
    setting that names it)."""
    part = split_of(entry, split)
    if part is None:
        raise SourceError(f"{_where(d, entry)}: no {split!r} split; set {key} to one it has")
    return part


def cap_of(d: EvalDataConfig) -> int | None:
    """The samples read: data.size, except for embedded scenes (data.size is their number)."""
    return None if d.kind == "embedded" else d.size


def _where(d: EvalDataConfig, entry: SourceConfig) -> str:
    """How messages name the data: data.source (type, path) or the named kind."""
    shards = list(entry.shards)
    place = entry.path or entry.key or (shards[0] if shards else "")
    if d.kind == "source":
        return f"data.source ({entry.type} {place})".replace(" )", ")")
    return f"data.kind={d.kind} ({place})" if place else f"data.kind={d.kind}"


def read(
    d: EvalDataConfig, entry: SourceConfig, image_size: int, kind: str, command: str
) -> IndexedSource | StreamingSource:
    """The source of `entry` for evaluation, checked to hold `kind` samples ("image" or "vl");
    a stream is read whole, or up to data.size. A data.source failure names data.source."""
    try:
        source = build(entry, "val", image_size, whole=True)
    except ConfigError as exc:
        if d.kind != "source":
            raise
        raise type(exc)(f"{_where(d, entry)}: {exc}") from None
    cap = cap_of(d)
    if isinstance(source, StreamingSource) and cap is not None:
        source.preview_size = cap
    if kind not in source.kinds:
        raise SourceError(
            f"{_where(d, entry)}: {source.describe()} holds no "
            f"{'images' if kind == 'image' else 'images with texts'}; {command} needs "
            f"{NEEDS[command]} (image_column / text_columns name its fields)"
        )
    return source


def labelled_images(
    d: EvalDataConfig,
    entry: SourceConfig,
    image_size: int,
    command: str,
    like: TaskDataset | None = None,
    names: list[str] | None = None,
) -> tuple[TaskDataset, str | None]:
    """(the labelled images of `entry`, up to data.size, as a classification set; the split
    the source says it read). Classes are named by the data (class folders, a ClassLabel, or
    the sorted label strings). `like`: a split whose classes (folder order, label space) these
    share; `names`: the class names the command was given (zero_shot.class_names, for labels
    that are class numbers), [] when it needs names and has none: class numbers without names
    then fail in one line asking for zero_shot.class_names."""
    if like is not None and like.folder_classes:
        entry = replace(entry, classes=list(like.folder_classes))
    source = read(d, entry, image_size, Kind.image, command)
    space = like.space if like is not None else _class_space(d, entry, source, command, names)
    data = source_task(source, ("image",), "classification", cap_of(d), space)
    return data, getattr(source, "split", None)


def _class_space(
    d: EvalDataConfig, entry: SourceConfig, source: Any, command: str, given: list[str] | None
) -> tuple[list[str], Any]:
    """(class names, label -> class) of a source's labels (class numbers: as many classes as
    the data's or the `given` names); one line when it has none."""
    names = source.class_names
    values = list(range(len(names))) if names else list(source.labels())
    space = label_space(values, names or given, "classification")
    where = _where(d, entry)
    if not space[0]:
        raise SourceError(
            f"{where}: no sample has a label; {command} needs {NEEDS[command]} "
            "(label_column names the field)"
        )
    numbered = space[0] == [str(i) for i in range(len(space[0]))]
    if given is not None and not given and not names and numbered:
        raise ConfigError(
            f"{where}: the labels are class numbers without names; zero-shot prompts need "
            "names: give zero_shot.class_names=names.json (a JSON list in label order)"
        )
    return space


def captioned_images(
    d: EvalDataConfig, entry: SourceConfig, image_size: int
) -> tuple[Any, str | None]:
    """(the images of `entry` with all their captions, up to data.size, as retrieval ranks them
    (generated scenes: one of each description); the split the source says it read)."""
    source = read(d, entry, image_size, Kind.vl, "retrieval")
    return source.retrieval_set(cap_of(d)), getattr(source, "split", None)


def generated(entry: SourceConfig) -> bool:
    """Whether the data is generated at the model's image size (embedded scenes): the model
    is loaded first; other data is opened first, so that a missing file fails fast."""
    return entry.type == "embedded"


def evaluation_split(d: EvalDataConfig, default: str | None) -> str | None:
    """The split evaluated: data.source.split with data.kind=source (None: the type's own
    evaluation split, or all of the data), else data.split or the command's `default`."""
    if d.kind == "source":
        return d.source.split
    return d.split or default


def read_split(entry: SourceConfig, split: str | None) -> tuple[SourceConfig, bool]:
    """(the entry to read, whether it is split `split`): the split where the data has it, else
    the data as it is."""
    part = split_of(entry, split)
    return (part, True) if part is not None else (entry, False)
