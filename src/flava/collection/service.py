"""What a server holds: a `Searcher` kept in step with its index folder, and record thumbnails.

`SearchService.open` loads the index, its tables and the query model once; a missing or broken
index at start raises `IndexUnavailable` (the server refuses to start). On every request the
service compares the index files' sizes and times with those it loaded (two `stat` calls); when
they changed (flava.index added shards, or rebuilt the index) it reads the index again,
keeping the query model when the index names the same one. An index that breaks while serving
(files gone, truncated, not matching) answers every request with its `IndexUnavailable` (503)
until the files change again, and the next good read serves again. Nothing here knows HTTP:
`flava.collection.app` maps the errors to statuses.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flava.collection import thumbnails
from flava.collection.errors import CollectionError, IndexUnavailable
from flava.collection.index_run import INDEX_FILE, INDEX_JSON, read_index
from flava.collection.search import Searcher

log = logging.getLogger("flava")

Stamp = tuple[tuple[int, int] | None, ...]
"""(size, modification time in ns) of index.json and index.faiss; None for a missing file."""


def stamp_of(folder: Path) -> Stamp:
    """The index files' sizes and times, to see whether they changed."""
    found: list[tuple[int, int] | None] = []
    for name in (INDEX_JSON, INDEX_FILE):
        try:
            st = (folder / name).stat()
            found.append((st.st_size, st.st_mtime_ns))
        except OSError:
            found.append(None)
    return tuple(found)


class NoRecord(CollectionError):
    """A record id the index does not hold (HTTP 404)."""

    status = 404


@dataclass(frozen=True)
class Thumbnail:
    """A thumbnail's bytes, media type, and whether it stands in for an image not had."""

    data: bytes
    media_type: str
    placeholder: bool = False


class SearchService:
    """A searcher kept in step with its index folder, and thumbnails (see the module doc)."""

    def __init__(self, folder: Path, searcher: Searcher, model: str | None, device: str) -> None:
        self.folder, self.model, self.device = folder, model, device
        self._searcher, self._stamp = searcher, stamp_of(folder)
        self._broken: IndexUnavailable | None = None
        self._lock = threading.Lock()
        self.generation = 0
        """How many times the index was read again (thumbnails are cached per generation)."""
        self._thumbs: OrderedDict[tuple[int, int, int], Thumbnail] = OrderedDict()
        self._thumbs_lock = threading.Lock()
        self.cache_size = 1024

    @classmethod
    def open(
        cls, index_dir: str | Path, model: str | None = None, device: str = "auto"
    ) -> SearchService:
        """Load the index in `index_dir` and its query model; `IndexUnavailable` if it cannot."""
        folder = Path(index_dir).expanduser()
        return cls(folder, Searcher.open(folder, model=model, device=device), model, device)

    def searcher(self) -> Searcher:
        """The searcher of the index as it is on disk now; `IndexUnavailable` while broken."""
        stamp = stamp_of(self.folder)
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self._reload(stamp)
        if self._broken is not None:
            raise IndexUnavailable(str(self._broken))
        return self._searcher

    def _reload(self, stamp: Stamp) -> None:
        """Read the changed index again; keep the old query model when it names the same."""
        old = self._searcher
        try:
            index, info = read_index(self.folder)
            same = all(info.get(k) == old.info.get(k) for k in ("model", "embedding", "dim"))
            if same:
                searcher = Searcher(index, info, old.encoder)
            else:
                searcher = Searcher.open(self.folder, model=self.model, device=self.device)
        except IndexUnavailable as exc:
            if self._broken is None:
                log.warning("the index broke while serving: %s", exc)
            self._broken, self._stamp = exc, stamp
            return
        self._searcher, self._broken, self._stamp = searcher, None, stamp
        self.generation += 1
        log.info("index read again: %d records", searcher.size)

    def info(self) -> dict[str, Any]:
        """What the health endpoint shows: records, dimensions, model, index kind."""
        s = self.searcher()
        i = s.info
        return {
            "status": "ok",
            "records": s.size,
            "dim": i["dim"],
            "field": i["field"],
            "kind": i["kind"],
            "recall_at_10": i.get("recall_at_10"),
            "model": i["model"],
            "query_model": self.model or i["model"].get("pretrained_model_key"),
            "index": str(self.folder),
        }

    def row(self, id_: int) -> dict[str, Any]:
        """The table row (key, path, caption, metadata) of the record numbered `id_`."""
        s = self.searcher()
        if not 0 <= id_ < s.size:
            raise NoRecord(f"no record {id_} in the index; its ids run from 0 to {s.size - 1}")
        return s.table.slice(id_, 1).to_pylist()[0]

    def thumbnail(self, id_: int, size: int) -> Thumbnail:
        """A JPEG of record `id_`'s image at most `size` pixels a side, or a PNG placeholder."""
        row = self.row(id_)
        key = (self.generation, id_, size)
        with self._thumbs_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        thumb = self._make_thumbnail(row, size)
        with self._thumbs_lock:
            self._thumbs[key] = thumb
            while len(self._thumbs) > self.cache_size:
                self._thumbs.popitem(last=False)
        return thumb

    @staticmethod
    def _make_thumbnail(row: dict[str, Any], size: int) -> Thumbnail:
        """The thumbnail of a table row (a placeholder when its image cannot be had)."""
        from flava.data.sources import SAMPLE_ERRORS

        try:
            image = thumbnails.record_image(row)
            if image is not None:
                return Thumbnail(thumbnails.encode_thumbnail(image, size), "image/jpeg")
        except SAMPLE_ERRORS as exc:
            log.info("no thumbnail for record %r: %s", row.get("key"), exc)
        return Thumbnail(thumbnails.placeholder(size), "image/png", placeholder=True)
