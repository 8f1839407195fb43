"""One factory for every source type: `build(cfg, role)` and `check(cfg)` from a `SourceConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flava.data.sources.base import IndexedSource, SourceError, StreamingSource
from flava.data.sources.embedded import SceneSource
from flava.data.sources.folders import CaptionedImages, ImageFolder, Records
from flava.data.sources.huggingface import HuggingFaceSource, check_huggingface
from flava.data.sources.karpathy import KarpathySplit
from flava.data.sources.text import TextFiles
from flava.data.sources.webdataset import TarShards, expand_shards

SOURCE_TYPES = (
    "embedded",
    "huggingface",
    "webdataset",
    "image_folder",
    "captions",
    "records",
    "karpathy",
    "text_files",
)


def build(cfg: Any, role: str, image_size: int = 224) -> IndexedSource | StreamingSource:
    """A source from its `SourceConfig` for the "train" or "val" role (`image_size`: the side
    of the generated scenes)."""
    kind = cfg.type
    if kind == "embedded":
        split = cfg.split or ("train" if role == "train" else "val")
        return SceneSource(split=split, size=cfg.size, image_size=image_size, seed=cfg.seed)
    if kind == "huggingface":
        return HuggingFaceSource.from_config(cfg, role)
    if kind == "webdataset":
        patterns = list(cfg.shards) or ([cfg.path] if cfg.path else [])
        return TarShards(
            expand_shards(patterns),
            text_fields=list(cfg.text_columns),
            shuffle_buffer=cfg.shuffle_buffer,
            resampled=cfg.resampled,
            preview_size=cfg.preview_size,
            timeout=cfg.timeout,
            retries=cfg.retries,
            pair_field=cfg.text_pair_column,
            label_field=cfg.label_column,
        )
    if kind == "image_folder":
        return ImageFolder(_need_path(cfg), list(cfg.classes) if cfg.classes else None)
    if kind == "records":
        return Records(
            _need_path(cfg),
            cfg.image_column or None,
            list(cfg.text_columns),
            cfg.text_pair_column,
            cfg.label_column or None,
            cfg.image_root,
        )
    if kind == "captions":
        return CaptionedImages(
            _need_path(cfg), cfg.captions_file, cfg.image_column, list(cfg.text_columns)
        )
    if kind == "karpathy":
        split = cfg.split or ("train" if role == "train" else "test")
        path = Path(_need_path(cfg)).expanduser()
        return KarpathySplit(path, cfg.image_root or path.parent, split)
    if kind == "text_files":
        return TextFiles(_need_path(cfg), list(cfg.text_columns))
    raise SourceError(unknown_type(kind))


def unknown_type(kind: str) -> str:
    """The one-line message for an unknown source type."""
    return f"source type {kind!r} is not known; use one of: {', '.join(SOURCE_TYPES)}"


def _need_path(cfg: Any) -> str:
    if not cfg.path:
        raise SourceError(f"{cfg.type} source needs path: (a local folder or file)")
    return str(cfg.path)


def check(cfg: Any) -> None:
    """Cheap reachability checks (no data read): paths, shard lists, the Hub. SourceError."""
    kind = cfg.type
    if kind == "embedded":
        return
    if kind == "huggingface":
        check_huggingface(cfg)
    elif kind == "webdataset":
        patterns = list(cfg.shards) or ([cfg.path] if cfg.path else [])
        if not patterns:
            raise SourceError("webdataset source without shards: set shards: [paths or URLs]")
        expand_shards(patterns)
    elif kind in ("image_folder", "captions", "text_files", "records", "karpathy"):
        path = Path(_need_path(cfg)).expanduser()
        if not path.exists() and not any(c in str(path) for c in "*?["):
            raise SourceError(f"{kind} path {path} not found")
    else:
        raise SourceError(unknown_type(kind))
