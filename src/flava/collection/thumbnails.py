"""Thumbnails of indexed records, read only where the record's table row says its image is.

A row's `path` (a local file or an http(s) URL) is read with `flava.data.sources.fetch_image`
and decoded by `decode_image`, the one decoder. A record of a webdataset shard (no path, the
shard in its metadata, as `flava.embed` writes it) is read from its shard: where the metadata
holds the image's byte range (`image_range`, recorded for uncompressed tars), that range alone
with the tar header before it (`read_member_at`: the header must name the record's key, an
image and that size); else, or when the header names another member (a shard written again), a
gzipped shard, or an embedding folder from before ranges were recorded, the shard is read in
order to the record's key by the tar reader (`TarShards`). Nothing else is opened: a server
asks for a record by its id in the index, never by a path. A record whose image cannot be had
(a text-only record, a file gone, a key no longer in its shard) gets a placeholder.
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


def _metadata(row: dict[str, Any]) -> dict[str, Any]:
    """A row's metadata as a dict ({} when missing or not a JSON object)."""
    try:
        meta = json.loads(row.get("metadata") or "{}")
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def shard_of(row: dict[str, Any]) -> str | None:
    """The webdataset shard a row's record was read from (its metadata's `shard`), else None."""
    shard = _metadata(row).get("shard")
    if isinstance(shard, str) and _TAR.search(shard.split("?", 1)[0]):
        return shard
    return None


def image_range_of(row: dict[str, Any]) -> tuple[int, int] | None:
    """Where a row's image lies in its uncompressed shard (metadata `image_range`: offset of the
    member's data, size), else None."""
    span = _metadata(row).get("image_range")
    if isinstance(span, list) and len(span) == 2 and all(type(v) is int for v in span):
        return span[0], span[1]
    return None


def _from_range(shard: str, key: str, span: tuple[int, int]) -> Image.Image | None:
    """The image of sample `key` read from its byte range alone, None when the bytes there
    are not its image member (see the module doc)."""
    from flava.data.sources import decode_image, read_member_at

    if shard.split("?", 1)[0].endswith(".gz"):  # offsets in a gzipped shard cannot be sought
        return None
    data = read_member_at(shard, key, *span)
    if data is None:
        log.info("record %r: its byte range of %s holds another member; scanning", key, shard)
        return None
    return decode_image(data)


def _scan_shard(shard: str, key: str) -> Image.Image | None:
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
    if shard is None:
        return None
    key, span = str(row["key"]), image_range_of(row)
    image = _from_range(shard, key, span) if span is not None else None
    return image if image is not None else _scan_shard(shard, key)


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
