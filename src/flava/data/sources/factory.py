"""One factory for every source type: `build(cfg, role)`, `check(cfg)` and `check_fields(cfg)`
from a `SourceConfig`.

Each backend module declares its types (`registry.SourceType`: the fields it reads, how it is
built and checked) next to its reader; `TYPES` registers them, and nothing else names a type.
"""

from __future__ import annotations

from flava.config import ConfigError, SourceConfig
from flava.config.common import set_fields
from flava.data.sources.embedded import EMBEDDED
from flava.data.sources.errors import SourceError
from flava.data.sources.folders import CAPTIONS, IMAGE_FOLDER, RECORDS
from flava.data.sources.glue import GLUE
from flava.data.sources.hateful_memes import HATEFUL_MEMES
from flava.data.sources.huggingface import HUGGINGFACE
from flava.data.sources.karpathy import KARPATHY
from flava.data.sources.readers import IndexedSource, StreamingSource
from flava.data.sources.registry import COMMON_FIELDS, SourceType
from flava.data.sources.snli_ve import SNLI_VE
from flava.data.sources.text import TEXT_FILES
from flava.data.sources.torchvision_sets import TORCHVISION
from flava.data.sources.vqa import VQA
from flava.data.sources.webdataset import WEBDATASET

TYPES: dict[str, SourceType] = {
    t.name: t
    for t in (
        EMBEDDED,
        HUGGINGFACE,
        WEBDATASET,
        IMAGE_FOLDER,
        CAPTIONS,
        RECORDS,
        KARPATHY,
        TEXT_FILES,
        GLUE,
        TORCHVISION,
        VQA,
        SNLI_VE,
        HATEFUL_MEMES,
    )
}
"""Every source type by its `SourceConfig.type` name."""
SOURCE_TYPES = tuple(TYPES)


def source_type(kind: str) -> SourceType:
    """The registered type `kind`, else a one-line `SourceError`."""
    if kind not in TYPES:
        raise SourceError(unknown_type(kind))
    return TYPES[kind]


def build(
    cfg: SourceConfig,
    role: str,
    image_size: int = 224,
    kind: str | None = None,
    whole: bool = False,
) -> IndexedSource | StreamingSource:
    """The one way a source is made: from its `SourceConfig` for the "train" or "val" role.

    `image_size`: the side of the generated scenes; `kind` ("image", "text", "vl"): the samples
    a streamed source's preview holds (a pretraining stream of that kind); `whole`: a streamed
    source's preview is all of it (fine-tuning and evaluation sets, read once).
    """
    source = source_type(cfg.type).build(cfg, role, image_size)
    if isinstance(source, StreamingSource):
        source.preview_kind = kind if kind is not None else source.preview_kind
        source.preview_size = 10**9 if whole else source.preview_size
    return source


def checked_source(
    entry: SourceConfig, role: str, image_size: int, kind: str, where: str
) -> IndexedSource | StreamingSource:
    """`sources.build` for a stream of `kind`, failing in one line (prefixed by `where`) unless
    it gives `kind` samples."""
    try:
        source = build(entry, role, image_size, kind)
    except ConfigError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    if kind not in source.kinds:
        gives = "/".join(sorted(source.kinds))
        raise ConfigError(f"{where}: gives {gives} samples, not {kind}")
    return source


def unknown_type(kind: str) -> str:
    """The one-line message for an unknown source type."""
    return f"source type {kind!r} is not known; use one of: {', '.join(SOURCE_TYPES)}"


def check(cfg: SourceConfig) -> None:
    """Cheap reachability checks (no data read): paths, shard lists, the Hub. SourceError."""
    source_type(cfg.type).check(cfg)


def check_fields(cfg: SourceConfig, where: str) -> None:
    """Refuse, in one line prefixed by `where`, a field that the entry's type does not read
    (e.g. `shards` on an image_folder), naming the types that do."""
    try:
        kind = source_type(cfg.type)
    except SourceError as exc:
        raise SourceError(f"{where}: {exc}") from None
    own = (*kind.fields, *COMMON_FIELDS)
    for name in set_fields(cfg):
        if name in own:
            continue
        owners = [t.name for t in TYPES.values() if name in t.fields]
        use = ", ".join(owners[:-1]) + (" or " if len(owners) > 1 else "") + owners[-1]
        listed = ", ".join([*kind.fields, *COMMON_FIELDS[1:]])
        raise SourceError(
            f"{where}: `{name}` is not a field of type {kind.name} (its fields: {listed}); "
            f"remove it or use type: {use}"
            if owners
            else f"{where}: `{name}` is not a field of type {kind.name}; remove it"
        )
