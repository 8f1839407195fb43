"""A fine-tuned classifier on disk (paper section 5): the `model/` directory a fine-tuning run
writes, and the image size a backbone checkpoint records.

Layout: the backbone in our layout (`config.json` + `model.safetensors`, loadable by
`FlavaModel.from_pretrained`), `head.safetensors` (the MLP head's `state_dict()`) and
`task.json` (the head's settings, `HEAD_SETTINGS`, plus what the run adds: task name, type,
class names). A missing or damaged file is refused in one line (`CheckpointError`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flava.checkpoints.io import (
    CheckpointError,
    load_weight_file,
    read_json,
    save_weights,
    write_json,
)
from flava.model.classifier import FlavaClassifier
from flava.model.flava import FlavaModel

HEAD_FILE = "head.safetensors"
TASK_FILE = "task.json"
HEAD_SETTINGS = ("modality", "num_outputs", "hidden_size", "act", "dropout", "pooling")
"""The `FlavaClassifier` arguments task.json records (besides the backbone)."""


def save_finetuned(
    model: FlavaClassifier, directory: str | os.PathLike, extra: dict[str, Any] | None = None
) -> None:
    """Write `model` to `directory`: the backbone (our layout), head.safetensors and task.json
    (the head's settings and `extra`)."""
    from flava.checkpoints import save_pretrained

    out = Path(directory)
    save_pretrained(model.flava, out)
    save_weights(out / HEAD_FILE, model.head.state_dict())
    write_json(out / TASK_FILE, {**model.settings, **(extra or {})})


def _task_info(directory: Path) -> dict[str, Any]:
    """task.json, checked to name every head setting."""
    path = directory / TASK_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (not a fine-tuned model/ directory?)")
    info = read_json(path)
    missing = [k for k in HEAD_SETTINGS if k not in info]
    if missing:
        raise CheckpointError(f"{path}: lacks {', '.join(missing)} (damaged or not a task.json)")
    return info


def _load_head(model: FlavaClassifier, path: Path) -> None:
    """The head's weights from head.safetensors; one line when they do not fit."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (not a fine-tuned model/ directory?)")
    state = load_weight_file(path)
    try:
        model.head.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: does not fit the head task.json describes ({first})"
        ) from None


def load_finetuned(directory: str | os.PathLike) -> tuple[FlavaClassifier, dict[str, Any]]:
    """A fine-tuned classifier saved by `save_finetuned` (a run's model/ directory) and its
    task.json."""
    from flava.checkpoints import from_pretrained

    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such directory (expected a run's model/ folder)")
    info = _task_info(directory)
    flava = from_pretrained(FlavaModel, directory)
    model = FlavaClassifier(flava, **{k: info[k] for k in HEAD_SETTINGS})
    _load_head(model, directory / HEAD_FILE)
    return model, info


def checkpoint_image_size(name_or_path: str | os.PathLike) -> int | None:
    """The image size a local checkpoint's config.json records (our layout or transformers'),
    without building the model; None when there is no such file or it names none."""
    path = Path(name_or_path).expanduser() / "config.json"
    if not path.is_file():
        return None
    raw = read_json(path)
    image = (raw.get("config") or {}).get("image") or raw.get("image_config") or {}
    return int(image["image_size"]) if "image_size" in image else None


__all__ = [
    "HEAD_SETTINGS",
    "checkpoint_image_size",
    "load_finetuned",
    "save_finetuned",
]
