"""GLUE through Hugging Face datasets: each task a `huggingface` source with the task's columns.

`key` is a dataset on the Hub or in the cache ("glue", "nyu-mll/glue"), or a directory holding
each task as saved by `datasets` (`load_dataset("glue", task).save_to_disk(f"{key}/{task}")`);
`subset` is the task. A sample is one sentence (pair) with its label as read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from flava.config import SourceConfig
from flava.data.sources.errors import SourceError
from flava.data.sources.huggingface import (
    HuggingFaceSource,
    check_huggingface,
    require_datasets,
)
from flava.data.sources.readers import IndexedSource, StreamingSource
from flava.data.sources.registry import SourceType

GLUE_TASKS: dict[str, tuple[str, str | None, int]] = {
    # task: (first text column, second text column, outputs; 1 = regression)
    "cola": ("sentence", None, 2),
    "sst2": ("sentence", None, 2),
    "mrpc": ("sentence1", "sentence2", 2),
    "qqp": ("question1", "question2", 2),
    "stsb": ("sentence1", "sentence2", 1),
    "mnli": ("premise", "hypothesis", 3),
    "qnli": ("question", "sentence", 2),
    "rte": ("sentence1", "sentence2", 2),
    "wnli": ("sentence1", "sentence2", 2),
}


def glue_config(cfg: Any) -> DictConfig:
    """The `huggingface` `SourceConfig` of a glue one: the task's columns, saved or on the Hub."""
    task = cfg.subset
    if task not in GLUE_TASKS:
        raise SourceError(f"GLUE task {task!r} is not known; use one of: {', '.join(GLUE_TASKS)}")
    a, b, _ = GLUE_TASKS[task]
    hf_path = cfg.key or "glue"
    saved = Path(hf_path).expanduser() / task
    where = dict(path=str(saved), key="") if saved.is_dir() else dict(key=hf_path, subset=task)
    fields = dict(type="huggingface", **where, split=cfg.split, text_columns=[a])
    fields.update(
        text_pair_column=b, label_column="label", image_column="", cache_dir=cfg.cache_dir
    )
    return OmegaConf.merge(OmegaConf.structured(SourceConfig), fields)  # type: ignore[return-value]


def _build(cfg: Any, role: str, image_size: int) -> IndexedSource | StreamingSource:
    hf, task = glue_config(cfg), cfg.subset
    require_datasets(f"GLUE {task}")
    try:
        source = HuggingFaceSource.from_config(hf, role)
    except SourceError as exc:
        fetch = f"datasets.load_dataset('{cfg.key or 'glue'}', '{task}')"
        raise SourceError(
            f'GLUE {task} ({cfg.split}): {exc}; to fill the cache run `python -c "import '
            f'datasets; {fetch}"` on a connected machine'
        ) from None
    outputs = GLUE_TASKS[task][2]  # labels number the task's classes (1: a regression score)
    if outputs > 1:
        source.numbered_classes = source.class_names or [str(i) for i in range(outputs)]
    return source


def _check(cfg: Any) -> None:
    check_huggingface(glue_config(cfg))


GLUE = SourceType("glue", ("key", "subset", "split", "cache_dir"), _build, _check)
"""`type: glue`: the GLUE task `subset` of `key` (default glue), split `split`."""
