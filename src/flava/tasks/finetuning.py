"""Fine-tuning tasks (paper section 5): the datasets a task trains and validates on, and its
saved model.

A dataset kind calls for one encoder and one task type (`expected_task`); `build_datasets`
turns the `data` section into the training set and the validation sets: each split's source
config (data.source, or a named kind's translation by `flava.tasks.named_kinds`) read by the one
source factory and made a `TaskDataset` (`flava.tasks.task_data`: labels by the source type's
rule, VQA soft scores over the training split's answers; the embedded scenes' three tasks). A
run saves its best classifier with `save_finetuned` and `load_finetuned` reads it back (both in
`flava.checkpoints.finetuned`, re-exported here). The run itself is `flava.finetune`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from flava.checkpoints.finetuned import load_finetuned, save_finetuned
from flava.config import ConfigError, FinetuneConfig, SourceConfig, validate_finetune
from flava.config.finetune import FinetuneDataConfig, SplitConfig
from flava.data.sources import IndexedSource, StreamingSource, build
from flava.tasks.named_kinds import source_of
from flava.tasks.task_data import (
    DatasetUnavailable,
    SceneTask,
    TaskDataset,
    answer_vocabulary,
    source_task,
    vqa_task,
)

log = logging.getLogger("flava")

# ---------------------------------------------------------------------------------------------
# data


def expected_task(d: FinetuneDataConfig) -> tuple[str | None, str | None]:
    """(modality, task type) a dataset kind calls for (None: either)."""
    if d.kind == "embedded":
        name = d.name or "image"
        return {
            "image": ("image", "classification"),
            "pair": ("text", "classification"),
            "vqa": ("multimodal", "vqa"),
        }.get(name, (None, None))
    if d.kind == "glue":
        return "text", "regression" if d.name == "stsb" else "classification"
    if d.kind in ("torchvision", "image_folder"):
        return "image", "classification"
    if d.kind == "vqa":
        return "multimodal", "vqa"
    if d.kind == "source":
        return None, None
    return "multimodal", "classification"


def validate_config(cfg: FinetuneConfig) -> None:
    """The fine-tuning loader's checks: the schema's values, then `data.source` setting only
    fields of its type (one-line ConfigError)."""
    from flava.data.sources import check_fields

    validate_finetune(cfg)
    check_fields(cfg.data.source, "data.source")


def check_task(cfg: FinetuneConfig) -> None:
    """The task section must fit the dataset (one-line ConfigError otherwise)."""
    modality, kind = expected_task(cfg.data)
    what = f"data.kind={cfg.data.kind}" + (f" data.name={cfg.data.name}" if cfg.data.name else "")
    if modality is not None and cfg.task.modality != modality:
        raise ConfigError(f"task.modality={cfg.task.modality!r} is invalid: {what} is {modality}")
    if kind is not None and cfg.task.type != kind:
        raise ConfigError(f"task.type={cfg.task.type!r} is invalid: {what} needs {kind}")


def _split_prefixes(d: FinetuneDataConfig) -> list[str]:
    prefixes = ["val"]
    for split in list(d.val)[1:]:
        prefixes.append(f"val_{split.label or split.name}")
    if len(set(prefixes)) != len(prefixes):
        raise ConfigError("data.val: give each extra validation split a distinct label")
    return prefixes


NEEDS = {"text": ("text",), "image": ("image",), "multimodal": ("image", "text")}


def _entries(d: FinetuneDataConfig, splits: list[SplitConfig]) -> list[SourceConfig]:
    """Each split's source config (`flava.tasks.named_kinds.source_of`): data.source with the
    split's name and path, or the named kind's translation."""
    entries = []
    for n, split in enumerate(splits):
        entry = source_of(d, split=split)
        separate = split.path or split.files or d.source.type == "huggingface"
        if d.kind == "source" and n and not separate:
            raise ConfigError(
                f"data.val[{n - 1}] would read the training data again ({d.source.type} splits "
                "are files): give it path: (e.g. 'data.val=[{path: val.jsonl}]') or set "
                "data.val_fraction=0.2"
            )
        if d.kind == "source" and entry.type == "embedded":
            raise ConfigError(
                f"data.source ({entry.type} {entry.path or entry.key}): data.source.type="
                "embedded: use data.kind=embedded for the scenes"
            )
        entries.append(entry)
    return entries


def _read(d: FinetuneDataConfig, entry: SourceConfig, n: int) -> IndexedSource | StreamingSource:
    """The source of split `n` (a data.source failure names data.source)."""
    try:
        return build(entry, "train" if n == 0 else "val", whole=True)
    except ConfigError as exc:
        if d.kind != "source":
            raise
        raise type(exc)(f"data.source ({entry.type} {entry.path or entry.key}): {exc}") from None


def _source_sets(
    cfg: FinetuneConfig, entries: list[SourceConfig], splits: list[SplitConfig]
) -> list[Any]:
    """Each split read through its source; labels by the training split's source type (the
    validation splits use its classes), VQA's answers by the training split's."""
    d, k = cfg.data, cfg.task
    sets: list[Any] = []
    vocab: list[str] = []
    for n, (entry, split) in enumerate(zip(entries, splits, strict=True)):
        if entry.type == "image_folder" and sets:
            entry = replace(entry, classes=list(sets[0].folder_classes or []))
        source = _read(d, entry, n)
        if k.type == "vqa":
            vocab = vocab or answer_vocabulary(source.labels(), d.answer_vocab_size)
            sets.append(vqa_task(source, vocab, split.size))
            continue
        space = sets[0].space if sets else None
        sets.append(source_task(source, NEEDS[k.modality], k.type, split.size, space))
    return sets


def _carve_validation(cfg: FinetuneConfig, train: Any) -> tuple[Any, Any]:
    """(train, val): a seeded share data.val_fraction of the training set held out."""
    import numpy as np

    order = np.random.default_rng([cfg.training.seed, 0x7A1]).permutation(len(train))
    held = max(1, int(round(cfg.data.val_fraction * len(train))))
    if held >= len(train):
        raise ConfigError(f"data.val_fraction={cfg.data.val_fraction} leaves no training data")
    log.info("data.val_fraction: %d of %d examples held out for validation", held, len(train))
    return train.subset(sorted(order[held:].tolist())), train.subset(sorted(order[:held].tolist()))


def build_datasets(
    cfg: FinetuneConfig, image_size: int
) -> tuple[Any, list[tuple[str, Any]], list[str], int]:
    """(train set, [(metric prefix, validation set)], class names / answers, outputs)."""
    d = cfg.data
    carve = d.val_fraction > 0
    splits = [d.train] if carve else [d.train, *d.val]
    prefixes = ["val"] if carve else _split_prefixes(d)
    entries = _entries(d, splits)
    if d.kind == "embedded":  # the scenes' three tasks (image, pair, vqa) on the scenes' split
        task = d.name or "image"
        sets = [
            SceneTask(task, e.split or s.name, e.size, image_size, e.seed)
            for e, s in zip(entries, splits, strict=True)
        ]
    else:
        sets = _source_sets(cfg, entries, splits)
    train, vals = sets[0], sets[1:]
    if carve:
        train, val = _carve_validation(cfg, train)
        vals = [val]
    outputs = train.num_outputs
    if cfg.task.type == "regression" and outputs != 1:
        raise ConfigError(f"task.type=regression needs a regression dataset ({outputs} classes)")
    return train, list(zip(prefixes, vals, strict=True)), list(train.class_names), outputs


__all__ = [
    "DatasetUnavailable",
    "TaskDataset",
    "build_datasets",
    "check_task",
    "expected_task",
    "load_finetuned",
    "save_finetuned",
    "validate_config",
]
