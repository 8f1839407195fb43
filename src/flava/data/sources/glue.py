"""GLUE through Hugging Face datasets: each task a `huggingface` source with the task's columns.

`key` is a dataset on the Hub or in the cache ("glue", "nyu-mll/glue"), or a directory holding
each task as saved by `datasets` (`load_dataset("glue", task).save_to_disk(f"{key}/{task}")`);
`subset` is the task. A sample is one sentence (pair) with its label as read.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

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


def glue_task(cfg: SourceConfig) -> str:
    """The GLUE task of a glue `SourceConfig` (its `subset`), else one line naming the tasks."""
    task = cfg.subset
    if task is None or task not in GLUE_TASKS:
        raise SourceError(f"GLUE task {task!r} is not known; use one of: {', '.join(GLUE_TASKS)}")
    return task


def glue_config(cfg: SourceConfig) -> SourceConfig:
    """The `huggingface` `SourceConfig` of a glue one: the task's columns, saved or on the Hub."""
    task = glue_task(cfg)
    a, b, _ = GLUE_TASKS[task]
    hf_path = cfg.key or "glue"
    saved = Path(hf_path).expanduser() / task
    columns = SourceConfig(
        type="huggingface",
        split=cfg.split,
        text_columns=[a],
        text_pair_column=b,
        label_column="label",
        image_column="",
        cache_dir=cfg.cache_dir,
    )
    if saved.is_dir():
        return replace(columns, path=str(saved), key="")
    return replace(columns, key=hf_path, subset=task)


def _build(cfg: SourceConfig, role: str, image_size: int) -> IndexedSource | StreamingSource:
    hf, task = glue_config(cfg), glue_task(cfg)
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


def _check(cfg: SourceConfig) -> None:
    check_huggingface(glue_config(cfg))


GLUE = SourceType("glue", ("key", "subset", "split", "cache_dir"), _build, _check)
"""`type: glue`: the GLUE task `subset` of `key` (default glue), split `split`."""
