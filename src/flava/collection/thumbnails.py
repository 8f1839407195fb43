"""Thumbnails of indexed records, read only where the record's table row says its image is.

A row's `path` (a local file or an http(s) URL) is read with `flava.data.sources.fetch_image`
and decoded by `decode_image`, the one decoder; a record of a webdataset shard (no path, the
shard in its metadata, as `flava.embed` writes it) is read through the tar reader
(`TarShards`), scanning its shard to the record's key. Nothing else is opened: a server asks
for a record by its id in the index, never by a path. A record whose image cannot be had (a
text-only record, a file gone, a shard that is not a tar) gets a placeholder.
"""

from __future__ import annotations

import io
import json
import logging
import re
from functools import lru_cache
from typing import Any

from PIL import Image

log = logging.getLogger("flava")

_TAR = re.compile(r"\.tar(\.gz)?$")
PLACEHOLDER_COLOUR = (229, 231, 235)
"""The placeholder's grey (the page's frame colour)."""


def shard_of(row: dict[str, Any]) -> str | None:
    """The webdataset shard a row's record was read from (its metadata's `shard`), else None."""
    try:
        meta = json.loads(row.get("metadata") or "{}")
    except ValueError:
        return None
    shard = meta.get("shard") if isinstance(meta, dict) else None
    if isinstance(shard, str) and _TAR.search(shard.split("?", 1)[0]):
        return shard
    return None


def _from_shard(shard: str, key: str) -> Image.Image | None:
    """The image of sample `key` of a webdataset shard (read in order up to it), else None."""
    from flava.data.sources import TarShards, decode_image

    for sample in TarShards([shard], retries=0).shard_samples(0):
        if sample.key == key:
            return decode_image(sample.image)
    return None


def record_image(row: dict[str, Any]) -> Image.Image | None:
    """The image of a table row (key, path, metadata), None when the row names none; the
    data layer's errors (BadSample, UnreadableShard, SourceError) when it cannot be read."""
    from flava.data.sources import decode_image

    if row.get("path"):
        return decode_image(str(row["path"]))
    shard = shard_of(row)
    return _from_shard(shard, str(row["key"])) if shard else None


def encode_thumbnail(image: Image.Image, size: int) -> bytes:
    """`image` (any mode) as a JPEG whose longest side is at most `size` pixels."""
    from flava.data.transforms import to_rgb

    picture = to_rgb(image).copy()
    picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@lru_cache(maxsize=8)
def placeholder(size: int) -> bytes:
    """A plain grey square PNG standing in for an image that cannot be shown."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), PLACEHOLDER_COLOUR).save(buffer, format="PNG")
    return buffer.getvalue()
