"""The source types of `SourceConfig.type`: the fields each reads, how it is built and checked.

Each backend module declares its types (`SourceType`) next to its reader;
`flava.data.sources.factory` registers them all. The helpers here check a type's paths in one
line (`SourceError`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flava.config import SourceConfig
from flava.data.sources.errors import SourceError

COMMON_FIELDS = ("type", "weight")
"""`SourceConfig` fields every type takes: the type, and the sampling weight among the datasets
of one kind (pretraining)."""


LABELLED_IMAGES = "labelled images"
"""What zero-shot classification and the linear probe read: images with a class each."""
CAPTIONED_IMAGES = "captioned images"
"""What retrieval reads: images with all their captions."""


@dataclass(frozen=True)
class SourceType:
    """A source type of `SourceConfig.type`: the fields it reads, how it is built and checked.

    Each backend module declares its types next to its reader; `factory` registers them all.
    """

    name: str
    fields: tuple[str, ...]
    """The `SourceConfig` fields the type reads besides `COMMON_FIELDS`; setting another one
    is refused (`factory.check_fields`)."""
    build: Callable[[Any, str, int], Any]
    """(config, role "train" / "val", image size) -> an `IndexedSource` or `StreamingSource`."""
    check: Callable[[Any], None]
    """Cheap reachability checks (no data read); raises `SourceError`."""
    holds: frozenset[str] = frozenset()
    """What the evaluation commands can read from it: `LABELLED_IMAGES` and / or
    `CAPTIONED_IMAGES` (a type holding neither, such as text_files, serves none of them)."""


def need_path(cfg: SourceConfig) -> str:
    """`cfg.path`, or a `SourceError` saying the type needs one."""
    if not cfg.path:
        raise SourceError(f"{cfg.type} source needs path: (a local folder or file)")
    return str(cfg.path)


def need_exists(path: Path, what: str) -> Path:
    """`path`, or a one-line `SourceError` "what: path not found"."""
    if not path.exists():
        raise SourceError(f"{what}: {path} not found")
    return path


def layout_file(
    root: str | Path | None, files: Any, key: str, default: str | None, what: str
) -> Path:
    """`root/files[key]` of a dataset layout (`default` when `files` does not name it, root
    "." when None), or a one-line `SourceError` "what: path not found"."""
    return need_exists(Path(root or ".") / files.get(key, default), what)


def layout_type(
    name: str, reader: Callable[[Any, dict[str, str]], Any], first: tuple[str, str | None, str]
) -> SourceType:
    """The type of a published layout under a dataset root (`path`) with its `files`, read by
    `reader(root, files)`; its check: the first file (key, default, what) exists."""

    def build(cfg: SourceConfig, role: str, image_size: int) -> Any:
        return reader(cfg.path, dict(cfg.files))

    def check(cfg: SourceConfig) -> None:
        if first[0] in cfg.files or first[1] is not None:
            layout_file(cfg.path, cfg.files, *first)

    return SourceType(name, ("path", "files"), build, check)


def check_path(cfg: SourceConfig) -> None:
    """A local source's path exists (a glob pattern is left to the reader)."""
    path = Path(need_path(cfg)).expanduser()
    if not path.exists() and not any(c in str(path) for c in "*?["):
        raise SourceError(f"{cfg.type} path {path} not found")
